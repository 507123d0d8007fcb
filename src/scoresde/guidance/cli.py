"""Sub-commands of ``scoresde`` for controllable generation (registered by :func:`add_cli`)::

    scoresde train-classifier PRESET|YAML [key=value ...] --out DIR [--steps N]
    scoresde guide RUN --classifier DIR | --cfg  [--scale W] [--label K] [-n N] --out PNG
    scoresde inpaint RUN --mask half|box|PNG [--smc] [-n N] [--input NPZ] --out PNG
    scoresde colorize RUN [-n N] [--input NPZ] --out PNG

The functions below (:func:`train_classifier`, :func:`load_classifier`, :func:`make_mask`,
:func:`guided_score`) are the Python side of the commands.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import config as C
from .. import data as D
from ..nets import PRESETS, MLPClassifier, UNetClassifier
from ..score import ScoreFn
from .conditional import NoisyClassifierLoss, cfg_score_from_model, classifier_accuracy, classifier_guided_score
from .inverse import colorize, inpaint, to_gray

CLASSIFIER_FILE = "classifier.json"
ACCURACY_TIMES = (0.01, 0.1, 0.25, 0.5, 0.75, 1.0)


# -- the noise-conditional classifier ---------------------------------------------------------
def classifier_for(cfg: C.Config, num_classes: int, **options: Any) -> nn.Module:
    """A classifier matching the run's data: the encoder of the run's U-Net preset (images) or a
    residual MLP (vectors); ``options`` override the network's keyword arguments."""
    shape = C.build_dataset(cfg, "test").sample_shape
    if len(shape) == 1:
        return MLPClassifier(shape[0], num_classes, **options)
    base = {**PRESETS.get(cfg.model.name, {}), **cfg.model.options}
    base = {k: v for k, v in base.items() if k not in ("progressive", "num_classes", "null_label")}
    return UNetClassifier(num_classes, **{**base, **options})


def train_classifier(cfg: C.Config, out: Path, steps: int, *, progress: bool = True,
                     device: torch.device | None = None, **network: Any) -> dict[float, float]:
    """Train ``p_t(y | x_t)`` on the run's data and SDE with :class:`NoisyClassifierLoss` and the
    run's optimiser settings; writes ``config.yaml``, ``classifier.json`` and checkpoints to
    ``out``. Returns the test accuracy at :data:`ACCURACY_TIMES` (also in ``accuracy.json``)."""
    from ..train import Trainer

    train = C.build_dataset(cfg, "train")
    if train.num_classes is None:
        raise ValueError("the data have no labels: a classifier needs a labelled dataset")
    t = cfg.training
    torch.manual_seed(t.seed)
    model = classifier_for(cfg, train.num_classes, **network)
    sde = C.build_sde(cfg)
    out.mkdir(parents=True, exist_ok=True)
    C.save_config(cfg, out / "config.yaml")
    (out / CLASSIFIER_FILE).write_text(json.dumps({"kind": type(model).__name__, "config": model.config}, indent=1))
    trainer = Trainer(model, NoisyClassifierLoss(sde), train, batch_size=t.batch_size, lr=t.lr,
                      warmup_steps=t.warmup, grad_clip=t.grad_clip, ema_decay=t.ema_decay, seed=t.seed,
                      out_dir=out, ckpt_every=steps, keep_last=1, log_every=t.log_every,
                      progress=progress, device=device)
    trainer.fit(steps)
    test = C.build_dataset(cfg, "test")
    clf = trainer.ema_model.eval()
    x, labels = test.x.to(trainer.device), test.labels.to(trainer.device)
    acc = classifier_accuracy(clf, sde, x, labels, list(ACCURACY_TIMES), torch.Generator().manual_seed(t.seed))
    (out / "accuracy.json").write_text(json.dumps({"steps": steps, "accuracy": acc}, indent=1))
    return acc


def load_classifier(directory: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The EMA classifier of a ``train-classifier`` directory, in eval mode."""
    from .. import checkpoint

    root = Path(directory)
    if not (root / CLASSIFIER_FILE).is_file():
        raise FileNotFoundError(f"{root}: not a classifier directory (no {CLASSIFIER_FILE}; run train-classifier)")
    spec = json.loads((root / CLASSIFIER_FILE).read_text())
    cfg = dict(spec["config"])
    kinds = {"UNetClassifier": UNetClassifier, "MLPClassifier": MLPClassifier}
    if spec["kind"] == "MLPClassifier":
        model = MLPClassifier(cfg.pop("dim"), cfg.pop("num_classes"), **cfg)
    else:
        model = kinds[spec["kind"]](cfg.pop("num_classes"), **cfg)
    found = checkpoint.load_latest(root)
    if found is None:
        raise FileNotFoundError(f"{root}: no valid checkpoint")
    model.load_state_dict({k[4:]: v for k, v in found.tensors.items() if k.startswith("ema.")})
    return model.to(device).eval().requires_grad_(False)


def guided_score(run: Any, labels: Tensor | int, scale: float, classifier: nn.Module | None = None) -> ScoreFn:
    """The class-conditional score of a run: classifier guidance with ``classifier`` (the run's
    unconditional score ``+ w grad log p_t(y | x)``), else classifier-free guidance with the run's
    own network and its null label."""
    if classifier is not None:
        return classifier_guided_score(run.score_fn, classifier, labels, scale)
    null = getattr(run.model, "null_label", None)
    if null is None:
        raise ValueError("classifier-free guidance needs a run trained with a null label (model.null_label=true)")
    return cfg_score_from_model(run.model, run.sde, labels, scale, null, run.loss.parameterization)


# -- masks -------------------------------------------------------------------------------------
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
        mask[..., h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = False
        return mask
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"mask must be 'half', 'box' or a PNG file, got {spec!r}")
    from PIL import Image

    img = Image.open(path).convert("L").resize((w, h), Image.NEAREST)
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return (pixels >= 128).expand(shape).clone()


# -- command handlers ---------------------------------------------------------------------------
def _data(run: Any, args: argparse.Namespace) -> tuple[Tensor, Tensor | None]:
    """``--input`` (array ``x`` of an .npz) or the first ``n`` test items of the run's data."""
    from ..cli import read_array

    if args.input:
        return read_array(args.input, "x")[: args.n], None
    test = C.build_dataset(run.cfg, "test")
    return test.x[: args.n], None if test.labels is None else test.labels[: args.n]


def _method_steps(args: argparse.Namespace, run: Any, default_method: str, default_steps: int) -> tuple[str, int]:
    """``--method`` and ``--steps`` (or the most steps that fit in ``--nfe``; guidance costs
    are per score evaluation as for unguided sampling)."""
    from ..cli import steps_for_nfe

    method = args.method or default_method
    if args.nfe:
        return method, steps_for_nfe(run.sde, method, args.nfe, run.sample_shape, {})
    return method, args.steps or default_steps


def side_by_side(*images: Tensor, fill: float = 1.0, min_size: int = 32) -> Tensor:
    """One cell per sample: image batches ``(B, C, H, W)`` upscaled (nearest) to at least
    ``min_size`` pixels high and joined along the width with a one-pixel ``fill`` column."""
    scale = max(1, -(-min_size // images[0].shape[-2]))
    big = [x.repeat_interleave(scale, -2).repeat_interleave(scale, -1) for x in images]
    gap = torch.full_like(big[0][..., :1], fill)
    return torch.cat([part for x in big for part in (x, gap)][:-1], dim=-1)


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    from ..cli import device_of

    cfg = C.load_config(args.config, args.overrides)
    t0 = time.perf_counter()
    net = {"nf": args.nf} if args.nf else {}
    acc = train_classifier(cfg, Path(args.out), args.steps, progress=not args.quiet, device=device_of(args.device), **net)
    print(f"classifier trained ({args.steps} steps, {time.perf_counter() - t0:.0f} s) -> {args.out}")
    print("test accuracy at t: " + ", ".join(f"{t:g}: {a:.3f}" for t, a in acc.items()))
    return 0


def _cmd_guide(args: argparse.Namespace) -> int:
    from ..cli import _load, save_samples
    from ..sampling import sample

    run = _load(args)
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
    save_samples(x, args.out, D.data_range(run.cfg.data.centered), labels=labels.numpy())
    print(f"{args.n} guided samples (scale {args.scale}, {info.nfe} NFE per sample) -> {args.out}")
    return 0


def _cmd_inpaint(args: argparse.Namespace) -> int:
    from ..cli import _load, save_samples

    run = _load(args)
    x, _ = _data(run, args)
    x = x.to(run.device)
    mask = make_mask(args.mask, tuple(x.shape[1:])).to(run.device)
    gen = torch.Generator(device=run.device).manual_seed(args.seed)
    method, steps = _method_steps(args, run, "euler-maruyama", 200)
    opts = ({"method": "smc", "particles": args.particles, "steps": args.steps or 100} if args.smc else
            {"method": method, "steps": steps})
    out, info = inpaint(run.score_fn, run.sde, x, mask, generator=gen, **opts)
    mid = sum(D.data_range(run.cfg.data.centered)) / 2  # unobserved pixels shown gray
    shown = side_by_side(torch.where(mask, x, torch.full_like(x, mid)), out, x) if x.ndim == 4 else out
    save_samples(shown, args.out, D.data_range(run.cfg.data.centered), inpainted=out.cpu().numpy(), mask=mask.cpu().numpy())
    print(f"{x.shape[0]} inpainted ({info.nfe} NFE) -> {args.out} (cells: observed, unobserved gray | inpainted | original)")
    return 0


def _cmd_colorize(args: argparse.Namespace) -> int:
    from ..cli import _load, save_samples

    run = _load(args)
    x, _ = _data(run, args)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"colorize needs RGB images (B, 3, H, W) and a model trained on them, got {tuple(x.shape)}")
    gray = to_gray(x.to(run.device))
    gen = torch.Generator(device=run.device).manual_seed(args.seed)
    method, steps = _method_steps(args, run, "euler-maruyama", 200)
    out, info = colorize(run.score_fn, run.sde, gray, method=method, steps=steps, generator=gen)
    save_samples(side_by_side(gray.expand(-1, 3, -1, -1), out, x.to(out)), args.out, D.data_range(run.cfg.data.centered),
                 colorized=out.cpu().numpy())
    print(f"{x.shape[0]} colorized ({info.nfe} NFE) -> {args.out} (cells: gray | colorized | original)")
    return 0


def add_cli(sub: Any) -> None:
    """Register ``train-classifier``, ``guide``, ``inpaint`` and ``colorize`` on ``sub``."""
    from ..cli import _run_options, _sampler_options

    p = sub.add_parser("train-classifier", help="train a noise-conditional classifier p_t(y | x_t) for guidance")
    p.add_argument("config", help="preset or YAML of the score run (data and SDE are taken from it)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    p.add_argument("--out", required=True, help="classifier directory to create")
    p.add_argument("--steps", type=int, default=500, help="optimiser steps (default 500)")
    p.add_argument("--nf", type=int, help="base width of the classifier (default: the score network's)")
    p.set_defaults(func=_cmd_train_classifier)

    p = sub.add_parser("guide", help="class-conditional samples by classifier or classifier-free guidance")
    _run_options(p)
    _sampler_options(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--classifier", help="directory written by train-classifier (classifier guidance)")
    g.add_argument("--cfg", action="store_true", help="classifier-free guidance with the run's null label")
    p.add_argument("--scale", type=float, default=1.0, help="guidance scale w >= 0 (default 1)")
    p.add_argument("--label", type=int, help="class to draw (default: every class in turn)")
    p.add_argument("-n", type=int, default=80, help="number of samples (default 80)")
    p.add_argument("--out", required=True, help="output PNG (array beside it as .npz)")
    p.set_defaults(func=_cmd_guide)

    for name, fn, what in (("inpaint", _cmd_inpaint, "fill masked pixels (replacement method or SMC)"),
                           ("colorize", _cmd_colorize, "colorize gray-scale images (orthogonal decoupling)")):
        p = sub.add_parser(name, help=what)
        _run_options(p)
        _sampler_options(p)
        p.add_argument("-n", type=int, default=16, help="number of items (default 16)")
        p.add_argument("--input", help=".npz with array x (default: the run's test split)")
        p.add_argument("--out", required=True, help="output PNG (array beside it as .npz)")
        if name == "inpaint":
            p.add_argument("--mask", default="half", help="half | box | PNG file, white = observed (default half)")
            p.add_argument("--smc", action="store_true", help="SMC particle inpainting instead of replacement")
            p.add_argument("--particles", type=int, default=16, help="SMC particles per item (default 16)")
        p.set_defaults(func=fn)
