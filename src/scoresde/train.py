"""The training engine: AdamW with warm-up, clipping, EMA, AMP, resumable checkpoints, DDP.

One step minimises a loss ``loss(model, x0, labels=None, generator=None) -> scalar``
(``scoresde.losses``) averaged over ``grad_accum`` micro-batches:

    lr_n = lr * min(1, n / warmup_steps) * decay(n)   (decay: lr_schedule, 1 for "constant")
    g = clip(grad L(theta), grad_clip)            (global norm)
    theta <- AdamW(theta, g, lr_n)
    theta_ema <- d theta_ema + (1 - d) theta

Speed: the step reads the device once (loss and gradient norm together, for the
non-finite check that must come before the weights are touched); AdamW is the fused kernel where
every parameter is a float tensor on CPU or CUDA (on the 2-core CPU 3.3x / 4.2x less CPU time
than the for-loop Adam for the digits / CIFAR-10 DDPM++; see ``OPTIMIZER_IMPLS``), the gradient
norm and the EMA update are ``torch._foreach_*`` kernels. ``compile`` (``torch.compile`` of the
network, ``"auto"``: :func:`compile_pays`), ``amp`` (bf16 autocast, ``"auto"``: :func:`amp_pays`) and
``channels_last`` (NHWC, ``"auto"``: :func:`channels_last_pays`) are options; none changes what a
checkpoint holds, so each resumes the others' checkpoints. On CPU the trainer makes glibc keep
freed memory for reuse and flushes subnormal floats to zero (:func:`tune_cpu_process`, process-wide).

Reproducibility: every random draw of step ``n`` on rank ``r`` (the loss's noise and times,
label dropout inside the loss, dropout layers) comes from generators seeded by ``(seed, r, n)``, and the data
order is the state of a seeded :class:`scoresde.data.BatchIterator`; so a run resumed from a
checkpoint repeats the uninterrupted run exactly (CPU; on GPUs up to non-deterministic kernels).

Data parallel training runs under ``torchrun``: each process builds the same ``Trainer``;
``torch.distributed`` is initialised from the environment (gloo on CPU, nccl on GPU), the
model is wrapped in ``DistributedDataParallel`` (gradients averaged over ranks), every rank
reads its slice of each global batch, and rank 0 alone writes checkpoints, logs and samples.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import checkpoint
from ._io import write_json, write_text
from ._tensor import check_choice
from .data import ArrayDataset, BatchIterator
from .ema import EMA
from .images import save_png

AMP_MODES = ("auto", "bf16", "none")
COMPILE_MODES = (False, True, "auto")
CHANNELS_LAST_MODES = (False, True, "auto")
LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_decay(schedule: str, u: float) -> float:
    """The learning-rate factor at the fraction ``u`` (clamped to [0, 1]) of the decay phase:
    ``"cosine"`` ``(1 + cos(pi u)) / 2``, ``"linear"`` ``1 - u``, ``"constant"`` 1. Step ``n``
    (1-based) after a warm-up of ``w`` steps has ``u = (n - 1 - w) / (decay_steps - w)``, so the
    first decayed step runs at the full rate and the last of ``decay_steps`` just above 0."""
    u = min(max(u, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * u))
    if schedule == "linear":
        return 1 - u
    return 1.0


#: AdamW implementations: "auto" is "fused" where every parameter is a float tensor on CPU or CUDA
#: (one kernel per step; measured fastest on CPU), else torch's default.
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for-loop")
#: ``compile="auto"`` compiles a CUDA run with at least this many steps left on a cold cache.
#: A cold compile of a DDPM++ forward and backward took 246-391 s on a 2-core CPU (BENCHMARKS.md,
#: training throughput); at a ~10 % gain on a ~0.1 s GPU step it pays back after ~30 000 steps, so 50 000 leaves margin
#: for a slower compile. On CPU compiling never paid (0.77-1.08x, +30 % peak memory): auto is off.
AUTO_COMPILE_MIN_STEPS = 50_000
_EVAL_STREAM = 2**31  # random stream of the evaluation loss (training uses 0, 1, ...)
_CSV_FIELDS = ("step", "loss", "lr", "grad_norm", "steps_per_s", "eval_loss", "time")

Batch = tuple[Tensor, Tensor | None]


def init_distributed(device: str | torch.device | None = None) -> tuple[int, int, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns ``(rank, world_size, device)``. Without ``WORLD_SIZE > 1`` (and no group already
    initialised) this is ``(0, 1, device)``. The backend is nccl when the device is CUDA,
    gloo otherwise; the default device (and a bare ``"cuda"``) is ``cuda:LOCAL_RANK`` when CUDA
    is available.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for one random stream of step ``step`` on rank ``rank``."""
    state = np.random.SeedSequence([seed, rank, step, stream]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def sample_grid_fn(sde: Any, shape: tuple[int, ...], *, parameterization: str = "eps",
                   labels: Tensor | None = None, method: str = "dpm-solver++", steps: int = 20, seed: int = 0,
                   **options: Any) -> Callable[[nn.Module, int], Tensor]:
    """A ``sample_fn(model, step)`` for :class:`Trainer`'s periodic grids: ``scoresde.sample``
    of ``shape`` from the model's score (``score_fn_from_model(model, sde, parameterization)``,
    class ``labels`` passed to the model when given), always from the same seed so that grids
    of successive steps are comparable. ``options`` go to ``scoresde.sample``."""
    from .sampling import sample
    from .score import score_fn_from_model

    def sample_fn(model: nn.Module, step: int) -> Tensor:
        device = next(model.parameters()).device
        kwargs = {} if labels is None else {"labels": labels.to(device)}
        score_fn = score_fn_from_model(model, sde, parameterization, **kwargs)
        generator = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            x, _ = sample(score_fn, sde, shape, method=method, steps=steps, generator=generator, device=device,
                          **options)
        return x

    return sample_fn


def _compile_key(model: nn.Module, device: torch.device, autocast: torch.dtype | None,
                 memory_format: torch.memory_format) -> Path:
    """The marker file, inside inductor's cache directory, that a compilation of this network
    (class, parameter names and shapes), device type, autocast dtype and layout succeeded: while it
    exists, inductor's caches hold the compiled graphs and a compile costs seconds, not minutes."""
    import hashlib

    from torch._inductor.runtime.cache_dir_utils import cache_dir

    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    text = json.dumps([torch.__version__, type(model).__name__, shapes, device.type, str(autocast),
                       str(memory_format)])
    return Path(cache_dir()) / "scoresde" / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.json"


def compile_pays(device: torch.device, steps_left: int, warm: bool) -> bool:
    """``compile="auto"``'s rule: compile on CUDA when the cache is warm or at least
    :data:`AUTO_COMPILE_MIN_STEPS` steps remain; never on CPU (measured no gain)."""
    return device.type == "cuda" and (warm or steps_left >= AUTO_COMPILE_MIN_STEPS)


def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (AVX512-BF16 or AMX), where oneDNN runs
    bf16 convolutions faster than fp32 (measured 1.3-1.8x per training step, BENCHMARKS.md)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def is_convolutional(model: nn.Module) -> bool:
    """Whether ``model`` holds a 2-D convolution (an image network, not a vector MLP)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def amp_pays(device: torch.device, model: nn.Module) -> bool:
    """``amp="auto"``'s rule: bf16 autocast for convolutional networks on a CPU with native bf16,
    where it was measured faster with the same loss curve and results (digits DDPM++ main job:
    losses within 0.4 %, bits/dim and FD unchanged; BENCHMARKS.md); off on CUDA until
    ``benchmarks/gpu.py`` has compared the curves there, and off for vector (MLP) networks, whose
    few-dimensional inputs would lose precision to bf16's 8-bit mantissa."""
    return device.type == "cpu" and is_convolutional(model) and native_cpu_bf16()


def channels_last_pays(device: torch.device, autocast: torch.dtype | None, model: nn.Module) -> bool:
    """``channels_last="auto"``'s rule: NHWC for convolutional networks under bf16 autocast on CPU,
    where oneDNN runs bf16 convolutions in NHWC and otherwise clones every NCHW input and gradient
    to NHWC and back (the digits DDPM++ step at batch 128 5-6 % faster on 1 and 2 threads, with
    :class:`scoresde.nets.layers.GroupNorm`; the CIFAR-10 DDPM++ at batch 8 as fast; BENCHMARKS.md,
    issue 18); NCHW elsewhere until measured."""
    return device.type == "cpu" and autocast == torch.bfloat16 and is_convolutional(model)


#: glibc ``mallopt`` parameters (malloc.h): ``M_TRIM_THRESHOLD``, ``M_MMAP_THRESHOLD``.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_cpu_memory() -> bool:
    """Make glibc's allocator keep freed blocks for reuse (process-wide; False where it is not
    glibc): blocks up to 32 MiB (the largest ``M_MMAP_THRESHOLD``) come from the heap instead of
    fresh ``mmap`` pages, and up to 1 GiB of free heap is kept instead of returned to the system.
    A CPU training step allocates and frees the same activation buffers every step; by default
    each buffer above the dynamic mmap threshold is mapped and page-faulted anew (the digits
    DDPM++ step at batch 128: 10 % of its time; BENCHMARKS.md, issue 18). The peak memory is
    unchanged: only memory the step has already used is kept."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def tune_cpu_process() -> dict[str, bool]:
    """The process-wide CPU settings every CPU :class:`Trainer` makes (returns which took effect):
    :func:`keep_cpu_memory`, and ``torch.set_flush_denormal(True)``: subnormal floats (below
    1.2e-38 in float32) are read and written as zero instead of through the CPU's slow path.
    Training produces them (squared small gradients in Adam's second moment, the zero-initialised
    last layers): the CIFAR-10 DDPM++ step at batch 8 ran 1.25x faster with them flushed, its Adam
    step and gradient norm 3-4x (BENCHMARKS.md, issue 18). Only values below the smallest normal
    float change. The float mode is per thread, and OpenMP's worker threads copy it from the thread
    that creates them: called before the process's first parallel torch operation (the ``scoresde``
    command does) it reaches every thread; the trainer calls it too, for its own thread."""
    return {"keep_cpu_memory": keep_cpu_memory(), "flush_denormal": bool(torch.set_flush_denormal(True))}


def _adamw_options(impl: str, params: list[Tensor]) -> dict[str, bool]:
    """The ``torch.optim.AdamW`` keywords of an :data:`OPTIMIZER_IMPLS` entry."""
    if impl == "auto":
        ok = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        return {"fused": True} if ok and params else {}
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[impl]


def _as_dataset(data: Any) -> ArrayDataset | None:
    """``ArrayDataset`` from a tensor, an ``(x, labels)`` pair or a TensorDataset; else None."""
    if isinstance(data, ArrayDataset):
        return data
    if isinstance(data, Tensor):
        return ArrayDataset(data)
    tensors = getattr(data, "tensors", data)  # torch.utils.data.TensorDataset keeps .tensors
    if isinstance(tensors, (tuple, list)) and 1 <= len(tensors) <= 2 and all(isinstance(v, Tensor) for v in tensors):
        return ArrayDataset(*tensors)
    return None


def _split_batch(batch: Any) -> Batch:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError("each batch must be a tensor or an (x, labels) pair")


class _CsvJsonLog:
    """Appends records to ``log.jsonl`` and ``log.csv`` (and TensorBoard when installed)."""

    def __init__(self, out_dir: Path, after_step: int | None = None):
        self.jsonl, self.csv = out_dir / "log.jsonl", out_dir / "log.csv"
        if after_step is not None:
            self._truncate(after_step)
        if not self.csv.exists():
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerow(_CSV_FIELDS)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.tb = None
        else:
            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=after_step)

    def _truncate(self, step: int) -> None:
        """Drop the records after ``step`` (and a line torn by a kill): a resumed run writes them again."""
        def keep(line: str) -> bool:
            try:
                return int(json.loads(line)["step"]) <= step
            except (ValueError, KeyError, TypeError):
                return False

        if self.jsonl.is_file():
            lines = self.jsonl.read_text().splitlines()
            write_text(self.jsonl, "".join(line + "\n" for line in lines if keep(line)))
        if self.csv.is_file():
            head, *rows = self.csv.read_text().splitlines()
            kept = [r for r in rows if r.split(",")[0].isdigit() and int(r.split(",")[0]) <= step]
            write_text(self.csv, "".join(line + "\n" for line in [head, *kept]))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerow([record.get(k, "") for k in _CSV_FIELDS])
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])
            self.tb.flush()


class Trainer:
    """Train ``model`` on ``loss`` over ``data``; see the module docstring for the update.

    Args:
        model: ``model(x, t, labels=None)``; trained in place.
        loss: ``loss(model, x0, labels=None, generator=None) -> scalar tensor``.
        data: an :class:`~scoresde.data.ArrayDataset`, a tensor, an ``(x, labels)`` pair or a
            ``TensorDataset`` (the trainer then draws seeded, rank-sharded batches of
            ``batch_size`` per rank and resumes their order exactly); or any iterable of
            batches (tensor or ``(x, labels)``), whose order is restored on resume only if it
            has ``state_dict()`` / ``load_state_dict()``.
        batch_size: per-rank batch size for tensor-like ``data`` (global = batch_size * ranks).
        lr, betas, eps, weight_decay: AdamW. warmup_steps: linear warm-up length.
        lr_schedule, decay_steps: the decay after the warm-up (:func:`lr_decay`; ``"constant"``:
            none), reaching 0 at step ``decay_steps`` (a run's ``training.steps``; a run no
            longer than its warm-up has no decay phase).
        grad_clip: maximal global gradient norm (None: no clipping).
        ema_decay, ema_warmup: see :class:`~scoresde.ema.EMA`.
        grad_accum: micro-batches per optimizer step.
        class_conditional: pass labels to the loss (None: iff ``model.config["num_classes"]``).
            For classifier-free guidance wrap the loss in ``scoresde.LabelDropout(loss,
            model.null_label, p_uncond)``; it draws from the step's generator, so resumes stay exact.
        amp: "bf16" (bf16 autocast of the loss's forward pass), "none", or "auto"
            (:func:`amp_pays`: bf16 for convolutional networks on CPUs with native bf16, off on
            CUDA until ``benchmarks/gpu.py`` has compared the loss curves there).
        compile: ``torch.compile`` the network (True), not (False), or ``"auto"``
            (:func:`compile_pays`, decided when :meth:`fit` knows the steps left). A compilation
            that fails warns once and the step is redone eagerly.
        optimizer_impl: the AdamW kernel (:data:`OPTIMIZER_IMPLS`); results agree to rounding.
        channels_last: keep 4-D weights and image batches in NHWC memory layout (True), not
            (False), or ``"auto"`` (:func:`channels_last_pays`: under bf16 autocast on CPU); same
            results up to rounding. On CPU the trainer also calls :func:`tune_cpu_process`.
        out_dir: checkpoints, ``log.jsonl``, ``log.csv``, ``samples/``; None: nothing written.
        ckpt_every, keep_last: checkpoint period (and at the end of ``fit``) and how many to keep.
        log_every: period of log records (mean loss over the period, steps/s).
        eval_every, eval_data: period and data (tensor-like or finite iterable) of the EMA
            model's evaluation loss (fixed noise, so values are comparable over time).
        eval_fn: ``eval_fn(ema_model, step) -> dict`` of figures called at ``eval_every`` too
            (e.g. :class:`scoresde.monitor.TrainingMonitor`: FID, bits/dim); its items join the
            step's record. ``eval_every`` needs ``eval_data`` or ``eval_fn``. An evaluation step
            always writes a log record.
        sample_every, sample_fn: period and ``sample_fn(ema_model, step) -> (B, C, H, W)``
            images in [-1, 1], written as ``samples/step_<n>.png`` (:func:`sample_grid_fn` builds one
            from ``scoresde.sample``).
        seed: root of every random stream. device: default ``cuda:LOCAL_RANK`` or CPU.
        resume: ``True``: continue from the newest valid checkpoint in ``out_dir``
            (:func:`scoresde.checkpoint.resume_point`: corrupt ones quarantined, ones that do not
            fit this model skipped), raising ``CheckpointError`` listing what was found when none
            is valid; ``"auto"``: the same, but start from step 0 when none is valid.
        progress: show a tqdm bar (rank 0). config: extra JSON-safe dict stored in checkpoints.
    """

    def __init__(self, model: nn.Module, loss: Callable[..., Tensor], data: Any, *,
                 batch_size: int = 128, lr: float = 2e-4, betas: tuple[float, float] = (0.9, 0.999),
                 adam_eps: float = 1e-8, weight_decay: float = 0.0, warmup_steps: int = 0,
                 lr_schedule: str = "constant", decay_steps: int | None = None,
                 grad_clip: float | None = 1.0, ema_decay: float = 0.9999, ema_warmup: bool = False,
                 grad_accum: int = 1, class_conditional: bool | None = None,
                 amp: str = "auto", compile: bool | str = False, channels_last: bool | str = "auto",
                 optimizer_impl: str = "auto", out_dir: str | Path | None = None,
                 ckpt_every: int = 1000, keep_last: int = 3, log_every: int = 100,
                 eval_every: int | None = None, eval_data: Any = None,
                 eval_fn: Callable[[nn.Module, int], dict[str, Any]] | None = None, sample_every: int | None = None,
                 sample_fn: Callable[[nn.Module, int], Tensor] | None = None, seed: int = 0,
                 device: str | torch.device | None = None, resume: bool | str = False, progress: bool = True,
                 config: dict[str, Any] | None = None):
        for name, v in (("batch_size", batch_size), ("grad_accum", grad_accum), ("ckpt_every", ckpt_every),
                        ("keep_last", keep_last), ("log_every", log_every)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        check_choice(lr_schedule, LR_SCHEDULES, "lr_schedule")
        if lr_schedule != "constant" and not (decay_steps is not None and decay_steps >= 1):
            raise ValueError(f"lr_schedule {lr_schedule!r} needs decay_steps >= 1, got {decay_steps}")
        if grad_clip is not None and not (math.isfinite(grad_clip) and grad_clip > 0):
            raise ValueError(f"grad_clip must be a finite number > 0 or None (off), got {grad_clip}")
        if not all(0 <= b < 1 for b in betas) or not (math.isfinite(adam_eps) and adam_eps > 0):
            raise ValueError(f"Adam needs betas in [0, 1) and adam_eps > 0, got betas {tuple(betas)}, "
                             f"adam_eps {adam_eps}")
        if ((eval_every is None) != (eval_data is None and eval_fn is None)
                or (sample_every is None) != (sample_fn is None)):
            raise ValueError("eval_every needs eval_data or eval_fn and sample_every needs sample_fn (and vice versa)")
        for name, v, modes in (("compile", compile, COMPILE_MODES),
                               ("channels_last", channels_last, CHANNELS_LAST_MODES)):
            if v not in modes or not isinstance(v, (bool, str)):
                raise ValueError(f"{name} must be one of False, True, 'auto', got {v!r}")
        check_choice(optimizer_impl, OPTIMIZER_IMPLS, "optimizer_impl")
        self.rank, self.world_size, self.device = init_distributed(device)
        self.hparams = dict(batch_size=batch_size, lr=lr, betas=list(betas), adam_eps=adam_eps, weight_decay=weight_decay,
                            warmup_steps=warmup_steps, lr_schedule=lr_schedule, decay_steps=decay_steps,
                            grad_clip=grad_clip, ema_decay=ema_decay,
                            ema_warmup=ema_warmup, grad_accum=grad_accum, amp=amp, seed=seed,
                            world_size=self.world_size)
        self.lr, self.warmup_steps, self.grad_clip = lr, warmup_steps, grad_clip
        self.lr_schedule, self.decay_steps = lr_schedule, decay_steps
        self.grad_accum, self.seed = grad_accum, seed
        self.loss, self.batch_size, self.config = loss, batch_size, config or {}
        model = getattr(model, "_orig_mod", model)  # a torch.compile'd module: keep its plain names
        self.autocast_dtype = self._amp_dtype(check_choice(amp, AMP_MODES, "amp"), self.device, model)
        if channels_last == "auto":
            channels_last = channels_last_pays(self.device, self.autocast_dtype, model)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        if self.device.type == "cpu":
            tune_cpu_process()
        model_config = getattr(model, "config", {})
        self.class_conditional = (model_config.get("num_classes") is not None
                                  if class_conditional is None else class_conditional)
        params = list(model.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=adam_eps,
                                           weight_decay=weight_decay, **_adamw_options(optimizer_impl, params))
        self.net: nn.Module = model
        if self.world_size > 1:  # DDP broadcasts rank 0's weights now: the EMA copies them after
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.eager_net, self.compile_mode, self._marker_pending = self.net, compile, False
        if compile is True:
            self._compile()
        self.ema = EMA(model, ema_decay, warmup=ema_warmup)
        self.data, self.batches = self._batches(data)
        self.eval_data, self.eval_every, self.eval_fn = eval_data, eval_every, eval_fn
        self.sample_fn, self.sample_every = sample_fn, sample_every
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.ckpt_every, self.keep_last, self.log_every, self.progress = ckpt_every, keep_last, log_every, progress
        self.step = 0
        self.history: list[dict[str, Any]] = []
        if resume:
            self._resume(resume)
        self._log = (_CsvJsonLog(self._mkdir(), after_step=self.step if resume else None)
                     if self.is_main and self.out_dir is not None else None)

    # ------------------------------------------------------------------ setup helpers
    @property
    def is_main(self) -> bool:
        """True on rank 0, which writes checkpoints, logs and samples."""
        return self.rank == 0

    @property
    def ema_model(self) -> nn.Module:
        """The EMA-averaged network, for sampling and evaluation."""
        return self.ema.model

    def _mkdir(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir

    @staticmethod
    def _amp_dtype(amp: str, device: torch.device, model: nn.Module) -> torch.dtype | None:
        on = amp == "bf16" or (amp == "auto" and amp_pays(device, model))
        return torch.bfloat16 if on else None

    @property
    def compiled(self) -> bool:
        """Whether the step runs through ``torch.compile`` now."""
        return self.net is not self.eager_net

    def _compile_marker(self) -> Path:
        return _compile_key(self.model, self.device, self.autocast_dtype, self.memory_format)

    def _compile(self) -> None:
        self.net = torch.compile(self.eager_net)
        self._marker_pending = True

    def _resolve_compile(self, steps_left: int) -> None:
        """``compile="auto"``: compile now when :func:`compile_pays` (once, at the first ``fit``)."""
        if self.compile_mode == "auto" and not self.compiled:
            self.compile_mode = compile_pays(self.device, steps_left, self._compile_marker().is_file())
            if self.compile_mode:
                self._compile()

    def _batches(self, data: Any) -> tuple[Any, Iterator[Any]]:
        dataset = _as_dataset(data)
        if dataset is None:
            return data, iter(data)
        it = BatchIterator(dataset, self.batch_size, seed=self.seed, rank=self.rank, world_size=self.world_size)
        return it, it

    def _generator(self, step: int, stream: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(step_seed(self.seed, self.rank, step, stream))

    # ------------------------------------------------------------------ one step
    def _next_batch(self) -> Batch:
        x, labels = _split_batch(next(self.batches))
        x = x.to(self.device, non_blocking=True)
        if x.ndim == 4:
            x = x.contiguous(memory_format=self.memory_format)
        if not self.class_conditional:
            return x, None
        if labels is None:
            raise ValueError("a class-conditional model needs (x, labels) batches")
        return x, labels.to(self.device, non_blocking=True)

    def _micro_step(self, micro: int, batch: Batch) -> Tensor:
        """Forward and backward of one micro-batch; returns the detached float32 loss."""
        gen = self._generator(self.step, 2 * micro)
        x, labels = batch
        last = micro == self.grad_accum - 1
        sync = contextlib.nullcontext() if last or self.world_size == 1 else self.eager_net.no_sync()
        devices = [self.device] if self.device.type == "cuda" else []
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        with sync, torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(step_seed(self.seed, self.rank, self.step, 2 * micro + 1))  # dropout
            with autocast:
                loss = self.loss(self.net, x, labels=labels, generator=gen)
            if loss.ndim != 0:
                raise ValueError(f"the loss must return a scalar, got shape {tuple(loss.shape)}")
            (loss / self.grad_accum).backward()
        return loss.detach().float()

    def _forward_backward(self, batches: list[Batch]) -> Tensor:
        """The mean loss of the micro-batches, gradients accumulated. A compiled network that
        fails (compilation or a recompilation) is dropped with one warning and the step is
        redone eagerly from the same batches and seeds, so the run is as if it had never compiled."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.compiled:
            try:
                loss = sum(self._micro_step(m, b) for m, b in enumerate(batches)) / self.grad_accum
            except Exception as err:  # noqa: BLE001 - any failure inside torch.compile's stack
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                warnings.warn(f"torch.compile failed ({type(err).__name__}: {first[:200]}); "
                              "training continues without compiling", stacklevel=3)
                self.net, self.compile_mode = self.eager_net, False
                self.optimizer.zero_grad(set_to_none=True)
            else:
                if self._marker_pending and self.is_main:
                    self._marker_pending = False
                    with contextlib.suppress(OSError):  # the marker only speeds up a later "auto"
                        self._compile_marker().parent.mkdir(parents=True, exist_ok=True)
                        write_json(self._compile_marker(), {"torch": torch.__version__})
                return loss
        return sum(self._micro_step(m, b) for m, b in enumerate(batches)) / self.grad_accum

    def train_step(self) -> dict[str, float]:
        """One optimizer step; raises ``FloatingPointError`` on a non-finite loss or gradient
        (before the weights, the EMA or any checkpoint are touched)."""
        self.model.train()
        n = self.step + 1
        lr = self.lr * (min(1.0, n / self.warmup_steps) if self.warmup_steps else 1.0)
        if self.lr_schedule != "constant" and self.decay_steps > self.warmup_steps:  # else no decay phase
            lr *= lr_decay(self.lr_schedule, (n - 1 - self.warmup_steps) / (self.decay_steps - self.warmup_steps))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self._forward_backward([self._next_batch() for _ in range(self.grad_accum)])
        if self.world_size > 1:
            dist.all_reduce(loss)
            loss /= self.world_size
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads, foreach=True)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(grads, self.grad_clip, total, foreach=True)
        # the step's one host sync: both scalars at once, before the weights are touched
        value, norm = torch.stack([loss, total.float()]).tolist()
        if not (math.isfinite(value) and math.isfinite(norm)):
            raise FloatingPointError(
                f"non-finite {'loss' if not math.isfinite(value) else 'gradient norm'} at step {self.step + 1} "
                f"(loss {value}, grad norm {norm}); the weights were not updated and no checkpoint was written"
            )
        beta1 = self.optimizer.param_groups[0]["betas"][0]
        step_size = lr / (1 - beta1 ** (self.step + 1))  # Adam's, which the fused kernel would not check
        if not step_size <= torch.finfo(torch.float32).max:
            raise FloatingPointError(f"the optimizer step would overflow at step {self.step + 1} (lr {lr}: Adam's "
                                     f"step size {step_size:.3g} exceeds float32); lower training.lr")
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return {"step": self.step, "loss": value, "lr": lr, "grad_norm": norm}

    # ------------------------------------------------------------------ loop
    def fit(self, steps: int) -> list[dict[str, Any]]:
        """Train until ``self.step == steps`` (a resumed run continues to the same total).

        Returns the per-step history of this trainer (``step``, ``loss``, ``lr``,
        ``grad_norm``, and ``eval_loss`` at evaluation steps).
        """
        from tqdm.auto import tqdm

        self._resolve_compile(steps - self.step)
        bar = tqdm(total=steps, initial=self.step, disable=not (self.progress and self.is_main),
                   desc="train", dynamic_ncols=True)
        window: list[float] = []
        t0, saved = time.perf_counter(), self.step
        try:
            while self.step < steps:
                record = self.train_step()
                window.append(record["loss"])
                self._periodic(record)
                self.history.append(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4g}", refresh=False)
                if self.step % self.log_every == 0 or self.step == steps or self._evaluates():
                    rate = len(window) / (time.perf_counter() - t0)
                    self._write_log({**record, "loss": sum(window) / len(window), "steps_per_s": rate})
                    window, t0 = [], time.perf_counter()
                if self.step % self.ckpt_every == 0:
                    self.save_checkpoint()
                    saved = self.step
            if saved != self.step:
                self.save_checkpoint()
        finally:
            bar.close()
        return self.history

    def _evaluates(self) -> bool:
        return bool(self.eval_every) and self.step % self.eval_every == 0 and self.is_main

    def _periodic(self, record: dict[str, Any]) -> None:
        if self._evaluates():
            if self.eval_data is not None:
                record["eval_loss"] = self.evaluate()
            if self.eval_fn is not None:
                figures = dict(self.eval_fn(self.ema_model, self.step))
                clash = sorted(set(figures) & {*record, *_CSV_FIELDS})
                if clash:
                    raise ValueError(f"eval_fn returned reserved log keys {clash}")
                record.update(figures)
        if self.sample_every and self.step % self.sample_every == 0 and self.is_main:
            images = self.sample_fn(self.ema_model, self.step)
            if self.out_dir is not None:
                save_png(images, self.out_dir / "samples" / f"step_{self.step:08d}.png")

    def _write_log(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write({**record, "time": time.time()})

    @torch.no_grad()
    def evaluate(self, data: Any = None) -> float:
        """Mean loss of the EMA model over ``data`` (default ``eval_data``) with fixed noise."""
        data = self.eval_data if data is None else data
        dataset = _as_dataset(data)
        if dataset is not None:
            batches: Iterable[Any] = (
                (dataset.x[i:i + self.batch_size],
                 None if dataset.labels is None else dataset.labels[i:i + self.batch_size])
                for i in range(0, len(dataset), self.batch_size)
            )
        else:
            batches = data
        gen = torch.Generator(device=self.device).manual_seed(step_seed(self.seed, 0, 0, _EVAL_STREAM))
        total, count = 0.0, 0
        for batch in batches:
            x, labels = _split_batch(batch)
            x = x.to(self.device)
            labels = labels.to(self.device) if (labels is not None and self.class_conditional) else None
            total += float(self.loss(self.ema_model, x, labels=labels, generator=gen)) * x.shape[0]
            count += x.shape[0]
        if count == 0:
            raise ValueError("eval_data is empty")
        return total / count

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Tensors and JSON metadata of the full training state (what a checkpoint holds)."""
        optim_structure, optim_tensors = checkpoint.pack(self.optimizer.state_dict(), checkpoint.OPTIMIZER)
        tensors = self._weights() | optim_tensors
        data_state = self.data.state_dict() if hasattr(self.data, "state_dict") else None
        meta = {"step": self.step, "trainer": self.hparams, "model_class": type(self.model).__name__,
                "model_config": getattr(self.model, "config", None), "ema": self.ema.meta(),
                "optimizer": optim_structure, "data": data_state, "config": self.config}
        return tensors, meta

    def _weights(self) -> dict[str, Tensor]:
        """The network and its EMA in the checkpoint layout (``model.*``, ``ema.*``)."""
        return (checkpoint.prefixed(self.model.state_dict(), checkpoint.MODEL)
                | checkpoint.prefixed(self.ema.state_dict(), checkpoint.EMA))

    def save_checkpoint(self) -> Path | None:
        """Write ``out_dir/ckpt_<step>`` (rank 0, when ``out_dir`` is set)."""
        if self.out_dir is None or not self.is_main:
            return None
        tensors, meta = self.state()
        return checkpoint.save(self._mkdir(), self.step, tensors, meta, keep_last=self.keep_last)

    def check_checkpoint(self, ckpt: checkpoint.Checkpoint) -> None:
        """Raise a one-line ``CheckpointError`` naming the file unless ``ckpt`` holds this trainer's
        state: the model and EMA tensors with this network's names and shapes, the EMA and
        optimizer metadata and every optimizer tensor it refers to, and nothing else."""
        checkpoint.check_layout(ckpt, self._weights(), meta_keys=("ema", "optimizer"),
                                other_prefixes=(checkpoint.OPTIMIZER + ".",))
        try:
            checkpoint.unpack(ckpt.meta["optimizer"], ckpt.tensors)
        except (KeyError, TypeError, ValueError) as err:
            raise checkpoint.CheckpointError(f"{ckpt.path}: optimizer state incomplete ({err})") from err

    def load_state(self, ckpt: checkpoint.Checkpoint) -> None:
        """Restore the state saved by :meth:`state` from a loaded checkpoint (checked first by
        :meth:`check_checkpoint`)."""
        self.check_checkpoint(ckpt)

        self.model.load_state_dict(checkpoint.section(ckpt.tensors, checkpoint.MODEL))
        self.ema.load_state_dict(checkpoint.section(ckpt.tensors, checkpoint.EMA), ckpt.meta["ema"])
        self.optimizer.load_state_dict(checkpoint.unpack(ckpt.meta["optimizer"], ckpt.tensors))
        self._match_layouts()
        data_state = ckpt.meta.get("data")
        if data_state is not None and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(data_state)
        elif not hasattr(self.data, "load_state_dict"):
            warnings.warn("the data iterable has no state_dict(): batch order restarts on resume", stacklevel=2)
        self.step = ckpt.step

    def _match_layouts(self) -> None:
        """Give the loaded Adam moments their parameter's memory layout (a checkpoint stores them
        contiguous): the fused kernel walks a parameter and its moments in memory order, so an NHWC
        weight with NCHW moments would be updated with another element's moments."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                state = self.optimizer.state.get(p, {})
                for k, v in state.items():
                    if isinstance(v, Tensor) and v.shape == p.shape and v.stride() != p.stride():
                        state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)

    def _resume(self, resume: bool | str) -> None:
        if self.out_dir is None:
            raise ValueError("resume=True needs out_dir")
        ckpt = checkpoint.resume_point(self.out_dir, self.check_checkpoint, required=resume != "auto",
                                       clean=self.is_main)
        if ckpt is not None:
            self.load_state(ckpt)
        if self.world_size > 1:  # every rank must resume from the same step (shared out_dir)
            steps = torch.tensor([self.step, -self.step], dtype=torch.float64, device=self.device)
            dist.all_reduce(steps, op=dist.ReduceOp.MIN)
            if int(steps[0]) != -int(steps[1]):
                raise RuntimeError("ranks found different checkpoints: out_dir must be on a shared filesystem")
