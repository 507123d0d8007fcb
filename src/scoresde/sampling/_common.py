"""Plumbing shared by every sampler: counted score evaluations, kernel coefficients at grid
times, the Tweedie denoiser, the per-step callback and the progress bar.

Grid times are float64; coefficients are computed in float64 on the CPU (for a whole grid at once
with :func:`kernel_at`, or at one time with :func:`coeffs`) and enter the state's arithmetic as
Python scalars, so the state never leaves its device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..score import tweedie
from ..sde import LinearSDE

Callback = Callable[[int, Tensor, Tensor], "Tensor | None"]


@dataclass
class SampleInfo:
    """What a sampler spent and used: ``nfe`` score evaluations per sample path (with
    ``batch_size`` chunking the score function was called ``nfe`` times per chunk), the method
    name, its time grid (float64, descending for sampling) and, on request, the states after each
    step (``trajectory``)."""

    nfe: int
    method: str
    grid: "torch.Tensor | None" = None
    trajectory: list | None = field(default=None, repr=False)


class CountedScore:
    """``score_fn`` called with a scalar time broadcast to ``(B,)`` in ``x``'s dtype and device,
    counting its calls (``nfe``).  ``max_nfe`` bounds the count (``RuntimeError`` past it).  The
    first value is checked for NaN/inf (``FloatingPointError``: a broken model or input, caught
    before a whole run is spent; one host sync per sampler call, none per step)."""

    def __init__(self, score_fn: Callable[[Tensor, Tensor], Tensor], max_nfe: int | None = None) -> None:
        self.score_fn = score_fn
        self.nfe = 0
        self.max_nfe = max_nfe

    def __call__(self, x: Tensor, t: float | Tensor) -> Tensor:
        if self.max_nfe is not None and self.nfe >= self.max_nfe:
            raise RuntimeError(f"the sampler exceeded max_nfe={self.max_nfe} score evaluations")
        self.nfe += 1
        tb = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        out = self.score_fn(x, tb)
        if out.shape != x.shape:
            raise ValueError(f"score_fn returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}")
        if self.nfe == 1 and not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).sum())
            raise FloatingPointError(f"score_fn returned {bad} non-finite values at its first evaluation (t={float(tb[0]):.6g})")
        return out


@dataclass(frozen=True)
class Kernel:
    """The kernel ``x_t = alpha x_0 + sigma z`` at a sequence of times: ``t``, ``alpha(t)``,
    ``sigma(t)`` and ``lam = log(alpha / sigma)``, each a 1-D float64 CPU tensor."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    lam: Tensor


def kernel_at(sde: LinearSDE, times: Tensor | list[float]) -> Kernel:
    """:class:`Kernel` at ``times``, evaluated once for all of them (vectorised, float64)."""
    t = torch.as_tensor(times, dtype=torch.float64).cpu()
    return Kernel(t, sde.alpha(t).double(), sde.sigma(t).double(), sde.log_snr(t).double())


def device_times(times: Tensor, x: Tensor) -> tuple[Tensor, ...]:
    """``times`` as 0-d tensors in ``x``'s dtype and device, converted once before a solver loop."""
    return times.to(dtype=x.dtype, device=x.device).unbind()


def coeffs(sde: LinearSDE, t: float) -> tuple[float, float]:
    """``(alpha(t), sigma(t))`` as float64 Python numbers."""
    tt = torch.tensor(t, dtype=torch.float64)
    return float(sde.alpha(tt)), float(sde.sigma(tt))


def log_snr(sde: LinearSDE, t: float) -> float:
    """``lambda(t) = log(alpha(t) / sigma(t))`` as a float64 Python number."""
    return float(sde.log_snr(torch.tensor(t, dtype=torch.float64)))


def denoise(score: CountedScore, sde: LinearSDE, x: Tensor, t: float) -> Tensor:
    """:func:`tweedie` with the score evaluated at ``(x, t)`` (one NFE)."""
    return tweedie(x, score(x, t), *coeffs(sde, t))


def apply_callback(callback: Callback | None, step: int, t: float | Tensor, x: Tensor) -> Tensor:
    """Call ``callback(step, t, x)`` after a step; a returned tensor replaces the state."""
    if callback is None:
        return x
    out = callback(step, torch.as_tensor(t, dtype=x.dtype, device=x.device), x)
    if out is None:
        return x
    if out.shape != x.shape:
        raise ValueError(f"callback returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
    return out


def step_range(n: int, progress: bool) -> Iterable[int]:
    """``0 .. n-1``, with a tqdm bar when ``progress``."""
    return tqdm(range(n), disable=not progress, desc="sampling", leave=False)


def steps_of(grid: Tensor, progress: bool) -> Iterable[tuple[int, float, float]]:
    """``(i, t_i, t_{i+1})`` over the grid as Python floats, with a tqdm bar when ``progress``."""
    ts = grid.tolist()
    for i in step_range(len(ts) - 1, progress):
        yield i, ts[i], ts[i + 1]
