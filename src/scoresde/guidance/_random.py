"""Random draws from a caller's generator, made on the generator's device and moved to the data's."""

from __future__ import annotations

import torch
from torch import Tensor


def _device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def randn_like(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like ``like``."""
    z = torch.randn(like.shape, generator=generator, device=_device(generator, like), dtype=like.dtype)
    return z.to(like.device)


def rand(n: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``n`` uniform draws on [0, 1) with ``like``'s dtype and device."""
    u = torch.rand(n, generator=generator, device=_device(generator, like), dtype=like.dtype)
    return u.to(like.device)
