"""Orchestration behind the commands: train a config into a run folder, sample and evaluate a run.

These functions compose the library (configs, Trainer, samplers, likelihood, metrics) for the
commands; a library user calls them too, but nothing in the library imports this package.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import config as C
from .. import data as D
from .. import likelihood as L
from .._tensor import check_choice
from ..images import save_samples
from ..runs import CONFIG_FILE, Run
from ..score import clip_denoised
from ..train import Trainer

# --------------------------------------------------------------------------- training


def build_trainer(cfg: C.Config, model: torch.nn.Module, loss: Callable[..., Tensor], data: Any, out: Path, *,
                  resume: bool | str = False, progress: bool = True, device: torch.device | None = None,
                  config: dict | None = None, **overrides: Any) -> Trainer:
    """The :class:`~scoresde.train.Trainer` of ``cfg.training`` (every optimisation, EMA, logging and
    checkpoint setting of the section) for ``model`` and ``loss`` on ``data``, writing into ``out``;
    ``overrides`` replace single Trainer arguments (e.g. ``ckpt_every``)."""
    t = cfg.training
    kwargs: dict[str, Any] = dict(
        batch_size=t.batch_size, lr=t.lr, warmup_steps=t.warmup, lr_schedule=t.lr_schedule,
        decay_steps=t.steps if t.lr_schedule != "constant" else None, grad_clip=t.grad_clip, ema_decay=t.ema_decay,
        ema_warmup=t.ema_warmup, weight_decay=t.weight_decay, seed=t.seed, out_dir=out, log_every=t.log_every,
        ckpt_every=t.checkpoint_every, keep_last=t.keep, resume=resume, progress=progress,
        config=cfg.to_dict() if config is None else config, device=device, grad_accum=t.grad_accum, amp=t.amp,
        compile=t.compile, channels_last=t.channels_last)
    return Trainer(model, loss, data, **{**kwargs, **overrides})


#: ``train_run``'s ``resume``: a new run, continue one (its newest valid checkpoint, else an
#: error listing what was found), or continue one when it can and start it otherwise.
RESUME_MODES = {False: "new", True: "resume", "auto": "resume-or-start"}


def train_run(cfg: C.Config, out: Path, resume: bool | str = False, progress: bool = True,
              device: torch.device | None = None) -> Path:
    """Train ``cfg`` into the run folder ``out``: ``config.yaml``, the checkpoints
    ``ckpt_<step>.*`` and the logs ``log.jsonl`` / ``log.csv`` of :class:`scoresde.train.Trainer`
    (``samples/`` with ``training.sample_every``, ``eval_loss`` records with ``training.eval_every``,
    and ``fid`` / ``bpd`` records of :func:`training_monitor` when ``evaluation.inception`` and
    ``evaluation.fid_ref`` are set too).

    ``resume``: ``False`` starts a new run (``out`` must not hold one); ``True`` continues the run
    in ``out`` from its newest valid checkpoint (:func:`scoresde.checkpoint.resume_point`; none
    valid is an error listing what was found); ``"auto"`` continues when there is a valid
    checkpoint and starts from step 0 otherwise (``scoresde run``, ``train --resume-or-start``).

    Everything that can be checked is checked before anything is written: the folder, the
    config against ``out/config.yaml``, the SDE, network and loss, the training data (present,
    at least one global batch), one loss evaluation of the network on two training items, the
    metric names. The folder is then locked (:func:`scoresde.checkpoint.lock_directory`) for the
    whole training, so a second trainer on it is refused; ``config.yaml`` is written atomically,
    once (rewritten only when a resume changes the steps, sampling or evaluation). A start that
    fails before its first checkpoint removes every file it created (and the folders, if it made
    them), so the corrected command runs as if the failed one never had.

    Under ``torchrun`` each process reads its rank's slice of every global batch.
    """
    import torch.distributed as dist

    from .. import checkpoint
    from ..runs import read_config
    from ..train import init_distributed

    if resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {', '.join(map(repr, RESUME_MODES))}, got {resume!r}")
    rank, world, device = init_distributed(device)
    out = Path(out)
    prepared = _prepare_training(cfg, out, resume, world)
    if world > 1:
        dist.barrier()  # every rank has checked the folder before rank 0 writes into it
    if rank != 0:
        if world > 1:
            dist.barrier()
        _fit(cfg, out, prepared, resume, rank, world, progress, device)
        return out
    def wrote_checkpoint(before: set[Path]) -> bool:
        return not all(sidecar in before for _, sidecar in checkpoint.list_checkpoints(out))

    try:
        with _undone_on_failure(out, keep=wrote_checkpoint):  # no checkpoint written: leave no trace
            if (out / CONFIG_FILE).is_file() != prepared["holds"]:
                raise ValueError(f"{out} changed while this start was checked (another process?); try again")
            checkpoint.clean_litter(out)  # e.g. the temporary config.yaml of a start killed while writing it
            if not (out / CONFIG_FILE).is_file() or read_config(out) != cfg:
                C.save_config(cfg, out / CONFIG_FILE)
            if world > 1:
                dist.barrier()
            _fit(cfg, out, prepared, resume, rank, world, progress, device)
    except checkpoint.NoCheckpointError as err:
        raise checkpoint.NoCheckpointError(f"{err}; --resume-or-start starts the run again from step 0") from err
    return out


def _prepare_training(cfg: C.Config, out: Path, resume: bool | str, world: int) -> dict[str, Any]:
    """Every check of :func:`train_run` that needs no write; returns the built pieces."""
    from ..runs import read_config

    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a run folder")
    holds = (out / CONFIG_FILE).is_file()
    if holds and resume is False:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if not holds and resume is True:
        found = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        raise FileNotFoundError(f"{out} holds no run to resume (no {CONFIG_FILE}; found: "
                                f"{', '.join(found[:5]) or 'nothing'}); drop --resume to start one")
    if holds and not same_run(read_config(out), cfg):
        raise ValueError(f"{out} holds a run of another configuration; choose another --out")
    if holds and resume is not False:
        _check_newest_sidecar(out, cfg)
    for name in cfg.evaluation.metrics:
        check_choice(name, METRICS, "evaluation.metrics entry")
    torch.manual_seed(cfg.training.seed)  # network initialisation
    sde = C.build_sde(cfg)
    model, loss = C.build_model(cfg), C.build_loss(cfg, sde)
    if cfg.training.label_dropout > 0:
        loss = with_label_dropout(loss, model, cfg.training.label_dropout)
    dataset = C.build_dataset(cfg, "train")
    global_batch = cfg.training.batch_size * world
    if global_batch > len(dataset):
        raise ValueError(f"training.batch_size {cfg.training.batch_size}" + (f" x {world} ranks" if world > 1 else "")
                         + f" is larger than the training data ({len(dataset)} items)")
    _try_loss(model, loss, dataset)
    return {"holds": holds, "sde": sde, "model": model, "loss": loss, "dataset": dataset}


def _check_newest_sidecar(out: Path, cfg: C.Config) -> None:
    """The newest checkpoint's recorded config (its sidecar only: no tensor is read) must have the
    SDE, model and loss of ``cfg``: a hand-edited ``config.yaml`` must not silently continue
    weights trained for another SDE (:func:`scoresde.runs.check_trained_with`)."""
    import json

    from .. import checkpoint
    from ..runs import check_trained_with

    found = checkpoint.list_checkpoints(out)
    if not found:
        return
    step, sidecar = found[-1]
    try:
        meta = json.loads(sidecar.read_text())["meta"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # a corrupt sidecar: the resume quarantines it and tries the previous one
    check_trained_with(checkpoint.Checkpoint(step, {}, meta, sidecar), cfg, out / CONFIG_FILE)


def _try_loss(model: torch.nn.Module, loss: Callable[..., Tensor], dataset: D.ArrayDataset) -> None:
    """One loss evaluation on two training items, so a network that does not fit the data
    (``model.dim``, channels, image size, classes) fails before the run folder is touched."""
    conditional = getattr(model, "config", {}).get("num_classes") is not None
    labels = dataset.labels[:2] if conditional and dataset.labels is not None else None
    training = model.training
    model.eval()  # no dropout draw, no running statistic touched: the dry run leaves the network as built
    try:
        with torch.no_grad():
            value = loss(model, dataset.x[:2], labels=labels, generator=torch.Generator().manual_seed(0))
    except (RuntimeError, IndexError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"the network does not fit the data of shape {tuple(dataset.sample_shape)}: {first}") from err
    finally:
        model.train(training)
    if value.ndim != 0:
        raise ValueError(f"the loss must return a scalar, got shape {tuple(value.shape)}")


def _fit(cfg: C.Config, out: Path, prepared: dict[str, Any], resume: bool | str, rank: int, world: int,
         progress: bool, device: torch.device) -> None:
    """Build the Trainer of a checked start (:func:`_prepare_training`) and train to ``training.steps``."""
    from ..train import sample_grid_fn

    t = cfg.training
    batches = C.build_batches(cfg, prepared["dataset"], rank=rank, world_size=world)
    extras: dict[str, Any] = {}
    model, loss, sde = prepared["model"], prepared["loss"], prepared["sde"]
    if t.sample_every is not None:
        s = cfg.sampling
        n = min(s.n, 256)
        classes = getattr(model, "config", {}).get("num_classes")
        labels = torch.arange(n) % classes if classes else None
        extras.update(sample_every=t.sample_every, sample_fn=sample_grid_fn(
            sde, (n, *prepared["dataset"].sample_shape), parameterization=loss.parameterization, labels=labels,
            method=s.method, steps=s.steps, seed=t.seed, denoise=s.denoise, **s.options))
    if t.eval_every is not None:
        held_out = C.build_dataset(cfg, cfg.evaluation.split)
        eval_data = held_out.x[:1000] if held_out.labels is None else (held_out.x[:1000], held_out.labels[:1000])
        extras.update(eval_every=t.eval_every, eval_data=eval_data)
        ev = cfg.evaluation
        if rank == 0 and ev.inception is not None and ev.fid_ref is not None:  # FID (and bits/dim) while training
            extras["eval_fn"] = training_monitor(cfg, sde, loss.parameterization, tuple(prepared["dataset"].sample_shape),
                                                 device)
    trainer = build_trainer(cfg, model, loss, batches, out, resume=resume, progress=progress, device=device,
                            **extras)
    trainer.fit(t.steps)


@contextmanager
def _undone_on_failure(out: Path, keep: Callable[[set[Path]], bool] = lambda before: False) -> Iterator[None]:
    """Create ``out`` (and its missing parents) and hold its lock
    (:func:`scoresde.checkpoint.lock_directory`, one writer per folder) for the block; if the
    block raises, remove what it added to ``out`` and the folders it made (:func:`_remove_new`),
    unless ``keep(files before the block)`` says the partial result is worth keeping."""
    from ..checkpoint import lock_directory

    made = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)  # the topmost new folder
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    try:
        with lock_directory(out):
            yield
    except Exception:
        if not keep(before):
            _remove_new(out, before, made)
        raise


def _remove_new(out: Path, before: set[Path], made: Path | None) -> None:
    """Remove what a failed start added to ``out``, and the folders it made (``made``: the topmost).
    Quarantined checkpoints (``*.corrupt``) stay: they are old files renamed, not new ones."""
    import shutil

    from ..checkpoint import CORRUPT_SUFFIX

    for path in set(out.iterdir()) - before if out.is_dir() else ():
        if path.name.endswith(CORRUPT_SUFFIX):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


def with_label_dropout(loss: Callable[..., Tensor], model: torch.nn.Module, p: float) -> Callable[..., Tensor]:
    """``loss`` trained on the model's null label with probability ``p`` (classifier-free guidance)."""
    from .. import LabelDropout

    null = getattr(model, "null_label", None)
    if null is None:
        raise ValueError("training.label_dropout > 0 needs a class-conditional model with a null label "
                         "(set model.num_classes and model.null_class=true)")
    return LabelDropout(loss, null, p)


def same_run(a: C.Config, b: C.Config) -> bool:
    """Whether ``b`` continues the training of ``a``: the same data, SDE, model, loss and
    training section up to ``training.steps`` and the speed options (``amp``, ``compile``,
    ``channels_last``: each resumes the others' checkpoints); sampling and evaluation may change."""
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        for key in ("steps", "amp", "compile", "channels_last"):
            d["training"].pop(key, None)
    return all(da[k] == db[k] for k in ("data", "sde", "model", "loss", "training"))


def plot_loss(run_dir: Path, path: Path) -> None:
    """Plot the training loss of ``run_dir/log.jsonl`` (one point per log period) into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._io import atomic_write

    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over log period)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def classifier_for(cfg: C.Config, num_classes: int, **options: Any) -> torch.nn.Module:
    """A noise-conditional classifier matching the run's data: the encoder of the run's U-Net preset
    (images) or a residual MLP (vectors); ``options`` override the network's keyword arguments."""
    from ..nets import MLPClassifier, UNetClassifier, unet_options

    shape = C.build_dataset(cfg, "test").sample_shape
    if len(shape) == 1:
        return MLPClassifier(shape[0], num_classes, **options)
    base = unet_options(cfg.model.name, cfg.model.options)
    base = {k: v for k, v in base.items() if k not in ("progressive", "num_classes", "null_class")}
    return UNetClassifier(num_classes, **{**base, **options})


ACCURACY_TIMES = (0.01, 0.1, 0.25, 0.5, 0.75, 1.0)


def train_classifier(cfg: C.Config, out: Path, steps: int, *, progress: bool = True,
                     device: torch.device | None = None, **network: Any) -> dict[float, float]:
    """Train ``p_t(y | x_t)`` on the run's data and SDE with
    :class:`~scoresde.losses.NoisyClassifierLoss` and the run's training section; writes
    ``config.yaml``, ``classifier.json`` and checkpoints to ``out``. Returns the test accuracy at
    :data:`ACCURACY_TIMES` (also in ``accuracy.json``). A run that fails removes what it added to
    ``out`` (and the folders it made), so the corrected command starts afresh."""
    from .. import NoisyClassifierLoss
    from .._io import write_json
    from ..metrics import classifier_accuracy
    from ..runs import CLASSIFIER_FILE

    train = C.build_dataset(cfg, "train")
    if train.num_classes is None:
        raise ValueError("the data have no labels: a classifier needs a labelled dataset")
    torch.manual_seed(cfg.training.seed)
    model = classifier_for(cfg, train.num_classes, **network)
    sde = C.build_sde(cfg)
    with _undone_on_failure(out):  # its one checkpoint is the last: a failed run leaves no trace
        C.save_config(cfg, out / CONFIG_FILE)
        write_json(out / CLASSIFIER_FILE, {"kind": type(model).__name__, "config": model.config})
        trainer = build_trainer(cfg, model, NoisyClassifierLoss(sde), train, out, progress=progress,
                                device=device, ckpt_every=steps, keep_last=1)
        trainer.fit(steps)
    test = C.build_dataset(cfg, "test")
    x, labels = test.x.to(trainer.device), test.labels.to(trainer.device)
    acc = classifier_accuracy(trainer.ema_model.eval(), sde, x, labels, list(ACCURACY_TIMES),
                              torch.Generator().manual_seed(cfg.training.seed))
    write_json(out / "accuracy.json", {"steps": steps, "accuracy": acc})
    return acc


# --------------------------------------------------------------------------- sampling


def run_sampler(run: Run, *, method: str | None = None, steps: int | None = None, nfe: int | None = None,
                clip: bool | None = None, **options: Any) -> tuple[Callable[[Tensor, Tensor], Tensor], dict[str, Any]]:
    """The score function and :func:`scoresde.sample` keywords (``method``, ``steps``, ``denoise``,
    the method's options, ``schedule``) of a run's sampling config, overridden by the arguments
    (``steps`` or an ``nfe`` budget, ``clip`` for :func:`~scoresde.score.clip_denoised`)."""
    from ..sampling import steps_for_nfe

    s = run.config.sampling
    clip = s.clip_denoised if clip is None else clip
    data_range = D.data_range(run.config.data.centered)
    score_fn = clip_denoised(run.score_fn, run.sde, data_range) if clip else run.score_fn
    method = method or s.method
    opts = {**(s.options if method == s.method else {}), **options}  # the config's options fit its method
    if nfe is not None:
        steps = steps_for_nfe(method, nfe, denoise=s.denoise, **opts)
    steps = steps if steps is not None else s.steps
    return score_fn, {"method": method, "steps": steps, "denoise": s.denoise, **opts}


def sample_run(run: Run, n: int, *, seed: int = 0, progress: bool = True, **sampler: Any) -> tuple[Tensor, Any]:
    """Draw ``n`` samples from a run with one generator seeded ``seed``; ``sampler``: the
    overrides of :func:`run_sampler` (``method``, ``steps``, ``nfe``, ``clip``, method options).
    A run trained on dequantized data has its samples mapped back to the data's levels
    (:func:`sample_levels`)."""
    from ..sampling import sample

    score_fn, kwargs = run_sampler(run, **sampler)
    generator = torch.Generator(device=run.device).manual_seed(seed)
    x, info = sample(score_fn, run.sde, (n,) + run.sample_shape, generator=generator, progress=progress,
                     device=run.device, batch_size=run.config.sampling.batch_size, **kwargs)
    to_levels = sample_levels(run)
    return (x if to_levels is None else to_levels(x)), info


def sample_levels(run: Run) -> Callable[[Tensor], Tensor] | None:
    """For a run trained on dequantized data (``data.dequantize``): the map of its samples back to
    the data's levels (:func:`scoresde.data.quantize`); None otherwise."""
    if not run.config.data.dequantize:
        return None
    cells = C.training_dequantization(run.config, C.build_dataset(run.config, "train"))
    return None if cells is None else (lambda x: D.quantize(x, *cells))


def generate_run(run: Run, seeds: Iterable[int], outdir: Path, *, batch: int = 100, fmt: str = "png",
                 progress: bool = True, **sampler: Any) -> Any:
    """One sample per seed into ``outdir`` (:func:`scoresde.generate.generate`: per-seed generators,
    resumable, the settings and the checkpoint step recorded); ``sampler`` as in :func:`run_sampler`.
    Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` in the environment) each process draws its shard."""
    import os

    from ..generate import generate

    score_fn, kwargs = run_sampler(run, **sampler)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return generate(score_fn, run.sde, run.sample_shape, seeds, outdir, batch=batch, fmt=fmt, rank=rank,
                    world_size=world, data_range=D.data_range(run.config.data.centered), device=run.device,
                    progress=progress, transform=sample_levels(run),
                    settings={"run": str(run.directory.resolve()), "checkpoint_step": run.step,
                              "clip_denoised": score_fn is not run.score_fn}, **kwargs)


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

    cfg = run.config
    if prior_reference > 0:
        likelihood_options["prior_reference"] = C.build_dataset(cfg, "train").x[:prior_reference].to(run.device)
    ds = C.build_dataset(cfg, split)
    n = len(ds) if limit is None else min(limit, len(ds))
    batches = [ds.x[k: min(k + batch, n)].to(run.device) for k in range(0, n, batch)]
    generator = torch.Generator(device=run.device).manual_seed(seed)
    eps = likelihood_options.pop("eps", None) or L.likelihood_eps(run.sde)  # recorded: the resume file and the result
    options = {"divergence": divergence, "rtol": rtol, "atol": atol, "eps": eps, **likelihood_options}
    levels = cfg.data.quantisation_levels(ds)
    if levels:
        res = L.evaluate_bpd(run.score_fn, run.sde, batches, levels=levels, data_range=D.data_range(cfg.data.centered),
                             generator=generator, resume_path=results, progress=progress, **options)
        values, nfe, unit, error_max = res.values, res.nfe, "bits/dim", res.error_max
    else:
        values, nfe, unit, error_max = [], 0, "nats/dim", None
        for x in tqdm(batches, desc=f"likelihood ({split})", unit="batch", disable=not progress):
            logp, info = L.log_likelihood(run.score_fn, run.sde, x, generator=generator, **options)
            values += (-logp / x[0].numel()).tolist()
            nfe += info.nfe
            if info.error_estimate is not None:  # the worst sample's error indicator, nats/dim
                error_max = max(error_max or 0.0, float(info.error_estimate.max()) / x[0].numel())
    vals = np.asarray(values)
    return {"unit": unit, "levels": levels, "eps": eps, "error_max": error_max, "mean": float(vals.mean()),
            "stderr": float(vals.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
            "n": n, "nfe_per_batch": nfe / len(batches)}


# --------------------------------------------------------------------------- evaluation

SAMPLE_METRICS = ("fd-digits", "pixel-fd", "sliced-w2", "mmd")
INCEPTION_METRICS = ("fid", "is")
METRICS = ("bpd", "nll") + SAMPLE_METRICS + INCEPTION_METRICS


def sample_metrics(samples: Tensor, reference: Tensor, names: Iterable[str], seed: int = 0) -> dict[str, float]:
    """The sample-quality metrics ``names`` of ``samples`` against ``reference``."""
    from .. import metrics as M

    table: dict[str, Callable[[], float]] = {
        "fd-digits": lambda: M.fd_digits(samples, reference),
        "pixel-fd": lambda: M.pixel_frechet(samples, reference),
        "sliced-w2": lambda: M.sliced_wasserstein(samples, reference, generator=torch.Generator().manual_seed(seed)),
        "mmd": lambda: M.mmd2(samples, reference),
    }
    return {name: table[name]() for name in names}


def inception_metrics(run: Run, names: Sequence[str], out: Path, *, ref: str | Path | None = None,
                      inception: str | Path | None = None, samples: str | Path | None = None, n: int | None = None,
                      batch: int | None = None, progress: bool = True, **sampler: Any) -> dict[str, Any]:
    """FID against reference statistics ``ref`` and/or the Inception Score (10 splits) of ``n``
    samples: the first ``n`` images in ``samples`` (a folder of PNGs or npz shards; default all of
    them), else seeds ``0 .. n-1`` (default ``evaluation.fid_samples``) generated into
    ``out/fid_samples_step<k>`` (resumable; ``sampler`` as in :func:`run_sampler`). Reports the
    count and the network's name and SHA-256."""
    from .. import metrics as M

    ev = run.config.evaluation
    inception = inception or ev.inception
    if inception is None:
        raise ValueError("fid / is need an Inception network: --inception PATH (NVIDIA's inception-2015-12-05.pt), "
                         "--inception fid-helper (pip install 'scoresde[fid]') or evaluation.inception")
    ref = ref or ev.fid_ref
    if "fid" in names and ref is None:
        raise ValueError("fid needs reference statistics: --ref REF.npz, made by `scoresde fid-stats DATA --out REF.npz` "
                         "(or evaluation.fid_ref)")
    reference = M.InceptionStats.load(ref) if "fid" in names else None  # a bad file fails before sampling
    net = M.load_inception(inception, run.device)
    batch = batch or ev.fid_batch
    result: dict[str, Any] = {}
    if samples is None:
        n = n or ev.fid_samples
        samples = out / f"fid_samples_step{run.step}"
        t0 = time.perf_counter()
        gen = generate_run(run, range(n), Path(samples), batch=batch, progress=progress, **sampler)
        result["generation"] = {"written": gen.written, "reused": gen.skipped, "nfe": gen.nfe,
                                "seconds": round(time.perf_counter() - t0, 2)}
    source = D.image_source(samples, data_range=D.data_range(run.config.data.centered))
    n = n or source.count
    if source.count < n:
        raise ValueError(f"{samples}: {source.count} images, fewer than the {n} asked for")
    stats, probs = M.inception_stats(net, source.batches(batch, limit=n), probabilities="is" in names,
                                     total=n, progress=progress)
    result.update({"n": stats.n, "samples": str(samples), "inception": net.identity})
    if reference is not None:
        result["fid"] = stats.fid(reference)
        result["ref"] = {"path": str(ref), "n": reference.n, "network": reference.network}
    if "is" in names:
        result["is"], result["is_std"] = M.inception_score_of(probs, 10)
    return result


def training_monitor(cfg: C.Config, sde: Any, parameterization: str, sample_shape: tuple[int, ...],
                     device: torch.device) -> Any:
    """The :class:`~scoresde.monitor.TrainingMonitor` of a config for the Trainer's evaluation period
    (``training.eval_every``): FID of ``evaluation.fid_samples`` samples of the sampling section when
    ``evaluation.inception`` and ``evaluation.fid_ref`` are set, and bits/dim (nats/dim for
    continuous data) of the first ``evaluation.likelihood_batch`` items of ``evaluation.split``."""
    from .. import metrics as M
    from ..monitor import TrainingMonitor

    ev, s = cfg.evaluation, cfg.sampling
    held_out = C.build_dataset(cfg, ev.split)
    fid = ev.inception is not None and ev.fid_ref is not None
    return TrainingMonitor(
        sde, parameterization, sample_shape, n=ev.fid_samples, batch=ev.fid_batch,
        inception=M.load_inception(ev.inception, device) if fid else None,
        reference=M.InceptionStats.load(ev.fid_ref) if fid else None,
        held_out=held_out.x[: ev.likelihood_batch], levels=cfg.data.quantisation_levels(held_out),
        data_range=D.data_range(cfg.data.centered), seed=cfg.training.seed,
        sample_options={"method": s.method, "steps": s.steps, "denoise": s.denoise, **s.options},
        likelihood_options={"divergence": ev.divergence, "rtol": ev.rtol, "atol": ev.atol})


def evaluate_run(run: Run, metrics: Sequence[str], out: Path, *, method: str | None = None,
                 steps: int | None = None, nfe: int | None = None, seed: int = 0, clip: bool | None = None,
                 progress: bool = True, inception_options: dict | None = None, **options: Any) -> dict[str, Any]:
    """Measure ``metrics`` of a run; writes ``out/samples.png`` (+ ``.npz``) when sampling and
    ``out/likelihood_<split>_step<n>.json`` (partial results of checkpoint ``n``); returns the
    figures. ``inception_options`` go to :func:`inception_metrics` (``ref``, ``inception``,
    ``samples``, ``n``, ``batch``); ``options``: the sampler method's options."""
    ev = run.config.evaluation
    for name in metrics:
        check_choice(name, METRICS, "metric")
    result: dict[str, Any] = {"step": run.step}
    sampler = {"method": method, "steps": steps, "nfe": nfe, "clip": clip, **options}
    wanted_inception = [m for m in metrics if m in INCEPTION_METRICS]
    if wanted_inception:
        result["inception_metrics"] = inception_metrics(run, wanted_inception, out, progress=progress,
                                                        **(inception_options or {}), **sampler)
    wanted = [m for m in metrics if m in SAMPLE_METRICS]
    if wanted:
        t0 = time.perf_counter()
        x, info = sample_run(run, ev.n_samples, seed=seed, progress=progress, **sampler)
        result["sampling"] = {"method": info.method, "nfe": info.nfe, "n": ev.n_samples,
                              "clip_denoised": run.config.sampling.clip_denoised if clip is None else clip,
                              "seconds": round(time.perf_counter() - t0, 2)}
        save_samples(x[:100], out / "samples.png", D.data_range(run.config.data.centered))
        reference = C.build_dataset(run.config, ev.split).x
        result.update(sample_metrics(x.cpu(), reference, wanted, seed))
    if {"bpd", "nll"} & set(metrics):
        t0 = time.perf_counter()
        partial = out / f"likelihood_{ev.split}_step{run.step}.json"
        lik = likelihood_over_split(run, ev.split, ev.likelihood_n, ev.likelihood_batch, partial,
                                    divergence=ev.divergence, solver=ev.solver, eps=ev.likelihood_eps, rtol=ev.rtol, atol=ev.atol,
                                    seed=seed, prior_reference=ev.prior_reference, progress=progress)
        result["likelihood"] = {**lik, "divergence": ev.divergence, "solver": ev.solver,
                                "seconds": round(time.perf_counter() - t0, 2)}
    return result
