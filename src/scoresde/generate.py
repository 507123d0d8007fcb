"""Generation by seed (the EDM convention): image ``k`` comes from seed ``k`` alone.

Sample ``k``'s prior draw ``x_T`` and every noise draw of a stochastic sampler come from its own
``torch.Generator`` seeded with ``k`` (:func:`seed_generators`, passed to
:func:`scoresde.sample` as a list), so sample ``k`` is the same whatever the batch it is drawn in
and wherever a run was interrupted and resumed. Methods that couple the rows of a batch (the
Langevin / MALA / HMC correctors' step sizes use batch-mean norms, the adaptive ``ode`` shares one
step sequence) cannot promise that and are refused (:func:`couples_batch`) unless ``batch=1``.

Outputs (:func:`generate`): one PNG per seed, ``DIR/000000/000123.png`` (sub-folders of 1000
seeds, as EDM's ``generate.py``), or ``.npz`` shards ``DIR/seeds_<first>-<last>.npz`` holding
``seeds`` and the raw float samples ``x`` (any data shape). Seeds already on disk are skipped, so
an interrupted run resumes where it stopped; every file is written atomically. ``settings.json``
records the sampler and its options (and what the caller adds, e.g. the checkpoint step): a folder
holding samples of other settings is refused rather than mixed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._io import write_json
from .images import save_npz, to_uint8, write_png
from .sampling import ALIASES, METHODS, sample
from .sampling.ode import ode_adaptive

FORMATS = ("png", "npz")
SETTINGS_FILE = "settings.json"
_COUPLING_CORRECTORS = ("langevin", "mala", "hmc")
_SHARD = re.compile(r"seeds_(\d+)-(\d+)\.npz")


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``"0-49999"``, ``"1,5,9"`` or a mix ``"0-9,20,30-39"`` (inclusive ranges; order
    kept, duplicates dropped)."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise ValueError(f"seeds must look like 0-49999 or 1,5,9 (non-negative integers), got {text!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"seed range {part!r} runs backwards")
        seeds.extend(range(lo, hi + 1))
    return list(dict.fromkeys(seeds))


def seed_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per seed, on ``device`` (draws on CUDA and CPU differ; a seed's
    image is reproducible per device type)."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def couples_batch(method: str, options: dict) -> str | None:
    """Why ``method`` with ``options`` makes a sample depend on the rest of its batch, or None
    (also for a name that is no method: :func:`scoresde.sample` refuses it with the choices)."""
    spec = METHODS.get(ALIASES.get(method, method))
    if spec is None:
        return None
    if spec.fn is ode_adaptive:
        return "the adaptive ODE solver takes one step sequence for the whole batch"
    corrector = options.get("corrector", spec.options.get("corrector"))
    if corrector in _COUPLING_CORRECTORS:
        return f"the {corrector} corrector's step size uses norms averaged over the batch"
    return None


def png_path(outdir: str | Path, seed: int) -> Path:
    """``outdir/<seed - seed % 1000>/<seed>.png`` with six-digit names (EDM's layout)."""
    return Path(outdir) / f"{seed - seed % 1000:06d}" / f"{seed:06d}.png"


def seeds_on_disk(outdir: str | Path, fmt: str) -> set[int]:
    """Seeds already written to ``outdir`` in format ``fmt``."""
    root = Path(outdir)
    if not root.is_dir():
        return set()
    if fmt == "png":
        return {int(p.stem) for p in root.glob("[0-9]*/[0-9]*.png") if p.stem.isdigit()}
    done: set[int] = set()
    for shard in root.glob("seeds_*.npz"):
        if _SHARD.fullmatch(shard.name):
            with np.load(shard, allow_pickle=False) as arc:
                done.update(int(s) for s in arc["seeds"])
    return done


def write_batch(outdir: str | Path, seeds: Sequence[int], x: Tensor, fmt: str,
                data_range: tuple[float, float] = (-1.0, 1.0)) -> None:
    """Write the samples ``x`` of ``seeds``: one PNG each (rounded to uint8 by
    :func:`scoresde.images.to_uint8`, as every saved image) or one ``.npz`` shard."""
    if fmt == "npz":
        save_npz(Path(outdir) / f"seeds_{seeds[0]:06d}-{seeds[-1]:06d}.npz", seeds=np.asarray(seeds), x=x)
        return
    images = to_uint8(x.cpu(), data_range).permute(0, 2, 3, 1).numpy()
    for seed, img in zip(seeds, images):
        path = png_path(outdir, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(img, path)


def check_settings(outdir: str | Path, settings: dict) -> None:
    """Record ``settings`` in ``outdir/settings.json``, or check that the file there holds the same."""
    path = Path(outdir) / SETTINGS_FILE
    settings = json.loads(json.dumps(settings, default=str))
    if path.is_file():
        found = json.loads(path.read_text())
        if found != settings:
            diff = sorted(k for k in set(found) | set(settings) if found.get(k) != settings.get(k))
            raise ValueError(f"{outdir} holds samples of other settings ({', '.join(diff)}: "
                             f"{[found.get(k) for k in diff]} there, {[settings.get(k) for k in diff]} now); "
                             "choose another folder")
        return
    Path(outdir).mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


@dataclass
class GenerateResult:
    """What :func:`generate` did: seeds written now, seeds skipped (already there), NFE per sample."""

    written: int
    skipped: int
    nfe: int


def _batches(seeds: Sequence[int], size: int) -> Iterator[list[int]]:
    for k in range(0, len(seeds), size):
        yield list(seeds[k : k + size])


def generate(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde,
    sample_shape: tuple[int, ...],
    seeds: Iterable[int],
    outdir: str | Path,
    *,
    batch: int = 100,
    fmt: str = "png",
    data_range: tuple[float, float] = (-1.0, 1.0),
    method: str = "dpm-solver++",
    device: torch.device | str = "cpu",
    progress: bool = True,
    settings: dict | None = None,
    rank: int = 0,
    world_size: int = 1,
    transform: Callable[[Tensor], Tensor] | None = None,
    **sample_options,
) -> GenerateResult:
    """Draw one sample per seed with :func:`scoresde.sample` (per-seed generators) and write it to
    ``outdir`` (see the module docstring), ``batch`` seeds per call, skipping seeds on disk.

    ``sample_options`` go to :func:`scoresde.sample` (``steps``, ``schedule``, ``denoise``,
    method options such as ``eta``, ``order``, ``snr``, ``churn``, ``rtol``); ``settings``: more
    JSON-safe facts recorded with them (:func:`check_settings`).

    ``rank`` / ``world_size`` shard the work over processes (e.g. ``RANK`` / ``WORLD_SIZE`` of
    ``torchrun``, one GPU each): the seeds are cut into groups of ``batch`` and group ``i`` is rank
    ``i % world_size``'s, from the seed list alone, so ranks need no communication, every shard
    file holds one group's seeds, and a sharded run resumes under any number of ranks.
    ``transform``: applied to each batch of samples before it is written (e.g.
    :func:`scoresde.data.quantize` for a model trained on dequantized data).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if fmt == "png" and (len(sample_shape) != 3 or sample_shape[0] not in (1, 3)):
        raise ValueError(f"PNG output needs images (C, H, W) with 1 or 3 channels, got {tuple(sample_shape)}; "
                         "use the npz format")
    reason = couples_batch(method, sample_options) if batch > 1 else None
    if reason is not None:
        raise ValueError(f"method {method!r} cannot give per-seed samples in batches ({reason}); use batch 1")
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    check_settings(outdir, {"method": method, "format": fmt, "shape": list(sample_shape), **sample_options,
                            **(settings or {})})
    done = seeds_on_disk(outdir, fmt)
    if world_size > 1:
        seeds = [s for i, group in enumerate(_batches(seeds, batch)) if i % world_size == rank for s in group]
    todo = [s for s in seeds if s not in done]
    nfe = 0
    with tqdm(total=len(todo), disable=not progress, desc="generate", unit="img") as bar:
        for group in _batches(todo, batch):
            x, info = sample(score_fn, sde, (len(group),) + tuple(sample_shape), method=method,
                             generator=seed_generators(group, device), device=device, **sample_options)
            write_batch(outdir, group, x if transform is None else transform(x), fmt, data_range)
            nfe = info.nfe
            bar.update(len(group))
    return GenerateResult(written=len(todo), skipped=len(seeds) - len(todo), nfe=nfe)

