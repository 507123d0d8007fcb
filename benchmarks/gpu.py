"""CIFAR-10 DDPM++ training on one GPU (issue 18.3): steps/s and peak memory of scoresde's step in
fp32 and bf16, with and without ``torch.compile`` and channels_last, the official score_sde_pytorch
step beside it, and the bf16 loss curve against the fp32 one (what ``training.amp=auto`` waits for).

    # a checkout of https://github.com/yang-song/score_sde_pytorch (commit cb1f359) in OFFICIAL
    python benchmarks/gpu.py --official OFFICIAL --out gpu.json          # about 6 minutes on one H200
    # the same code path on CPU in a minute (a smoke test, no figures):
    python benchmarks/gpu.py --device cpu --batch 2 --rounds 1 --steps 1 --warmup 0 --curve-steps 3 \\
        --sides default bf16

Each side runs alone in its own spawned process (:func:`train_throughput.worker`: the official step,
or scoresde's ``Trainer.train_step`` with the options of :data:`train_throughput.VARIANTS`), so its
peak GPU memory is its own and no two sides hold the GPU at once: the first step (the cold compile
for the compile sides, with inductor's cache in ``TORCHINDUCTOR_CACHE_DIR``), ``--warmup`` untimed
steps, then ``--rounds`` timed rounds of ``--steps`` steps (median steps/s). The eager sides run
first and the compile sides last, and the JSON is rewritten after every side, so a run cut short
still leaves what it measured.

The loss curve: ``--curve-steps`` steps of the same network from the same initialisation, data and
noise in fp32 and in bf16 autocast (lr 2e-4 with a 100-step warm-up, so the loss moves within the
run); reported are the relative differences of the curves' ``--window``-step means and, for scale,
the standard error of those means. bf16 "does not change the loss curve" when every window mean
differs by less than both 1 % and twice its standard error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # the workers and the official step live there

SIDES = ["official", "default", "channels_last", "bf16", "bf16_channels_last", "compile", "bf16_compile"]


def curve_worker(conn: Any, spec: dict) -> None:
    """Losses of ``spec["steps"]`` Trainer steps with ``amp=spec["amp"]`` (fixed init, data, noise)."""
    import torch
    import torch.nn.functional as F

    from scoresde.losses import DSMLoss
    from scoresde.nets import build_preset
    from scoresde.sde import VPSDE
    from scoresde.train import Trainer

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = build_preset("ddpmpp_cifar10")
    coarse = torch.rand(10 * spec["batch"], 3, 4, 4, generator=torch.Generator().manual_seed(1))
    data = F.interpolate(coarse * 2 - 1, size=32, mode="bilinear", align_corners=False)  # smooth images
    trainer = Trainer(model, DSMLoss(VPSDE()), data, batch_size=spec["batch"], lr=2e-4, warmup_steps=100,
                      grad_clip=1.0, ema_decay=0.9999, amp=spec["amp"], device=spec["device"], progress=False)
    conn.send([trainer.train_step()["loss"] for _ in range(spec["steps"])])


def loss_curves(args: argparse.Namespace) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    curves = {}
    for amp in ("none", "bf16"):
        parent, child = ctx.Pipe()
        spec = {"amp": amp, "steps": args.curve_steps, "batch": args.batch, "device": args.device,
                "threads": args.threads}
        proc = ctx.Process(target=curve_worker, args=(child, spec), daemon=True)
        proc.start()
        curves[amp] = parent.recv()
        proc.join()
    w = min(args.window, len(curves["none"]))
    rows = []
    for k in range(0, len(curves["none"]) - w + 1, w):
        fp32, bf16 = curves["none"][k:k + w], curves["bf16"][k:k + w]
        se = statistics.stdev(fp32) / len(fp32) ** 0.5 if len(fp32) > 1 else float("nan")
        mean = statistics.fmean(fp32)
        rows.append({"steps": [k + 1, k + w], "fp32": mean, "bf16": statistics.fmean(bf16),
                     "rel_diff": statistics.fmean(bf16) / mean - 1, "rel_se": se / mean})
    same = all(abs(r["rel_diff"]) < min(0.01, 2 * r["rel_se"]) for r in rows)
    return {"steps": args.curve_steps, "window": w, "windows": rows, "bf16_keeps_the_curve": same,
            "fp32": curves["none"], "bf16": curves["bf16"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", help="path of a score_sde_pytorch checkout (omit: scoresde only)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sides", nargs="+", default=SIDES, choices=SIDES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    parser.add_argument("--threads", type=int, default=4, help="CPU threads of each worker")
    parser.add_argument("--curve-steps", type=int, default=300, help="steps of the fp32 / bf16 loss curves (0: off)")
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--out", type=Path, help="also write the JSON here (rewritten after every side)")
    args = parser.parse_args()
    import torch

    from scoresde._io import write_text

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "torchinductor"))
    sides = [s for s in args.sides if s != "official" or args.official]
    cuda = args.device.startswith("cuda")
    report: dict[str, Any] = {
        "machine": torch.cuda.get_device_name() if cuda else f"{platform.machine()} {os.cpu_count()} cores",
        "torch": torch.__version__, "date": datetime.date.today().isoformat(), "batch": args.batch,
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "inductor_cache": os.environ["TORCHINDUCTOR_CACHE_DIR"], "sides": {}}

    def emit() -> str:
        text = json.dumps(report, indent=1)
        if args.out is not None:
            write_text(args.out, text)
        return text

    spec = types.SimpleNamespace(official=args.official, device=args.device, threads=args.threads,
                                 batch=args.batch, warmup=args.warmup, rounds=args.rounds, steps=args.steps)
    eager = [s for s in sides if "compile" not in s]
    for side in eager:
        report["sides"][side] = tt.measure("cifar10", [side], spec)["sides"][side]
        emit()
    if args.curve_steps:
        report["loss_curve"] = loss_curves(args)
        emit()
    for side in [s for s in sides if "compile" in s]:
        report["sides"][side] = tt.measure("cifar10", [side], spec)["sides"][side]
        emit()
    if "official" in report["sides"]:
        base = report["sides"]["official"]["steps_per_s"]
        report["ratio_vs_official"] = {s: v["steps_per_s"] / base for s, v in report["sides"].items() if s != "official"}
    print(emit())


if __name__ == "__main__":
    main()
