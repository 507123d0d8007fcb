"""Use a trained digits run from Python: samplers at a few NFE budgets, FD-digits, bits/dim.

    scoresde run digits-vp --out runs/digits-vp      # the README's main job (about 10 minutes)
    OMP_NUM_THREADS=2 python examples/digits_run.py runs/digits-vp
"""

import sys

import torch

import scoresde as sd
from scoresde import data, metrics

run = sd.load_run(sys.argv[1] if len(sys.argv) > 1 else "runs/digits-vp")  # config + EMA weights
test = data.load_digits("test")
for method, steps in [("ddim", 20), ("dpm-solver++", 10), ("dpm-solver++", 20), ("heun", 10)]:
    x, info = sd.sample(run.score_fn, run.sde, (1000, 1, 8, 8), method=method, steps=steps,
                        generator=torch.Generator().manual_seed(0))
    print(f"{method:14s} {info.nfe:3d} NFE  FD-digits {metrics.fd_digits(x, test.x):7.2f}  "
          f"pixel FD {metrics.pixel_frechet(x, test.x):.3f}")

x = test.x[:50]
y = data.dequantize(x, levels=17, generator=torch.Generator().manual_seed(0))
logp, info = sd.log_likelihood(run.score_fn, run.sde, y, divergence="hutchinson",
                               generator=torch.Generator().manual_seed(0))
bpd = sd.bits_per_dim(logp, y, data_range=(-1, 1), levels=17)
print(f"bits/dim of 50 test digits: {bpd.mean():.3f} ± {bpd.std() / 50**0.5:.3f} ({info.nfe} NFE)")
