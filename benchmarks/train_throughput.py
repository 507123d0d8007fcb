"""Training throughput of the DDPM++ networks: seconds per optimizer step and peak memory.

Each case runs in its own subprocess (so peak resident memory is the case's own) and does a
full ``Trainer.train_step``: VP SDE continuous DSM loss (mean reduction), backward, gradient
clipping at 1, AdamW, EMA update. Prints one JSON object with every case.

    OMP_NUM_THREADS=2 python benchmarks/train_throughput.py               # CPU cases
    python benchmarks/train_throughput.py --cases cifar10_gpu_bf16 cifar10_gpu_fp32   # on a GPU

``s_per_step`` is wall-clock time; ``cpu_s_per_step`` the process CPU time (all threads), a
figure less sensitive to other jobs on a shared machine (``load_avg_1min`` records the load).

Cases: ``digits`` (DDPM++ digits preset, 8x8x1, batch 128), ``cifar10`` (DDPM++ CIFAR-10
preset, 32x32x3, batch 8) on CPU; ``cifar10_gpu_bf16`` / ``cifar10_gpu_fp32`` (batch 128) on CUDA;
``digits_diffusers`` / ``cifar10_diffusers``: the same layout as a ``diffusers.UNet2DModel``
(the ``bench`` extra), timed in the same way for a same-run ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

CASES = {
    "digits": dict(preset="ddpmpp_digits", batch=128, shape=(1, 8, 8), device="cpu", amp="none"),
    "cifar10": dict(preset="ddpmpp_cifar10", batch=8, shape=(3, 32, 32), device="cpu", amp="none"),
    "digits_diffusers": dict(preset="ddpmpp_digits", batch=128, shape=(1, 8, 8), device="cpu", amp="none",
                             peer="diffusers"),
    "cifar10_diffusers": dict(preset="ddpmpp_cifar10", batch=8, shape=(3, 32, 32), device="cpu", amp="none",
                              peer="diffusers"),
    "cifar10_gpu_bf16": dict(preset="ddpmpp_cifar10", batch=128, shape=(3, 32, 32), device="cuda", amp="bf16"),
    "cifar10_gpu_fp32": dict(preset="ddpmpp_cifar10", batch=128, shape=(3, 32, 32), device="cuda", amp="none"),
}


def diffusers_peer(preset: str):
    """The same DDPM++ layout built from ``diffusers.UNet2DModel`` (BigGAN-style resnet
    resampling, positional embedding, attention at the preset's level), called as
    ``model(x, t, labels=None)`` with the embedding of ``1000 t``: a peer in the same run."""
    import torch
    from diffusers import UNet2DModel

    from scoresde.nets import PRESETS

    cfg = PRESETS[preset]
    levels = len(cfg["ch_mult"])
    attn = {i for i in range(levels) if cfg["image_size"] // 2**i in cfg["attn_resolutions"]}
    unet = UNet2DModel(
        sample_size=cfg["image_size"], in_channels=cfg["in_channels"], out_channels=cfg["in_channels"],
        layers_per_block=cfg["num_res_blocks"], block_out_channels=tuple(cfg["nf"] * m for m in cfg["ch_mult"]),
        down_block_types=tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(levels)),
        up_block_types=tuple("AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(levels))),
        downsample_type="resnet", upsample_type="resnet", dropout=cfg["dropout"], norm_eps=1e-6,
        norm_num_groups=min(cfg["nf"] // 4, 32), time_embedding_type="positional", attention_head_dim=None)

    class Peer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, x, t, labels=None):
            return self.unet(x, t * 1000).sample

    return Peer()


def run_case(name: str, steps: int, warmup: int, channels_last: bool) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones; report s/step and memory."""
    import torch

    from scoresde.losses import DSMLoss
    from scoresde.nets import build_preset
    from scoresde.sde import VPSDE
    from scoresde.train import Trainer

    case = CASES[name]
    torch.manual_seed(0)
    model = diffusers_peer(case["preset"]) if case.get("peer") else build_preset(case["preset"])
    data = torch.randn(case["batch"] * 4, *case["shape"]).clamp(-1, 1)
    trainer = Trainer(model, DSMLoss(VPSDE()), data, batch_size=case["batch"], ema_decay=0.999,
                      amp=case["amp"], device=case["device"], channels_last=channels_last, progress=False)
    sync = torch.cuda.synchronize if case["device"] == "cuda" else (lambda: None)
    for _ in range(warmup):
        trainer.train_step()
    sync()
    if case["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        trainer.train_step()
    sync()
    per_step = (time.perf_counter() - start) / steps
    cpu_per_step = (time.process_time() - cpu_start) / steps
    result = dict(case=name, network=case.get("peer", "scoresde"), preset=case["preset"], batch=case["batch"],
                  device=case["device"], amp=case["amp"], channels_last=channels_last,
                  params=sum(p.numel() for p in model.parameters()), steps=steps, s_per_step=per_step,
                  steps_per_s=1 / per_step, cpu_s_per_step=cpu_per_step, threads=torch.get_num_threads(),
                  load_avg_1min=os.getloadavg()[0], torch=torch.__version__)
    if case["device"] == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    else:
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["digits", "cifar10"], choices=sorted(CASES))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 digits, 3 others)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights and batches")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: run one case here
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.cases[0], args.steps, args.warmup, args.channels_last)))
        return
    results = []
    for name in args.cases:
        steps = args.steps or (20 if name == "digits" else 3)
        cmd = [sys.executable, __file__, "--one", "--cases", name, "--steps", str(steps), "--warmup", str(args.warmup)]
        cmd += ["--channels-last"] * args.channels_last
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps(dict(machine=f"{platform.machine()} {os.cpu_count()} cores", python=platform.python_version(),
                          date=datetime.date.today().isoformat(), results=results), indent=1))


if __name__ == "__main__":
    main()
