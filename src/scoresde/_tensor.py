"""Tensor helpers shared by every module: per-sample broadcasting and argument checks.

The core never assumes 4-D images: a per-sample scalar of shape ``(B,)`` is broadcast
against data of shape ``(B, ...)`` with :func:`append_dims`, and nothing else.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton axes so that ``v`` of shape ``(B,)`` (or ``()``) broadcasts
    against a tensor with ``ndim`` axes: ``(B,) -> (B, 1, ..., 1)``."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor of {v.ndim} dims to {ndim} dims")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def as_batch_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Return ``t`` as a tensor of shape ``(B,)`` on ``x``'s device and dtype.

    A Python float or a 0-d tensor is expanded to every sample; a ``(B,)`` tensor must match
    the batch size of ``x``.
    """
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def check_time(t: Tensor | float, T: float, name: str = "t") -> None:
    """Raise ``ValueError`` naming ``name`` unless every entry of ``t`` is finite and in [0, T]."""
    t = torch.as_tensor(t)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > T * (1 + 1e-6):
        raise ValueError(f"{name} must lie in [0, {T}], got values in [{lo:.6g}, {hi:.6g}]")


def check_positive(value: float, name: str) -> float:
    """Return ``value`` as a float; raise ``ValueError`` naming it unless finite and > 0."""
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def check_int(value: int, name: str, minimum: int) -> int:
    """Return ``value``; ``ValueError`` naming it unless it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_finite(x: Tensor, name: str = "x") -> Tensor:
    """Return ``x``; raise ``ValueError`` naming it if it holds NaN or infinite values."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} holds {bad} non-finite values")
    return x


def check_choice(value: str, choices: Sequence[str], name: str) -> str:
    """Return ``value``; raise ``ValueError`` naming the argument and the valid choices otherwise."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def check_batch(x: Tensor, y: Tensor, name_x: str = "x", name_y: str = "y") -> None:
    """Raise ``ValueError`` unless ``x`` and ``y`` share the same leading batch size."""
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name_x} and {name_y} must share the batch size, got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def batch_sum(x: Tensor) -> Tensor:
    """Sum over every axis but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def batch_mean(x: Tensor) -> Tensor:
    """Mean over every axis but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).mean(dim=1)
