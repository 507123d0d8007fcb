"""The ``scoresde`` command line.

Sub-commands::

    scoresde presets                              list the shipped presets
    scoresde train PRESET|YAML [key=value ...] --out DIR [--resume]
    scoresde sample RUN [--method M] [--steps N | --nfe N] [-n N] [--seed S] [--out PNG]
    scoresde likelihood RUN [--split test] [--limit N]   bits/dim, resumable
    scoresde encode RUN INPUT.npz --out Z.npz     data -> latent (probability-flow ODE)
    scoresde decode RUN Z.npz --out PNG           latent -> data
    scoresde eval RUN [--metrics ...]             bits/dim, FD-digits, sliced-W2, ...
    scoresde run [PRESET] [key=value ...]         the README's main job: train, sample, evaluate

``RUN`` is a directory written by ``train``: ``config.yaml``, checkpoints and logs.
Errors are one line on stderr with exit status 2; ``--debug`` shows the traceback.

Other modules add sub-commands through :data:`EXTENSIONS`: each listed module defines
``add_cli(subparsers)``, which registers its parsers (with ``set_defaults(func=...)``, the
function taking the parsed ``args``); the helpers below (:func:`load_run`, :func:`save_samples`,
:func:`sample_run`, ...) are public for them.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from scoresde import config as C
from scoresde import data as D
from scoresde import likelihood as L
from scoresde.rk import NORMS
from scoresde._tensor import append_dims, as_batch_time, check_choice

#: Modules that register more sub-commands with ``add_cli(subparsers)`` (skipped if absent).
#: Guidance (inpaint, colorize, train-classifier) and reflow add one line each here.
EXTENSIONS: tuple[str, ...] = ("scoresde.guidance.cli", "scoresde.reflow_cli")

CONFIG_FILE = "config.yaml"


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    """A trained run loaded from its directory: the config, SDE, loss, network (EMA weights by
    default) and its score function ``score_fn(x, t)``."""

    directory: Path
    cfg: C.Config
    sde: Any
    loss: Any
    model: torch.nn.Module
    score_fn: Callable[[Tensor, Tensor], Tensor]
    step: int
    device: torch.device

    @functools.cached_property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one data sample (read from the test split once)."""
        return tuple(C.build_dataset(self.cfg, "test").sample_shape)


def device_of(name: str | None) -> torch.device:
    """``--device``: the name given, else CUDA when available, else CPU."""
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_run(directory: str | Path, checkpoint: str | None = None, ema: bool = True,
             device: torch.device | str = "cpu") -> Run:
    """Load ``directory/config.yaml`` and the newest valid checkpoint there (or ``checkpoint``)."""
    from scoresde import checkpoint as ckpt
    from scoresde.score import score_fn_from_model

    root = Path(directory)
    if not (root / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{root}: not a run directory (expected {CONFIG_FILE} written by `scoresde train`)")
    cfg = C.load_config(str(root / CONFIG_FILE))
    found = ckpt.load(checkpoint) if checkpoint else ckpt.load_latest(root)
    if found is None:
        raise FileNotFoundError(f"{root}: no valid checkpoint (train first)")
    sde = C.build_sde(cfg)
    loss = C.build_loss(cfg, sde)
    model = C.build_model(cfg)
    prefix = "ema." if ema else "model."  # the Trainer's checkpoint layout
    model.load_state_dict({k[len(prefix):]: v for k, v in found.tensors.items() if k.startswith(prefix)})
    model = model.to(device).eval().requires_grad_(False)
    score_fn = score_fn_from_model(model, sde, loss.parameterization)
    return Run(root, cfg, sde, loss, model, score_fn, found.step, torch.device(device))


# --------------------------------------------------------------------------- images and files


def image_grid(x: Tensor, data_range: tuple[float, float] = (-1.0, 1.0), min_cell: int = 32) -> np.ndarray:
    """Tile images ``(B, C, H, W)`` into one uint8 array ``(rows*H', cols*W', C)`` with a
    1-pixel border, each image upscaled (nearest) to at least ``min_cell`` pixels."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
    lo, hi = data_range
    scale = max(1, math.ceil(min_cell / x.shape[-1]))
    imgs = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    imgs = imgs.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    b, c, h, w = imgs.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
    for i in range(b):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = imgs[i]
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_png(x: Tensor, path: str | Path, data_range: tuple[float, float] = (-1.0, 1.0)) -> None:
    """Images ``(B, C, H, W)`` as a PNG grid; vectors ``(B, 2)`` as a scatter plot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x.ndim == 4:
        from PIL import Image

        arr = image_grid(x[:256], data_range)
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
        return
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"can draw images (B, C, H, W) or 2-D points (B, 2), got {tuple(x.shape)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(x[:, 0].cpu(), x[:, 1].cpu(), s=2, alpha=0.5)
    ax.set_aspect("equal")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def save_samples(x: Tensor, png: str | Path, data_range: tuple[float, float] = (-1.0, 1.0),
                 **extra: Any) -> Path:
    """Write ``png`` (grid or scatter) and the raw array beside it as ``.npz`` (key ``x`` plus
    ``extra`` entries); returns the ``.npz`` path."""
    png = Path(png)
    save_png(x, png, data_range)
    npz = png.with_suffix(".npz")
    np.savez(npz, x=x.detach().cpu().numpy(), **{k: np.asarray(v) for k, v in extra.items()})
    return npz


def read_array(path: str | Path, key: str) -> Tensor:
    """Array ``key`` of an ``.npz`` file as a float tensor (clear errors for missing files/keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a .npz archive with array {key!r})")
    with np.load(path, allow_pickle=False) as arc:
        if key not in arc.files:
            raise ValueError(f"{path}: no array {key!r}; the archive holds {arc.files}")
        return torch.as_tensor(arc[key], dtype=torch.float32)


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


# --------------------------------------------------------------------------- sampling


def steps_for_nfe(sde: Any, method: str, nfe: int, shape: tuple[int, ...], options: dict,
                  denoise: bool = False) -> int:
    """The largest ``steps`` whose run of ``method`` (with the final denoising step when
    ``denoise``) spends at most ``nfe`` score evaluations, found by dry runs with a zero score on
    one sample (cheap: no network)."""
    from scoresde.sampling import sample

    def cost(steps: int) -> int:
        _, info = sample(lambda x, t: torch.zeros_like(x), sde, (1,) + tuple(shape), method=method,
                         steps=steps, denoise=denoise, generator=torch.Generator().manual_seed(0), **options)
        return info.nfe

    if cost(1) > nfe:
        raise ValueError(f"--nfe {nfe} is below the cost of one {method} step ({cost(1)} NFE)")
    lo, hi = 1, 2
    while cost(hi) <= nfe and hi < 100_000:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= nfe else (lo, mid)
    return lo


def clip_denoised(score_fn: Callable[[Tensor, Tensor], Tensor], sde: Any,
                  data_range: tuple[float, float]) -> Callable[[Tensor, Tensor], Tensor]:
    """The score whose Tweedie estimate ``x0 = (x + sigma^2 s) / alpha`` is clipped to
    ``data_range``: ``s' = (alpha clip(x0) - x) / sigma^2`` (a linear SDE's kernel, in ``t``).

    Unchanged wherever the estimate already lies in the range; it keeps every sampler that
    works through ``x0`` from extrapolating out of the data's bounded support ("thresholding").
    """
    lo, hi = data_range

    def clipped(x: Tensor, t: Tensor) -> Tensor:
        tt = as_batch_time(t, x)
        a, s2 = append_dims(sde.alpha(tt), x.ndim), append_dims(sde.sigma(tt) ** 2, x.ndim)
        x0 = ((x + s2 * score_fn(x, t)) / a).clamp(lo, hi)
        return (a * x0 - x) / s2

    return clipped


def sample_run(run: Run, n: int, *, method: str | None = None, steps: int | None = None,
               nfe: int | None = None, seed: int = 0, progress: bool = True, clip: bool | None = None,
               **options: Any) -> tuple[Tensor, Any]:
    """Draw ``n`` samples from a run with its sampling config, overridden by the arguments
    (``steps`` or an ``nfe`` budget, ``clip`` for :func:`clip_denoised`, ``options`` of the
    method)."""
    from scoresde.sampling import sample

    s = run.cfg.sampling
    clip = s.clip_denoised if clip is None else clip
    score_fn = clip_denoised(run.score_fn, run.sde, D.data_range(run.cfg.data.centered)) if clip else run.score_fn
    method = method or s.method
    opts = {**(s.options if method == s.method else {}), **options}  # the config's options fit its method
    shape = run.sample_shape
    if nfe is not None:
        steps = steps_for_nfe(run.sde, method, nfe, shape, opts, s.denoise)
    steps = steps if steps is not None else s.steps
    generator = torch.Generator(device=run.device).manual_seed(seed)
    return sample(score_fn, run.sde, (n,) + shape, method=method, steps=steps, generator=generator,
                  denoise=s.denoise, progress=progress, device=run.device, batch_size=s.batch_size, **opts)


# --------------------------------------------------------------------------- likelihood


def likelihood_over_split(run: Run, split: str, limit: int | None, batch: int, results: Path, *,
                          divergence: str, rtol: float, atol: float, seed: int = 0, prior_reference: int = 0,
                          progress: bool = True, **likelihood_options: Any) -> dict[str, Any]:
    """Bits/dim of the first ``limit`` items of a split, or NLL in nats/dim for continuous data.

    Quantised data goes through :func:`scoresde.likelihood.evaluate_bpd` (uniform
    dequantization, progress bar), which saves its partial results in ``results`` after every
    batch and resumes from them. ``prior_reference > 0``: the first that many training items
    estimate the prior constant ``C0`` (:func:`scoresde.likelihood.prior_constant`).
    ``likelihood_options`` (e.g. ``prior``, ``eps``) go to :func:`scoresde.likelihood.log_likelihood`.
    Returns the mean, standard error, count and NFE per item.
    """
    from tqdm.auto import tqdm

    if prior_reference > 0:
        likelihood_options["prior_reference"] = C.build_dataset(run.cfg, "train").x[:prior_reference].to(run.device)
    ds = C.build_dataset(run.cfg, split)
    n = len(ds) if limit is None else min(limit, len(ds))
    batches = [ds.x[k : min(k + batch, n)].to(run.device) for k in range(0, n, batch)]
    generator = torch.Generator(device=run.device).manual_seed(seed)
    options = {"divergence": divergence, "rtol": rtol, "atol": atol, **likelihood_options}
    levels = run.cfg.data.quantisation_levels()
    if levels:
        res = L.evaluate_bpd(run.score_fn, run.sde, batches, levels=levels,
                                      data_range=D.data_range(run.cfg.data.centered), generator=generator,
                                      resume_path=results, progress=progress, **options)
        values, nfe, unit = res.values, res.nfe, "bits/dim"
    else:
        values, nfe, unit = [], 0, "nats/dim"
        for x in tqdm(batches, desc=f"likelihood ({split})", unit="batch", disable=not progress):
            logp, info = L.log_likelihood(run.score_fn, run.sde, x, generator=generator, **options)
            values += (-logp / x[0].numel()).tolist()
            nfe += info.nfe
    vals = np.asarray(values)
    return {"unit": unit, "mean": float(vals.mean()),
            "stderr": float(vals.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
            "n": n, "nfe_per_batch": nfe / len(batches)}


# --------------------------------------------------------------------------- evaluation

SAMPLE_METRICS = ("fd-digits", "pixel-fd", "sliced-w2", "mmd")
METRICS = ("bpd", "nll") + SAMPLE_METRICS


def sample_metrics(samples: Tensor, reference: Tensor, names: Sequence[str], seed: int = 0) -> dict[str, float]:
    """The sample-quality metrics ``names`` of ``samples`` against ``reference``."""
    from scoresde import metrics as M

    table: dict[str, Callable[[], float]] = {
        "fd-digits": lambda: M.fd_digits(samples, reference),
        "pixel-fd": lambda: M.pixel_frechet(samples, reference),
        "sliced-w2": lambda: M.sliced_wasserstein(samples, reference, generator=torch.Generator().manual_seed(seed)),
        "mmd": lambda: M.mmd2(samples, reference),
    }
    return {name: table[name]() for name in names}


def evaluate_run(run: Run, metrics: Sequence[str], out: Path, *, method: str | None = None,
                 steps: int | None = None, nfe: int | None = None, seed: int = 0, clip: bool | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Measure ``metrics`` of a run; writes ``out/samples.png`` (+ ``.npz``) when sampling and
    ``out/likelihood_<split>_step<n>.json`` (partial results of checkpoint ``n``); returns the
    figures."""
    ev = run.cfg.evaluation
    for name in metrics:
        check_choice(name, METRICS, "metric")
    result: dict[str, Any] = {"step": run.step}
    wanted = [m for m in metrics if m in SAMPLE_METRICS]
    if wanted:
        t0 = time.perf_counter()
        x, info = sample_run(run, ev.n_samples, method=method, steps=steps, nfe=nfe, seed=seed, clip=clip,
                             progress=progress)
        result["sampling"] = {"method": info.method, "nfe": info.nfe, "n": ev.n_samples,
                              "clip_denoised": run.cfg.sampling.clip_denoised if clip is None else clip,
                              "seconds": round(time.perf_counter() - t0, 2)}
        save_samples(x[:100], out / "samples.png", D.data_range(run.cfg.data.centered))
        reference = C.build_dataset(run.cfg, ev.split).x
        result.update(sample_metrics(x.cpu(), reference, wanted, seed))
    if {"bpd", "nll"} & set(metrics):
        t0 = time.perf_counter()
        partial = out / f"likelihood_{ev.split}_step{run.step}.json"
        lik = likelihood_over_split(run, ev.split, ev.likelihood_n, ev.likelihood_batch, partial,
                                    divergence=ev.divergence, method=ev.ode_method, rtol=ev.rtol, atol=ev.atol,
                                    seed=seed, prior_reference=ev.prior_reference, progress=progress)
        result["likelihood"] = {**lik, "divergence": ev.divergence, "method": ev.ode_method, "seconds": round(time.perf_counter() - t0, 2)}
    return result


# --------------------------------------------------------------------------- training


def train_run(cfg: C.Config, out: Path, resume: bool = False, progress: bool = True,
              device: torch.device | None = None) -> Path:
    """Train ``cfg`` into the run directory ``out``: ``config.yaml``, the checkpoints
    ``ckpt_<step>.*`` and the logs ``log.jsonl`` / ``log.csv`` of :class:`scoresde.train.Trainer`.

    Under ``torchrun`` each process reads its rank's slice of every global batch.
    """
    import torch.distributed as dist

    from scoresde.train import Trainer, init_distributed

    rank, world, device = init_distributed(device)
    t = cfg.training
    torch.manual_seed(t.seed)  # network initialisation
    sde = C.build_sde(cfg)
    model, loss = C.build_model(cfg), C.build_loss(cfg, sde)
    if t.label_dropout > 0:
        loss = _with_label_dropout(loss, model, t.label_dropout)
    if (out / CONFIG_FILE).is_file() and not resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if (out / CONFIG_FILE).is_file() and not _same_run(C.load_config(str(out / CONFIG_FILE)), cfg):
        raise ValueError(f"{out} holds a run of another configuration; choose another --out")
    if world > 1:
        dist.barrier()  # every rank has checked the directory before rank 0 writes into it
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        C.save_config(cfg, out / CONFIG_FILE)
    if world > 1:
        dist.barrier()
    batches = C.build_batches(cfg, C.build_dataset(cfg, "train"), rank=rank, world_size=world)
    trainer = Trainer(model, loss, batches, batch_size=t.batch_size, lr=t.lr, warmup_steps=t.warmup,
                      grad_clip=t.grad_clip, ema_decay=t.ema_decay, ema_warmup=t.ema_warmup,
                      weight_decay=t.weight_decay, seed=t.seed, out_dir=out, log_every=t.log_every,
                      ckpt_every=t.checkpoint_every, keep_last=t.keep, resume=resume,
                      progress=progress, config=cfg.to_dict(), device=device)
    trainer.fit(t.steps)
    return out


def _with_label_dropout(loss: Callable[..., Tensor], model: torch.nn.Module, p: float) -> Callable[..., Tensor]:
    """``loss`` trained on the model's null label with probability ``p`` (classifier-free guidance)."""
    import scoresde as sd

    null = getattr(model, "null_label", None)
    if null is None:
        raise ValueError("training.label_dropout > 0 needs a class-conditional model with a null label "
                         "(set model.num_classes and model.null_label=true)")
    return sd.LabelDropout(loss, null, p)


def _same_run(a: C.Config, b: C.Config) -> bool:
    """Whether ``b`` continues the training of ``a``: the same data, SDE, model, loss and
    training section up to ``training.steps`` (sampling and evaluation may change)."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d["training"].pop("steps")
    return all(da[k] == db[k] for k in ("data", "sde", "model", "loss", "training"))


def plot_loss(run_dir: Path, path: Path) -> None:
    """Plot the training loss of ``run_dir/log.jsonl`` (one point per log period) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over log period)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------- commands


def _cmd_presets(args: argparse.Namespace) -> int:
    for name in C.preset_names():
        desc = " ".join(C.load_raw(name).get("description", "").split())
        print(f"{name:28s} {desc}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = C.load_config(args.config, args.overrides)
    out = Path(args.out)
    train_run(cfg, out, resume=args.resume, progress=not args.quiet, device=device_of(args.device))
    print(f"trained {cfg.training.steps} steps into {out}")
    return 0


def _load(args: argparse.Namespace) -> Run:
    return load_run(args.run, args.checkpoint, ema=not args.no_ema, device=device_of(args.device))


def _cmd_sample(args: argparse.Namespace) -> int:
    run = _load(args)
    n = args.n or run.cfg.sampling.n
    t0 = time.perf_counter()
    x, info = sample_run(run, n, method=args.method, steps=args.steps, nfe=args.nfe, seed=args.seed,
                         clip=args.clip_denoised, progress=not args.quiet)
    out = Path(args.out) if args.out else run.directory / "samples.png"
    npz = save_samples(x, out, D.data_range(run.cfg.data.centered), nfe=info.nfe)
    print(f"{n} samples, {info.nfe} NFE, {time.perf_counter() - t0:.1f} s -> {out}, {npz}")
    return 0


def _cmd_likelihood(args: argparse.Namespace) -> int:
    run = _load(args)
    ev = run.cfg.evaluation
    results = Path(args.out) if args.out else run.directory / f"likelihood_{args.split}_step{run.step}.json"
    res = likelihood_over_split(run, args.split, args.limit if args.limit else ev.likelihood_n,
                                args.batch or ev.likelihood_batch, results,
                                divergence=args.divergence or ev.divergence, method=args.method or ev.ode_method,
                                rtol=args.rtol or ev.rtol,
                                atol=args.atol or ev.atol, seed=args.seed, progress=not args.quiet,
                                prior_reference=ev.prior_reference if args.prior_reference is None else args.prior_reference,
                                **{k: v for k in ("prior", "eps", "error_norm") if (v := getattr(args, k)) is not None})
    print(f"{args.split}: {res['mean']:.4f} ± {res['stderr']:.4f} {res['unit']} over {res['n']} items "
          f"({res['nfe_per_batch']:.0f} NFE per batch) -> {results}")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from scoresde.sampling import encode

    run = _load(args)
    x = read_array(args.input, args.key).to(run.device)
    z, info = encode(run.score_fn, run.sde, x)
    np.savez(args.out, z=z.cpu().numpy(), nfe=info.nfe)
    print(f"encoded {x.shape[0]} items, {info.nfe} NFE -> {args.out}")
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from scoresde.sampling import decode

    run = _load(args)
    z = read_array(args.input, "z").to(run.device)
    x, info = decode(run.score_fn, run.sde, z)
    npz = save_samples(x, args.out, D.data_range(run.cfg.data.centered), nfe=info.nfe)
    print(f"decoded {z.shape[0]} items, {info.nfe} NFE -> {args.out}, {npz}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    run = _load(args)
    metrics = args.metrics or run.cfg.evaluation.metrics
    out = Path(args.out) if args.out else run.directory / "eval"
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate_run(run, metrics, out, method=args.method, steps=args.steps, nfe=args.nfe,
                          seed=args.seed, clip=args.clip_denoised, progress=not args.quiet)
    write_json(out / "metrics.json", result)
    print(json.dumps(result, indent=1))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = C.load_config(args.preset, args.overrides)
    out = Path(args.out)
    t0 = time.perf_counter()
    train_run(cfg, out, resume=True, progress=not args.quiet, device=device_of(args.device))
    plot_loss(out, out / "loss.png")
    train_s = time.perf_counter() - t0
    run = load_run(out, device=device_of(args.device))
    result = evaluate_run(run, cfg.evaluation.metrics, out, method=args.method, steps=args.steps,
                          nfe=args.nfe, seed=args.seed, clip=args.clip_denoised, progress=not args.quiet)
    result["train_seconds"] = round(train_s, 1)
    write_json(out / "results.json", result)
    print(json.dumps(result, indent=1))
    print(f"samples: {out / 'samples.png'}; figures: {out / 'results.json'}")
    return 0


# --------------------------------------------------------------------------- parser


def _common_options(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--debug", action="store_true", default=default, help="show full tracebacks on errors")
    p.add_argument("--quiet", action="store_true", default=default, help="no progress bars")
    p.add_argument("--device", default=default, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=default, help="torch CPU threads")


class _SubParsers:
    """``add_parser`` of argparse's sub-parsers that also adds the common options."""

    def __init__(self, action: Any) -> None:
        self.action = action

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = self.action.add_parser(name, **kwargs)
        _common_options(p, argparse.SUPPRESS)
        return p


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by `scoresde train`")
    p.add_argument("--checkpoint", help="a checkpoint file (default: the newest valid one in RUN)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--seed", type=int, default=0, help="seed of all sampling / dequantization noise (default 0)")


def _sampler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="sampler name (default: the run's sampling.method), e.g. dpm-solver++, ddim, "
                                    "heun, pc, ode, euler-maruyama, reverse-diffusion, ancestral")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--steps", type=int, help="number of time steps (default: the run's sampling.steps)")
    group.add_argument("--nfe", type=int, help="score-evaluation budget: the most steps that fit in it")
    p.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=None,
                   help="clip the denoised estimate to the data range at every score evaluation "
                        "(default: the run's sampling.clip_denoised)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command (extensions included)."""
    parser = argparse.ArgumentParser(
        prog="scoresde", description="Score-based generative models through SDEs: train, sample, "
        "evaluate. `scoresde COMMAND --help` explains each command; `scoresde run` is the README's main job.")
    _common_options(parser, argparse.SUPPRESS)  # accepted before or after the command
    parser.set_defaults(debug=False, quiet=False, device=None, threads=None)
    sub = _SubParsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))

    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("train", help="train a score model from a preset or YAML file",
                       description="Train a score model. Example: scoresde train digits-vp training.steps=500 --out runs/a")
    p.add_argument("config", help="preset name (see `scoresde presets`) or path to a YAML file")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. training.steps=500 sde.beta_max=10")
    p.add_argument("--out", required=True, help="run directory to create (config.yaml, checkpoints, logs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest valid checkpoint")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="draw samples from a trained run (PNG grid + .npz)")
    _run_options(p)
    _sampler_options(p)
    p.add_argument("-n", type=int, help="number of samples (default: the run's sampling.n)")
    p.add_argument("--out", help="output PNG (default RUN/samples.png); the array goes beside it as .npz")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("likelihood", help="bits/dim over a dataset split (resumable)")
    _run_options(p)
    p.add_argument("--split", default="test", choices=D.SPLITS, help="dataset split (default test)")
    p.add_argument("--limit", type=int, help="first N items only (default: evaluation.likelihood_n)")
    p.add_argument("--batch", type=int, help="items per ODE solve (default: evaluation.likelihood_batch)")
    p.add_argument("--divergence", choices=("exact", "hutchinson"), help="divergence estimator")
    p.add_argument("--method", choices=L.METHODS, help="ODE solver (default: evaluation.ode_method)")
    p.add_argument("--rtol", type=float, help="ODE relative tolerance (default: evaluation.rtol)")
    p.add_argument("--atol", type=float, help="ODE absolute tolerance (default: evaluation.atol)")
    p.add_argument("--prior", choices=("corrected", "gaussian"),
                   help="prior term of log p (default: scoresde.likelihood.log_likelihood's)")
    p.add_argument("--eps", type=float, help="start time of the ODE (default: the SDE's eps)")
    p.add_argument("--prior-reference", type=int, metavar="N",
                   help="estimate the prior constant C0 from the first N training items (0: off; "
                        "default: evaluation.prior_reference)")
    p.add_argument("--error-norm", choices=NORMS,
                   help="ODE error over the whole batch or per sample (default: batch)")
    p.add_argument("--out", help="partial-results file, resumed when present (default RUN/likelihood_SPLIT_stepN.json)")
    p.set_defaults(func=_cmd_likelihood)

    p = sub.add_parser("encode", help="map data to latents with the probability-flow ODE")
    _run_options(p)
    p.add_argument("input", help=".npz file with the data array")
    p.add_argument("--key", default="x", help="array name in the input file (default x)")
    p.add_argument("--out", required=True, help="output .npz (array z)")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("decode", help="map latents (array z of a .npz) back to data")
    _run_options(p)
    p.add_argument("input", help=".npz file with array z (from `scoresde encode`)")
    p.add_argument("--out", required=True, help="output PNG; the array goes beside it as .npz")
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("eval", help="metrics of a trained run (bits/dim, FD-digits, sliced-W2, ...)")
    _run_options(p)
    _sampler_options(p)
    p.add_argument("--metrics", nargs="+", choices=METRICS, help="default: the run's evaluation.metrics")
    p.add_argument("--out", help="output directory (default RUN/eval)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("run", help="the README's main job: train, sample, evaluate",
                       description="Train a preset (resuming if --out holds it), sample with a fast sampler and "
                                   "write samples.png and results.json with test bits/dim and FD-digits.")
    p.add_argument("preset", nargs="?", default="digits-vp", help="preset or YAML (default digits-vp)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    p.add_argument("--out", default="runs/digits-vp", help="run directory (default runs/digits-vp)")
    _sampler_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and evaluation noise")
    p.set_defaults(func=_cmd_run)

    for module in EXTENSIONS:
        if _module_exists(module):
            importlib.import_module(module).add_cli(sub)
    return parser


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args`` that also takes ``key=value`` overrides after the options
    (``scoresde train PRESET --out DIR training.steps=10``): argparse alone stops collecting a
    positional list at the first option, so such tokens are appended to ``args.overrides``."""
    args, extra = parser.parse_known_args(argv)
    stray = [tok for tok in extra if tok.startswith("-") or "=" not in tok]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scoresde``; returns the exit status (2 on a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = parse_args(build_parser(), argv)
        if args.threads:
            torch.set_num_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("scoresde: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError) as err:
        if debug:
            raise
        print(f"scoresde: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
