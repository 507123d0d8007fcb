"""``sample``, ``eval``, ``fid-stats``, ``encode`` and ``decode``."""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path
from typing import Any

from .. import data as D
from .._io import write_json
from ..images import read_array, save_npz, save_samples
from ..sampling import ALIASES, METHODS, SCHEDULES
from .args import load, positive_int, run_options, sampler_options
from .runs import METRICS, evaluate_run, generate_run, sample_run

#: ``--flag``: (type, help). Each is passed to the method only when given; :func:`scoresde.sample`
#: refuses an option the method does not take, naming the options it does take.
METHOD_OPTIONS: dict[str, tuple[Any, str]] = {
    "eta": (float, "noise scale: DDIM / ancestral (0 deterministic, 1 DDPM), pc predictors"),
    "order": (int, "DPM-Solver++ / UniPC multistep order (1-3)"),
    "snr": (float, "Langevin / MALA / HMC corrector signal-to-noise ratio (pc)"),
    "corrector": (str, "pc: langevin | mala | hmc | annealed-langevin | none; dpm-solver++: true | false (UniPC)"),
    "corrector_steps": (int, "corrector steps per level (pc)"),
    "churn": (float, "EDM Heun stochastic churn S_churn"),
    "rtol": (float, "relative tolerance of the adaptive ode"),
    "atol": (float, "absolute tolerance of the adaptive ode"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def method_options(p: argparse.ArgumentParser) -> None:
    """``--eta``, ``--order``, ``--snr``, ``--corrector``, ``--churn``, ``--rtol``, ... and ``--schedule``."""
    for name, (kind, text) in METHOD_OPTIONS.items():
        p.add_argument(_flag(name), dest=f"opt_{name}", type=kind, help=text)
    p.add_argument("--schedule", choices=SCHEDULES, help="time-step schedule (default: the method's)")


def _boolean(text: str, flag: str) -> bool:
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if text.lower() not in words:
        raise ValueError(f"{flag} takes true or false for this method, got {text!r}")
    return words[text.lower()]


def method_kwargs(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The options given on the command line, typed for ``method`` (a corrector is a name for
    ``pc`` and a switch for ``dpm-solver++``/``unipc``)."""
    params = inspect.signature(METHODS[ALIASES.get(method, method)].fn).parameters
    out: dict[str, Any] = {}
    for name in METHOD_OPTIONS:
        value = getattr(args, f"opt_{name}", None)
        if value is None:
            continue
        if name in params and isinstance(params[name].default, bool):
            value = _boolean(value, _flag(name))
        out[name] = value
    if getattr(args, "schedule", None):
        out["schedule"] = args.schedule
    return out


def _sampler(args: argparse.Namespace, run: Any) -> dict[str, Any]:
    method = args.method or run.config.sampling.method
    if ALIASES.get(method, method) not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join([*METHODS, *ALIASES])}")
    return {"method": method, "steps": args.steps, "nfe": args.nfe, "clip": args.clip_denoised,
            **method_kwargs(args, method)}


def _cmd_sample(args: argparse.Namespace) -> int:
    from ..generate import parse_seeds

    run = load(args)
    sampler = _sampler(args, run)
    t0 = time.perf_counter()
    if args.seeds is not None:
        if args.out or args.n:
            raise ValueError("--seeds writes one file per seed into --outdir; -n and --out are for one grid")
        outdir = Path(args.outdir) if args.outdir else run.directory / "seeds"
        res = generate_run(run, parse_seeds(args.seeds), outdir, batch=args.batch, fmt=args.format,
                           progress=not args.quiet, **sampler)
        print(f"{res.written} samples written, {res.skipped} already there, {res.nfe} NFE each, "
              f"{time.perf_counter() - t0:.1f} s -> {outdir}")
        return 0
    if args.outdir:
        raise ValueError("--outdir needs --seeds (e.g. --seeds 0-49999)")
    n = args.n or run.config.sampling.n
    x, info = sample_run(run, n, seed=args.seed, progress=not args.quiet, **sampler)
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
    sampler = _sampler(args, run)
    inception = {"ref": args.ref, "inception": args.inception, "samples": args.samples, "n": args.n,
                 "batch": args.batch}
    result = evaluate_run(run, metrics, out, seed=args.seed, progress=not args.quiet, inception_options=inception,
                          **sampler)
    write_json(out / "metrics.json", result)
    print(json.dumps(result, indent=1))
    return 0


def _cmd_fid_stats(args: argparse.Namespace) -> int:
    from .. import metrics as M
    from .args import device_of

    source = D.image_source(args.data, args.split, tuple(args.data_range))
    net = M.load_inception(args.inception, device_of(args.device))
    n = source.count if args.n is None else min(args.n, source.count)
    stats, _ = M.inception_stats(net, source.batches(args.batch, limit=n), total=n, progress=not args.quiet)
    stats.save(args.out)
    print(f"{stats.n} images ({source.kind}) through {net.identity['name']} "
          f"(sha256 {net.identity['sha256'][:16]}...) -> {args.out}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``sample``, ``encode``, ``decode``, ``eval`` and ``fid-stats``."""
    p = sub.add_parser("sample", help="draw samples from a run (a PNG grid + .npz, or one file per seed)",
                       description="Draw samples. One grid: scoresde sample RUN -n 64. By seed (EDM's convention: "
                                   "sample k is the same in any batch and after a resume): scoresde sample RUN "
                                   "--seeds 0-49999 --batch 500 --outdir DIR")
    run_options(p)
    sampler_options(p)
    method_options(p)
    p.add_argument("-n", type=positive_int, help="number of samples (default: the run's sampling.n)")
    p.add_argument("--out", help="output PNG (default RUN/samples.png); the array goes beside it as .npz")
    p.add_argument("--seeds", help="seeds to draw, one sample each: 0-49999, 1,5,9 or a mix (resumable)")
    p.add_argument("--batch", type=positive_int, default=100, help="seeds per sampler call (default 100)")
    p.add_argument("--outdir", help="folder of the per-seed files (default RUN/seeds): DIR/000000/000123.png")
    p.add_argument("--format", choices=("png", "npz"), default="png",
                   help="png: one 8-bit image per seed; npz: shards seeds_<first>-<last>.npz of raw floats (any data)")
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

    p = sub.add_parser("eval", help="metrics of a run (bits/dim, FID, IS, FD-digits, sliced-W2, ...)",
                       description="Measure a run. FID / IS: scoresde eval RUN --metrics fid is --ref REF.npz "
                                   "--inception inception-2015-12-05.pt --n 50000 (generates seeds 0..n-1, "
                                   "resumable, or reads --samples DIR)")
    run_options(p)
    sampler_options(p)
    method_options(p)
    p.add_argument("--metrics", nargs="+", choices=METRICS, help="default: the run's evaluation.metrics")
    p.add_argument("--out", help="output folder (default RUN/eval)")
    p.add_argument("--ref", help="reference statistics for fid (`scoresde fid-stats`; default evaluation.fid_ref)")
    p.add_argument("--inception", help="Inception TorchScript file (NVIDIA's inception-2015-12-05.pt) or fid-helper "
                                       "(default evaluation.inception)")
    p.add_argument("--samples", help="folder of samples for fid / is (PNGs or npz shards) instead of generating")
    p.add_argument("--n", type=positive_int, help="samples for fid / is (default evaluation.fid_samples)")
    p.add_argument("--batch", type=positive_int, help="samples per batch for fid / is (default evaluation.fid_batch)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("fid-stats", help="Inception feature statistics of a data set (the reference of fid)",
                       description="Mean and covariance (float64) of the Inception pool features of DATA, with the "
                                   "network's name and SHA-256. Example: scoresde fid-stats cifar-10-batches-py "
                                   "--inception inception-2015-12-05.pt --out cifar10-train.npz")
    p.add_argument("data", help="CIFAR-10 python folder, a .npz of images, a folder of images or of generated PNGs")
    p.add_argument("--out", required=True, help="output .npz (mu, sigma, n, network_name, network_sha256)")
    p.add_argument("--inception", required=True, help="Inception TorchScript file or fid-helper")
    p.add_argument("--split", choices=D.SPLITS, default="train", help="CIFAR-10 split (default train, as EDM's ref)")
    p.add_argument("--n", type=positive_int, help="first N images only (default all)")
    p.add_argument("--batch", type=positive_int, default=250, help="images per Inception batch (default 250)")
    p.add_argument("--data-range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LO", "HI"),
                   help="range of float images in a .npz (default -1 1); integer images are 0..255")
    p.set_defaults(func=_cmd_fid_stats)
