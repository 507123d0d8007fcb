"""``sample``, ``eval``, ``encode`` and ``decode``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .. import data as D
from .._io import write_json
from ..images import read_array, save_npz, save_samples
from .args import load, run_options, sampler_options
from .runs import METRICS, evaluate_run, sample_run


def _cmd_sample(args: argparse.Namespace) -> int:
    run = load(args)
    n = args.n or run.config.sampling.n
    t0 = time.perf_counter()
    x, info = sample_run(run, n, method=args.method, steps=args.steps, nfe=args.nfe, seed=args.seed,
                         clip=args.clip_denoised, progress=not args.quiet)
    out = Path(args.out) if args.out else run.directory / "samples.png"
    npz = save_samples(x, out, D.data_range(run.config.data.centered), nfe=info.nfe)
    print(f"{n} samples, {info.nfe} NFE, {time.perf_counter() - t0:.1f} s -> {out}, {npz}")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from ..sampling import encode

    run = load(args)
    x = read_array(args.input, args.key).to(run.device)
    z, info = encode(run.score_fn, run.sde, x)
    save_npz(args.out, z=z, nfe=info.nfe)
    print(f"encoded {x.shape[0]} items, {info.nfe} NFE -> {args.out}")
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from ..sampling import decode

    run = load(args)
    z = read_array(args.input, "z").to(run.device)
    x, info = decode(run.score_fn, run.sde, z)
    npz = save_samples(x, args.out, D.data_range(run.config.data.centered), nfe=info.nfe)
    print(f"decoded {z.shape[0]} items, {info.nfe} NFE -> {args.out}, {npz}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    run = load(args)
    metrics = args.metrics or run.config.evaluation.metrics
    out = Path(args.out) if args.out else run.directory / "eval"
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_run(run, metrics, out, method=args.method, steps=args.steps, nfe=args.nfe,
                          seed=args.seed, clip=args.clip_denoised, progress=not args.quiet)
    write_json(out / "metrics.json", result)
    print(json.dumps(result, indent=1))
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``sample``, ``encode``, ``decode`` and ``eval``."""
    p = sub.add_parser("sample", help="draw samples from a run (PNG grid + .npz)")
    run_options(p)
    sampler_options(p)
    p.add_argument("-n", type=int, help="number of samples (default: the run's sampling.n)")
    p.add_argument("--out", help="output PNG (default RUN/samples.png); the array goes beside it as .npz")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("encode", help="map data to latents with the probability-flow ODE")
    run_options(p)
    p.add_argument("input", help=".npz file with the data array")
    p.add_argument("--key", default="x", help="array name in the input file (default x)")
    p.add_argument("--out", required=True, help="output .npz (array z)")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("decode", help="map latents (array z of a .npz) back to data")
    run_options(p)
    p.add_argument("input", help=".npz file with array z (from `scoresde encode`)")
    p.add_argument("--out", required=True, help="output PNG; the array goes beside it as .npz")
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("eval", help="metrics of a run (bits/dim, FD-digits, sliced-W2, ...)")
    run_options(p)
    sampler_options(p)
    p.add_argument("--metrics", nargs="+", choices=METRICS, help="default: the run's evaluation.metrics")
    p.add_argument("--out", help="output folder (default RUN/eval)")
    p.set_defaults(func=_cmd_eval)
