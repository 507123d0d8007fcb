"""Tensor helpers shared by every module: per-sample broadcasting, argument checks, random draws.

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


def gaussian_logp(z: Tensor, std: float) -> Tensor:
    """``log N(z; 0, std^2 I)`` per sample: ``-D/2 log(2 pi std^2) - |z|^2 / (2 std^2)``."""
    var = std * std
    return -0.5 * z[0].numel() * math.log(2 * math.pi * var) - batch_sum(z * z) / (2 * var)


def check_labels(labels: Tensor | int, n: int, num_classes: int | None, device: torch.device | str | None) -> Tensor:
    """Class labels as a ``(n,)`` long tensor (an int is broadcast); ``ValueError`` for a wrong shape
    or a class outside ``[0, num_classes)``."""
    labels = torch.as_tensor(labels, dtype=torch.long, device=device)
    if labels.ndim == 0:
        labels = labels.expand(n)
    if labels.shape != (n,):
        raise ValueError(f"labels must be an int or have shape ({n},), got {tuple(labels.shape)}")
    if n and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
    if n and num_classes is not None and labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got {int(labels.max())}")
    return labels


# -- random draws: the one pair every module uses -------------------------------------------------
def randn_like(like: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
    """Standard normal noise shaped like ``like`` (its dtype and device).

    Drawn on the generator's device (so a CPU generator serves a CUDA state reproducibly), then
    moved to ``like``'s. A sequence of ``B`` generators draws row ``i`` from generator ``i``:
    per-sample streams, so sample ``i``'s noise does not depend on the rest of the batch.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != like.shape[0]:
            raise ValueError(f"got {len(generator)} per-sample generators for a batch of {like.shape[0]}")
        return torch.stack([randn_like(like[0], g) for g in generator])
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def rand(n: int, like: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
    """``n`` uniform draws on ``[0, 1)`` with ``like``'s dtype and device (generators as in
    :func:`randn_like`; a sequence gives one draw per generator)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ValueError(f"got {len(generator)} per-sample generators for {n} draws")
        return torch.cat([rand(1, like, g) for g in generator])
    device = generator.device if generator is not None else like.device
    return torch.rand(n, generator=generator, device=device, dtype=like.dtype).to(like.device)
