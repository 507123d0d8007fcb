"""Training throughput beside the official score_sde_pytorch, measured in one run.

Each side lives in its own persistent worker process (so its peak resident memory is its own and
neither warms the other's caches); the parent runs interleaved rounds, each round ``--steps``
training steps of one side and then of the other (the order alternating), so both sides see the
same load. A step is the full training step of each code base: VP SDE continuous DSM (mean
reduction, t ~ U[1e-5, 1]), backward, gradient clipping at 1, Adam, EMA update.

    # a checkout of https://github.com/yang-song/score_sde_pytorch (commit cb1f359) in OFFICIAL
    OMP_NUM_THREADS=2 python benchmarks/train_throughput.py --official OFFICIAL --cases digits cifar10
    python benchmarks/train_throughput.py --official OFFICIAL --cases cifar10 --device cuda --batch 128

The official networks are built from the official code with the official config fields (DDPM++
needs none of its CUDA ops: the ``op`` package is replaced by a stub that refuses to be called).
Without ``--official`` only scoresde's variants run. ``--variants`` picks scoresde's Trainer
options (``VARIANTS``; ``for-loop_adam`` is the float32 step with torch's for-loop Adam, as the
official code's); ``first_step_s`` is the time of the first step (the compilation, for the
compile variants), reported apart from the steady-state rate. ``--quick``: ``QUICK``'s settings.

Prints one JSON object: per case and side, steps/s (median over rounds), CPU seconds per step,
peak RSS (or GPU memory), and the ratio ours/official of steps/s in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
import types
from typing import Any

# The official configs' fields for the two networks (configs/default_cifar10_configs.py and
# configs/vp/cifar10_ddpmpp_continuous.py); the digits network is the small DDPM++ of ANCHORS.md.
_DDPMPP = dict(name="ncsnpp", scale_by_sigma=False, ema_rate=0.9999, normalization="GroupNorm", nonlinearity="swish",
               nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), resamp_with_conv=True,
               conditional=True, fir=False, fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type="biggan",
               progressive="none", progressive_input="none", progressive_combine="sum", attention_type="ddpm",
               init_scale=0.0, embedding_type="positional", fourier_scale=16, conv_size=3, dropout=0.1,
               sigma_min=0.01, sigma_max=50, num_scales=1000, beta_min=0.1, beta_max=20.0)
CASES: dict[str, dict[str, Any]] = {
    "digits": dict(preset="ddpmpp_digits", batch=128, shape=(1, 8, 8), ema=0.999,
                   model=dict(_DDPMPP, nf=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(4,))),
    "cifar10": dict(preset="ddpmpp_cifar10", batch=8, shape=(3, 32, 32), ema=0.9999, model=_DDPMPP),
}
#: scoresde's Trainer options per variant: ``default`` is the Trainer's defaults (``amp="auto"``:
#: bf16 on a CPU with native bf16), the others state their precision.
VARIANTS = {"default": {}, "fp32": {"amp": "none"}, "compile": {"amp": "none", "compile": True},
            "channels_last": {"amp": "none", "channels_last": True},
            "bf16": {"amp": "bf16"}, "bf16_compile": {"amp": "bf16", "compile": True},
            "bf16_channels_last": {"amp": "bf16", "channels_last": True},
            "bf16_nchw": {"amp": "bf16", "channels_last": False},
            "for-loop_adam": {"amp": "none", "optimizer_impl": "for-loop"}}
#: ``--quick``: both cases, the official code beside the default and the eager options, short rounds
#: (about 5 minutes on 2 idle cores; compile is left out: its cold compile alone takes minutes)
QUICK = {"cases": ["digits", "cifar10"], "variants": ["default", "bf16_nchw", "fp32", "channels_last"],
         "rounds": 4, "steps": 3, "warmup": 1}


def _namespace(d: dict) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: _namespace(v) if isinstance(v, dict) else v for k, v in d.items()})


def official_step(path: str, case: dict, device: str, batch: int):
    """The official training step (losses.get_step_fn with optimization_manager and the official
    EMA) on the official network built by models.utils.create_model (DataParallel included)."""
    import torch

    sys.path.insert(0, path)
    stub = types.ModuleType("op")  # the CUDA-only FIR kernels; DDPM++ never calls them

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the official CUDA op was called (FIR); this benchmark covers DDPM++ only")

    stub.upfirdn2d = refuse
    sys.modules["op"] = stub
    import losses
    import sde_lib
    from models import ncsnpp  # noqa: F401  (registers the model)
    from models import utils as mutils
    from models.ema import ExponentialMovingAverage

    channels, size = case["shape"][0], case["shape"][1]
    config = _namespace(dict(
        model=case["model"], data=dict(image_size=size, num_channels=channels, centered=True),
        optim=dict(lr=2e-4, warmup=5000, grad_clip=1.0, beta1=0.9, eps=1e-8, weight_decay=0, optimizer="Adam"),
        training=dict(continuous=True, reduce_mean=True, likelihood_weighting=False)))
    config.device = torch.device(device)
    model = mutils.create_model(config)
    ema = ExponentialMovingAverage(model.parameters(), decay=case["ema"])
    optimizer = losses.get_optimizer(config, model.parameters())
    state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
    sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                                 reduce_mean=True, continuous=True, likelihood_weighting=False)
    data = torch.rand(batch, *case["shape"], device=device) * 2 - 1

    def step() -> None:
        step_fn(state, data)
        state["step"] += 1

    return step, sum(p.numel() for p in model.parameters())


def scoresde_step(case: dict, device: str, batch: int, options: dict):
    """scoresde's Trainer.train_step on the preset network with the same loss and optimiser."""
    import torch

    from scoresde.losses import DSMLoss
    from scoresde.nets import build_preset
    from scoresde.sde import VPSDE
    from scoresde.train import Trainer

    model = build_preset(case["preset"])
    data = (torch.rand(batch * 4, *case["shape"]) * 2 - 1)
    trainer = Trainer(model, DSMLoss(VPSDE(beta_min=0.1, beta_max=20.0)), data, batch_size=batch,
                      ema_decay=case["ema"], grad_clip=1.0, lr=2e-4, warmup_steps=5000, device=device,
                      progress=False, **options)
    return trainer.train_step, sum(p.numel() for p in model.parameters())


def worker(conn: Any, side: str, spec: dict) -> None:
    """A persistent worker: builds its side once, then answers ``("run", k)`` with timings."""
    import torch

    if side != "official" or spec["official_cpu_settings"]:
        from scoresde.train import tune_cpu_process  # first, as the scoresde command does

        tune_cpu_process()
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    case = CASES[spec["case"]]
    if side == "official":
        step, params = official_step(spec["official"], case, spec["device"], spec["batch"])
    else:
        step, params = scoresde_step(case, spec["device"], spec["batch"], VARIANTS[side])
    sync = torch.cuda.synchronize if spec["device"] == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    step()  # the first step (compilation for torch.compile) is reported apart
    sync()
    first = time.perf_counter() - t0
    for _ in range(spec["warmup"]):
        step()
    sync()
    conn.send({"params": params, "first_step_s": first})
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            usage = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            if spec["device"] == "cuda":
                usage["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
            conn.send(usage)
            return
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(msg[1]):
            step()
        sync()
        conn.send({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})


def measure(case: str, sides: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds over persistent workers; per side: steps/s (median), CPU s/step, memory."""
    ctx = mp.get_context("spawn")
    spec = dict(case=case, official=args.official, official_cpu_settings=args.official_cpu_settings,
                device=args.device, threads=args.threads,
                batch=args.batch or CASES[case]["batch"], warmup=args.warmup)
    workers, info = {}, {}
    for side in sides:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(child, side, spec), daemon=True)
        proc.start()
        workers[side] = (parent, proc)
        info[side] = parent.recv()
    rounds: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side in (sides if r % 2 == 0 else sides[::-1]):
            workers[side][0].send(("run", args.steps))
            rounds[side].append(workers[side][0].recv())
    out: dict[str, Any] = {"case": case, "batch": spec["batch"], "device": args.device, "threads": args.threads,
                           "rounds": args.rounds, "steps_per_round": args.steps, "sides": {}}
    for side in sides:
        workers[side][0].send(("stop",))
        usage = workers[side][0].recv()
        workers[side][1].join()
        rates = [args.steps / r["wall"] for r in rounds[side]]
        out["sides"][side] = {**info[side], **usage, "steps_per_s": statistics.median(rates),
                              "steps_per_s_rounds": [round(v, 4) for v in rates],
                              "cpu_s_per_step": statistics.median(r["cpu"] / args.steps for r in rounds[side])}
    if "official" in sides:
        base = out["sides"]["official"]["steps_per_s"]
        out["ratio_vs_official"] = {s: out["sides"][s]["steps_per_s"] / base for s in sides if s != "official"}
        # the ratio within each round is robust to load that changes between rounds
        out["ratio_vs_official_per_round"] = {
            s: statistics.median(o["wall"] / m["wall"] for o, m in zip(rounds["official"], rounds[s]))
            for s in sides if s != "official"}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="QUICK's cases, variants and rounds (~5 min)")
    parser.add_argument("--cases", nargs="+", default=["digits"], choices=sorted(CASES))
    parser.add_argument("--official", help="path of a score_sde_pytorch checkout (omit: scoresde only)")
    parser.add_argument("--official-cpu-settings", action="store_true",
                        help="give the official process the allocator and subnormal settings the scoresde "
                             "command makes (scoresde.train.tune_cpu_process) too")
    parser.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANTS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, help="batch size (default: the case's, 128 digits / 8 CIFAR-10)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="steps per round and side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    args = parser.parse_args()
    if args.quick:
        given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    sides = (["official"] if args.official else []) + args.variants
    results = [measure(case, sides, args) for case in args.cases]
    print(json.dumps(dict(machine=f"{platform.machine()} {os.cpu_count()} cores", python=platform.python_version(),
                          load_avg_1min=os.getloadavg()[0], date=datetime.date.today().isoformat(),
                          results=results), indent=1))


if __name__ == "__main__":
    main()
