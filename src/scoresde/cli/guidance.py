"""``train-classifier``, ``guide``, ``inpaint``, ``colorize`` and ``restore``: controllable generation."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import config as C
from .. import data as D
from ..guidance import (
    AveragePool,
    CircularBlur,
    LinearOperator,
    Mask,
    cfg_score_from_model,
    classifier_guided_score,
    colorize,
    inpaint,
    solve_inverse_problem,
    to_gray,
)
from ..guidance.inverse import METHODS
from ..images import read_array, save_samples, side_by_side
from ..runs import Run, load_classifier
from ..sampling import steps_for_nfe
from ..score import ScoreFn
from .args import device_of, load, nonnegative_int, positive_int, run_options, sampler_options
from .runs import train_classifier


def guided_score(run: Run, labels: Tensor | int, scale: float, classifier: nn.Module | None = None) -> ScoreFn:
    """The class-conditional score of a run: classifier guidance with ``classifier`` (the run's
    unconditional score ``+ w grad log p_t(y | x)``), else classifier-free guidance with the run's
    own network and its null label."""
    if classifier is not None:
        return classifier_guided_score(run.score_fn, classifier, labels, scale)
    null = getattr(run.model, "null_label", None)
    if null is None:
        raise ValueError("classifier-free guidance needs a run trained with a null label (model.null_class=true)")
    return cfg_score_from_model(run.model, run.sde, labels, scale, null, run.loss.parameterization)


def make_mask(spec: str, shape: tuple[int, ...]) -> Tensor:
    """A boolean mask of one sample's ``shape`` (``True`` = observed): ``half`` (the top half of
    the rows, or the first half of a vector), ``box`` (all but a centred box of half the height
    and width), or a PNG file (white = observed; resized to the image, shared by the channels)."""
    mask = torch.zeros(shape, dtype=torch.bool)
    if spec == "half":
        if len(shape) == 1:
            mask[: shape[0] // 2] = True
        else:
            mask[..., : shape[-2] // 2, :] = True
        return mask
    if len(shape) < 3:
        raise ValueError(f"mask {spec!r} needs images (C, H, W); use 'half' for vectors")
    h, w = shape[-2:]
    if spec == "box":
        mask[...] = True
        mask[..., h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = False
        return mask
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"mask must be 'half', 'box' or a PNG file, got {spec!r}")
    from PIL import Image

    img = Image.open(path).convert("L").resize((w, h), Image.NEAREST)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return (pixels >= 128).expand(shape).clone()


def _data(run: Run, args: argparse.Namespace) -> tuple[Tensor, Tensor | None]:
    """``--input`` (array ``x`` of an .npz) or the first ``n`` test items of the run's data."""
    if args.input:
        return read_array(args.input, "x")[: args.n], None
    test = C.build_dataset(run.config, "test")
    return test.x[: args.n], None if test.labels is None else test.labels[: args.n]


def _method_steps(args: argparse.Namespace, run: Run, default_method: str, default_steps: int) -> tuple[str, int]:
    """``--method`` and ``--steps`` (or the most steps that fit in ``--nfe``; guidance costs
    are per score evaluation as for unguided sampling)."""
    method = args.method or default_method
    if args.nfe:
        return method, steps_for_nfe(method, args.nfe)
    return method, args.steps or default_steps


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    cfg = C.load_config(args.config, args.overrides)
    t0 = time.perf_counter()
    net = {"nf": args.nf} if args.nf else {}
    acc = train_classifier(cfg, Path(args.out), args.steps, progress=not args.quiet, device=device_of(args.device), **net)
    print(f"classifier trained ({args.steps} steps, {time.perf_counter() - t0:.0f} s) -> {args.out}")
    print("test accuracy at t: " + ", ".join(f"{t:g}: {a:.3f}" for t, a in acc.items()))
    return 0


def _cmd_guide(args: argparse.Namespace) -> int:
    from ..sampling import sample

    run = load(args)
    clf = load_classifier(args.classifier, run.device) if args.classifier else None
    k = getattr(run.model, "null_label", None) or (clf.head.out_features if clf is not None else None)
    labels = torch.full((args.n,), args.label) if args.label is not None else torch.arange(args.n) % (k or 10)
    if args.label is None:
        labels = labels.sort(stable=True).values
    score = guided_score(run, labels.to(run.device), args.scale, clf)
    gen = torch.Generator(device=run.device).manual_seed(args.seed)
    method, steps = _method_steps(args, run, "dpm-solver++", 20)
    with torch.no_grad():
        x, info = sample(score, run.sde, (args.n,) + run.sample_shape, method=method, steps=steps,
                         generator=gen, device=run.device)
    save_samples(x, args.out, D.data_range(run.config.data.centered), labels=labels.numpy())
    print(f"{args.n} guided samples (scale {args.scale}, {info.nfe} NFE per sample) -> {args.out}")
    return 0


def _conditional_options(args: argparse.Namespace) -> dict:
    """``--method smc|replacement`` with ``--particles`` and ``--steps`` (SMC), or ``--sampler`` and
    ``--steps`` (replacement), and ``--noise`` (sigma_y of the measurement) as keyword arguments of
    :func:`scoresde.guidance.solve_inverse_problem`."""
    opts: dict = {"method": args.method, "sigma_y": args.noise}
    if args.steps:
        opts["steps"] = args.steps
    if args.method == "smc":
        opts["particles"] = args.particles
    else:
        opts["sampler"] = args.sampler
    return opts


def _report(what: str, n: int, info: Any, out: str, cells: str) -> None:
    cost = f"{info.nfe} NFE per sample" + (f": {info.particles} particles, {info.steps} steps" if info.method == "smc" else "")
    print(f"{n} {what} by {info.method} ({cost}) -> {out} (cells: {cells})")


def _cmd_inpaint(args: argparse.Namespace) -> int:
    run = load(args)
    x, _ = _data(run, args)
    x = x.to(run.device)
    mask = make_mask(args.mask, tuple(x.shape[1:])).to(run.device)
    gen = torch.Generator(device=run.device).manual_seed(args.seed)
    out, info = inpaint(run.score_fn, run.sde, x, mask, generator=gen, **_conditional_options(args))
    data_range = D.data_range(run.config.data.centered)
    mid = sum(data_range) / 2  # unobserved pixels shown gray
    shown = side_by_side(torch.where(mask, x, torch.full_like(x, mid)), out, x) if x.ndim == 4 else out
    save_samples(shown, args.out, data_range, inpainted=out.cpu().numpy(), mask=mask.cpu().numpy())
    _report("inpainted", x.shape[0], info, args.out, "observed, unobserved gray | inpainted | original")
    return 0


def gray_input(x: Tensor) -> Tensor:
    """Gray images ``(B, 1, H, W)`` from 1-channel images, or from RGB ones (their channel mean:
    a gray image stored as 3 equal channels stays itself)."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"colorize needs images (B, 1 or 3, H, W), got {tuple(x.shape)}")
    return to_gray(x)


def _cmd_colorize(args: argparse.Namespace) -> int:
    run = load(args)
    x, _ = _data(run, args)
    gray = gray_input(x.to(run.device))
    channels = run.sample_shape[0]
    if len(run.sample_shape) != 3 or channels < 2:
        raise ValueError(f"colorize needs a run trained on colour images (C >= 2, H, W), got {tuple(run.sample_shape)}")
    gen = torch.Generator(device=run.device).manual_seed(args.seed)
    out, info = colorize(run.score_fn, run.sde, gray, channels, generator=gen, **_conditional_options(args))
    cells = [gray.expand(-1, channels, -1, -1), out] + ([x.to(out)] if x.shape[1] == channels else [])
    save_samples(side_by_side(*cells), args.out, D.data_range(run.config.data.centered), colorized=out.cpu().numpy())
    _report("colorized", x.shape[0], info, args.out, "gray | colorized" + (" | original" if len(cells) == 3 else ""))
    return 0


def make_operator(spec: str, shape: tuple[int, ...]) -> LinearOperator:
    """``avgpool:F`` (F x F block means), ``blur:SIGMA`` (circular Gaussian blur of std SIGMA
    pixels, a (2 ceil(3 SIGMA) + 1)^2 kernel) or ``mask:SPEC`` (a :func:`make_mask` spec)."""
    kind, _, value = spec.partition(":")
    if kind == "avgpool" and value.isdigit():
        return AveragePool(int(value))
    if kind == "blur":
        try:
            sigma = float(value)
        except ValueError:
            sigma = -1.0
        if not sigma > 0:
            raise ValueError(f"blur needs a positive SIGMA (blur:1.0), got {spec!r}")
        r = max(1, math.ceil(3 * sigma))
        u = torch.arange(-r, r + 1, dtype=torch.float64)
        k = torch.exp(-0.5 * (u / sigma) ** 2)
        return CircularBlur(torch.outer(k, k) / k.sum() ** 2)
    if kind == "mask" and value:
        return Mask(make_mask(value, shape))
    raise ValueError(f"--op must be avgpool:F, blur:SIGMA or mask:SPEC, got {spec!r}")


def _cmd_restore(args: argparse.Namespace) -> int:
    run = load(args)
    x, _ = _data(run, args)
    x = x.to(run.device)
    op = make_operator(args.op, tuple(x.shape[1:]))
    op.check(x)
    gen = torch.Generator(device=run.device).manual_seed(args.seed)
    y = op(x) + args.noise * torch.randn(op(x).shape, generator=gen, device=run.device).to(x)
    out, info = solve_inverse_problem(run.score_fn, run.sde, y, op, tuple(x.shape), generator=gen, **_conditional_options(args))
    save_samples(side_by_side(op.pinv(y), out, x), args.out, D.data_range(run.config.data.centered),
                 restored=out.cpu().numpy(), measured=y.cpu().numpy())
    _report(f"restored ({args.op}, noise {args.noise:g})", x.shape[0], info, args.out, "A^+ y | restored | original")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``train-classifier``, ``guide``, ``inpaint``, ``colorize`` and ``restore``."""
    p = sub.add_parser("train-classifier", help="train a noise-conditional classifier p_t(y | x_t) for guidance")
    p.add_argument("config", help="preset or YAML of the score run (data and SDE are taken from it)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    p.add_argument("--out", required=True, help="classifier folder to create")
    p.add_argument("--steps", type=positive_int, default=500, help="optimiser steps (default 500)")
    p.add_argument("--nf", type=positive_int, help="base width of the classifier (default: the score network's)")
    p.set_defaults(func=_cmd_train_classifier)

    p = sub.add_parser("guide", help="class-conditional samples by classifier or classifier-free guidance")
    run_options(p)
    sampler_options(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--classifier", help="folder written by train-classifier (classifier guidance)")
    g.add_argument("--cfg", action="store_true", help="classifier-free guidance with the run's null label")
    p.add_argument("--scale", type=float, default=1.0, help="guidance scale w >= 0 (default 1)")
    p.add_argument("--label", type=nonnegative_int, help="class to draw (default: every class in turn)")
    p.add_argument("-n", type=positive_int, default=80, help="number of samples (default 80)")
    p.add_argument("--out", required=True, help="output PNG (array beside it as .npz)")
    p.set_defaults(func=_cmd_guide)

    for name, fn, what in (("inpaint", _cmd_inpaint, "fill masked pixels (particles by default, or replacement)"),
                           ("colorize", _cmd_colorize, "colorize gray-scale images (1 channel or 3 equal ones)"),
                           ("restore", _cmd_restore, "solve y = A x + noise: super-resolution, deblurring, masks")):
        p = sub.add_parser(name, help=what)
        run_options(p)
        p.add_argument("--method", choices=METHODS, default="smc",
                       help="smc: particles with the observed path, asymptotically exact (default); "
                            "replacement: the paper's projection, fast and biased")
        p.add_argument("--particles", type=positive_int, default=16, help="SMC particles per item (default 16)")
        p.add_argument("--steps", type=positive_int, help="time steps (default: 100 for smc, the sampler's for replacement)")
        p.add_argument("--sampler", default="pc", help="the replacement method's sampler (default pc)")
        p.add_argument("--noise", type=float, default=0.0, help="measurement noise sigma_y (default 0: exact)")
        p.add_argument("-n", type=positive_int, default=16, help="number of items (default 16)")
        p.add_argument("--input", help=".npz with array x (default: the run's test split)")
        p.add_argument("--out", required=True, help="output PNG (array beside it as .npz)")
        if name == "inpaint":
            p.add_argument("--mask", default="half", help="half | box | PNG file, white = observed (default half)")
        if name == "restore":
            p.add_argument("--op", required=True, help="avgpool:F | blur:SIGMA | mask:SPEC (the measurement operator)")
        p.set_defaults(func=fn)
