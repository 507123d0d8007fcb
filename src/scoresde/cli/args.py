"""Options shared by several sub-commands, and the validators of command-line values."""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from ..runs import Run, load_run


def _int_at_least(text: str, low: int, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a {kind} integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be a {kind} integer, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1 (an explicit 0 is refused, never read as "default")."""
    return _int_at_least(text, 1, "positive")


def nonnegative_int(text: str) -> int:
    """An argparse ``type``: an integer >= 0 (a class index, a count where 0 means off)."""
    return _int_at_least(text, 0, "non-negative")


def device_of(name: str | None) -> torch.device:
    """``--device``: the name given (checked: a torch device this build can use), else CUDA
    when available, else CPU. Under ``torchrun`` a CUDA device without an index is the process's
    own, ``cuda:LOCAL_RANK`` (so ranks sharding ``sample --seeds`` use one GPU each)."""
    if not name:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch build has no usable CUDA (torch.cuda.is_available() is False)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: scoresde runs on cpu, cuda or mps")
    return device


def common_options(p: argparse.ArgumentParser, default: Any) -> None:
    """``--debug``, ``--quiet``, ``--device``, ``--threads``: accepted before or after the command."""
    p.add_argument("--debug", action="store_true", default=default, help="show full tracebacks on errors")
    p.add_argument("--quiet", action="store_true", default=default, help="no progress bars")
    p.add_argument("--device", default=default, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--threads", type=positive_int, default=default, help="torch CPU threads")


def run_options(p: argparse.ArgumentParser) -> None:
    """The run folder and which of its weights to load."""
    p.add_argument("run", help="run folder written by `scoresde train` or `scoresde import`")
    p.add_argument("--checkpoint", help="a checkpoint file (default: the newest valid one in RUN)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="seed of all sampling / dequantization noise (default 0)")


def sampler_options(p: argparse.ArgumentParser) -> None:
    """The sampler, its step count or NFE budget, and clipping of the denoised estimate."""
    p.add_argument("--method", help="sampler name (default: the run's sampling.method), e.g. dpm-solver++, ddim, "
                                    "heun, pc, ode, euler-maruyama, reverse-diffusion, ancestral")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--steps", type=positive_int, help="number of time steps (default: the run's sampling.steps)")
    group.add_argument("--nfe", type=positive_int, help="score-evaluation budget: the most steps that fit in it")
    p.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=None,
                   help="clip the denoised estimate to the data range at every score evaluation "
                        "(default: the run's sampling.clip_denoised)")


def load(args: argparse.Namespace) -> Run:
    """The run named by :func:`run_options` on ``args``."""
    return load_run(args.run, args.checkpoint, ema=not args.no_ema, device=device_of(args.device))
