"""Dropout whose CPU mask is drawn from numpy's PCG64 bit generator.

``y = x * m / q`` with ``m_i ~ Bernoulli(q)`` i.i.d. and ``q = 1 - p`` the keep probability, as
``torch.nn.Dropout``. On CPU, torch draws the mask one Mersenne-Twister number per element on one
thread (on non-Intel CPUs; Intel's path uses MKL), which took 10 % of a digits DDPM++ training step
at batch 128 (BENCHMARKS.md, issue 18). Here the mask comes from numpy's PCG64 raw 64-bit output,
four 16-bit uniforms per draw, ``m_i = [u_i < k]`` with ``k = round(q 2^16)``: the keep probability
is ``q' = k / 2^16`` (within ``2^-17`` of ``q``) and the scale ``1 / q'``, so ``E[y] = x`` exactly;
about 8x cheaper per element than torch's draw (the mask was still 5 % of that step with two 32-bit
uniforms per draw).

The PCG64 stream is seeded by one draw from torch's default generator per call, so
``torch.manual_seed`` (and a restored RNG state, as a resumed run does) reproduces every mask.
Under ``torch.compile`` the mask is drawn outside the graph (so a compiled step repeats the eager
step's masks); on other devices it is ``torch.nn.functional.dropout``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SEED_HIGH = 2**63 - 1


#: the mask's uniforms are 16-bit: keep probabilities are multiples of 2^-16
_LEVELS = 2**16


def _keep_level(keep: float) -> int:
    """``round(keep 2^16)``, refused unless in ``(0, 2^16]``."""
    level = round(keep * _LEVELS)
    if not 0 < level <= _LEVELS:
        raise ValueError(f"keep probability {keep} rounds to {level} / 2^16 (the mask's resolution); "
                         "it must round into (0, 1]")
    return level


def keep_share(keep: float) -> float:
    """The keep probability :func:`keep_mask` draws for ``keep``: ``round(keep 2^16) / 2^16``."""
    return _keep_level(keep) / _LEVELS


@torch.compiler.disable  # numpy's generator runs outside a compiled graph (the same masks as eager)
def keep_mask(shape: torch.Size | tuple[int, ...], keep: float) -> Tensor:
    """A contiguous CPU ``uint8`` tensor of i.i.d. Bernoulli(:func:`keep_share` ``(keep)``) draws,
    seeded from torch's default generator."""
    n = int(np.prod(shape, dtype=np.int64))
    seed = int(torch.randint(_SEED_HIGH, (), dtype=torch.int64))
    level = _keep_level(keep)
    if level == _LEVELS:
        return torch.ones(shape, dtype=torch.uint8)
    uniforms = np.random.PCG64(seed).random_raw((n + 3) // 4).view(np.uint16)[:n]
    return torch.from_numpy((uniforms < np.uint16(level)).view(np.uint8)).view(shape)


def keep_mask_like(x: Tensor, keep: float) -> Tensor:
    """:func:`keep_mask` for ``x``'s shape in ``x``'s memory layout: drawn contiguous over the axes
    in memory order (outermost first), then permuted back, so a channels-last ``x`` gets a
    channels-last mask (a mixed-layout ``addcmul`` costs 3x) and a contiguous ``x`` the plain draw."""
    order = sorted(range(x.ndim), key=lambda d: -x.stride(d))  # stable: ties keep the logical order
    mask = keep_mask(tuple(x.shape[d] for d in order), keep)
    return mask.permute([order.index(d) for d in range(x.ndim)])


class _MaskScale(torch.autograd.Function):
    """``y = s m x`` and ``dx = s m dy``, each one ``addcmul`` rounded once in ``x``'s dtype (a
    bf16 mask pre-multiplied by ``s = 1/q`` would carry ``s`` rounded: 1.109 for 1/0.9)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, mask: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return torch.addcmul(x.new_zeros(()), x, mask, value=scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return torch.addcmul(grad.new_zeros(()), grad, mask, value=ctx.scale), None, None


class Dropout(nn.Module):
    """``torch.nn.Dropout(p)`` with the fast CPU mask of :func:`keep_mask` (module docstring)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        keep_share(1 - p)  # refuses a rate whose keep share rounds to 0
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        keep = keep_share(1 - self.p)
        return _MaskScale.apply(x, keep_mask_like(x, keep).to(x.dtype), 1 / keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"
