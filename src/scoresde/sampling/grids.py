"""Time-step schedules as data: descending float64 grids ``T = t_0 > t_1 > ... > t_N = eps``.

Every schedule is built in a variable of the kernel ``x_t = alpha(t) x_0 + sigma(t) eps`` and
mapped back to time with :meth:`~scoresde.sde.LinearSDE.t_of_log_snr`, so it works for every
:class:`~scoresde.sde.LinearSDE` without knowing its type:

* ``"time-uniform"``: ``t_i = t_max + (i / N) (t_min - t_max)`` (any SDE);
* ``"log-snr"``: uniform in ``lambda = log(alpha / sigma)`` between ``lambda(t_max)`` and
  ``lambda(t_min)`` (DPM-Solver's recommendation for low-dimensional data);
* ``"log-snr-window"``: log-SNR steps placed with density 1 inside a window ``[lambda_a, lambda_b]``
  (default ``[-3, 3]``: noise-to-signal ratios from 20 down to 0.05, where the denoiser of data of
  unit scale changes -- modes are chosen near the start, shapes within modes near the end) and
  density ``tail_density`` (0.2) outside it, where ``x0_hat`` hardly moves and long exponential-
  integrator steps are nearly exact; optionally only within ``tail_span`` of the window and
  ``far_density`` beyond; the default of the fixed-step ODE schemes;
* ``"log-snr-fine"``: the window ``[-3, 5.5]``, tails of density 0.2 for 2 units of ``lambda`` on
  each side and 0.05 beyond; the default of the fast solvers.  The end is where the finest
  structure of the data lives: the denoiser of a component of width ``w`` changes around
  ``lambda = -log w`` and still moves up to about ``-log w + 1.5`` (width 0.011: 6), so a window
  stopping at 3 leaves components narrower than about 0.3 to a few long tail steps, and one
  stopping at 5 left the rectified flow (``lambda(eps) = 6.9``) a single order-1 last step from 4.9
  with ``x0_hat`` of its width-0.011-0.016 components still contracted.  The tails have bounded
  mass, so the steps inside the window depend on the log-SNR range the SDE's clock spans only
  through a few hundredths of a step (the far density 0.05, not less: a jump of more than 4x in
  step length costs the multistep solvers their order at 160-640 steps): the rectified flow's
  grid starts at ``lambda(T - eps) = -6.9`` and sub-VP's ends at 9.1, where with a uniform tail density of 0.2 the tails took 1.7 and 0.8
  steps of 20 from the window (VP and VE, ``lambda`` in [-5, 4.6], have no far tail).  Measured
  on the hard mixtures (BENCHMARKS.md): the edge at 6 costs sub-VP and RF up to 8 NFE on the
  multi-scale rows, at 4.5 the narrowest components lost accuracy;
* ``"karras"``: EDM's ``rho``-schedule in the noise-to-signal ratio ``sigma~ = sigma/alpha = e^-lambda``:
  ``sigma~_i = (sigma~_max^(1/rho) + (i/N)(sigma~_min^(1/rho) - sigma~_max^(1/rho)))^rho``, ``rho = 7``.

Grids live on the CPU in float64 (coefficients are computed once per step as Python floats; the
state stays on its own device).  Where ``lambda(T)`` is infinite (the rectified flow at ``t = 1``)
grids start at ``t_max = T - eps`` (see :func:`default_t_max`).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .._tensor import check_int
from ..sde import SDE, LinearSDE
from ._common import log_snr


def default_t_max(sde: SDE) -> float:
    """The first time of default grids: ``T``, or ``T - eps`` where ``log_snr(T)`` is infinite
    (``alpha(T) = 0``: the Tweedie denoiser ``(x + sigma^2 s)/alpha`` is undefined there)."""
    if isinstance(sde, LinearSDE) and not math.isfinite(log_snr(sde, sde.T)):
        return sde.T - sde.eps
    return sde.T


def _times_of_log_snr(sde: LinearSDE, lam: Tensor, t_max: float, t_min: float) -> Tensor:
    """Map log-SNR values to times, pinning the end points exactly."""
    t = sde.t_of_log_snr(lam).to(torch.float64)
    t[0], t[-1] = t_max, t_min
    return t


def time_uniform(sde: SDE, steps: int, t_max: float | None = None, t_min: float | None = None) -> Tensor:
    """``N + 1`` times uniform in ``t`` from ``t_max`` (default :func:`default_t_max`) to ``t_min`` (``eps``)."""
    t_max = default_t_max(sde) if t_max is None else t_max
    t_min = sde.eps if t_min is None else t_min
    return torch.linspace(t_max, t_min, check_int(steps, "steps", 1) + 1, dtype=torch.float64)


def log_snr_uniform(sde: LinearSDE, steps: int, t_max: float | None = None, t_min: float | None = None) -> Tensor:
    """``N + 1`` times uniform in ``lambda = log(alpha / sigma)`` from ``lambda(t_max)`` up to ``lambda(t_min)``."""
    t_max = default_t_max(sde) if t_max is None else t_max
    t_min = sde.eps if t_min is None else t_min
    lam = torch.linspace(log_snr(sde, t_max), log_snr(sde, t_min), check_int(steps, "steps", 1) + 1, dtype=torch.float64)
    return _times_of_log_snr(sde, lam, t_max, t_min)


def log_snr_window(
    sde: LinearSDE,
    steps: int,
    t_max: float | None = None,
    t_min: float | None = None,
    window: tuple[float, float] = (-3.0, 3.0),
    tail_density: float = 0.2,
    tail_span: float = math.inf,
    far_density: float = 0.02,
) -> Tensor:
    """``N + 1`` times at equal quantiles of the step density in ``lambda`` on
    ``[lambda(t_max), lambda(t_min)]`` (a piecewise-linear cumulative)::

        rho(lambda) = 1             on window = [a, b]
                      tail_density  within tail_span of it (a - tail_span <= lambda < a, b < lambda <= b + tail_span)
                      far_density   farther out"""
    t_max = default_t_max(sde) if t_max is None else t_max
    t_min = sde.eps if t_min is None else t_min
    if not (window[0] < window[1] and tail_density > 0 and far_density > 0 and tail_span > 0):
        raise ValueError(f"window must be increasing and tail_density, far_density, tail_span > 0, "
                         f"got {window}, {tail_density}, {far_density}, {tail_span}")
    lo, hi = log_snr(sde, t_max), log_snr(sde, t_min)
    edges = (window[0] - tail_span, *window, window[1] + tail_span)
    knots = sorted({lo, hi, *(min(max(w, lo), hi) for w in edges if math.isfinite(w))})
    density = [_window_density(0.5 * (a + b), window, tail_density, tail_span, far_density)
               for a, b in zip(knots, knots[1:])]
    cum = np.concatenate([[0.0], np.cumsum(np.diff(knots) * density)])
    levels = np.linspace(0.0, cum[-1], check_int(steps, "steps", 1) + 1)
    lam = torch.from_numpy(np.interp(levels, cum, knots))
    return _times_of_log_snr(sde, lam, t_max, t_min)


def _window_density(lam: float, window: tuple[float, float], tail: float, span: float, far: float) -> float:
    """:func:`log_snr_window`'s ``rho(lambda)``."""
    outside = max(window[0] - lam, lam - window[1])
    return 1.0 if outside <= 0 else tail if outside <= span else far


def log_snr_fine(
    sde: LinearSDE, steps: int, t_max: float | None = None, t_min: float | None = None,
    window: tuple[float, float] = (-3.0, 5.5), tail_density: float = 0.2, tail_span: float = 2.0,
    far_density: float = 0.05,
) -> Tensor:
    """:func:`log_snr_window` with the window ``[-3, 5.5]`` and tails of density 0.2 for 2 units of
    ``lambda`` on each side, 0.05 beyond (see the module docstring)."""
    return log_snr_window(sde, steps, t_max, t_min, window=window, tail_density=tail_density,
                          tail_span=tail_span, far_density=far_density)


def karras(
    sde: LinearSDE, steps: int, t_max: float | None = None, t_min: float | None = None, rho: float = 7.0
) -> Tensor:
    """EDM's schedule, uniform in ``sigma~^(1/rho)`` with ``sigma~ = sigma / alpha = exp(-lambda)``."""
    t_max = default_t_max(sde) if t_max is None else t_max
    t_min = sde.eps if t_min is None else t_min
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    lo, hi = math.exp(-log_snr(sde, t_min) / rho), math.exp(-log_snr(sde, t_max) / rho)
    ramp = torch.linspace(0, 1, check_int(steps, "steps", 1) + 1, dtype=torch.float64)
    nsr = (hi + ramp * (lo - hi)) ** rho
    return _times_of_log_snr(sde, -torch.log(nsr), t_max, t_min)


SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "time-uniform": time_uniform,
    "log-snr": log_snr_uniform,
    "log-snr-window": log_snr_window,
    "log-snr-fine": log_snr_fine,
    "karras": karras,
}


def make_grid(sde: SDE, steps: int, schedule: str = "time-uniform", **kwargs) -> Tensor:
    """The grid of ``steps`` steps of the named schedule (:data:`SCHEDULES`)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(map(repr, SCHEDULES))}")
    if schedule != "time-uniform" and not isinstance(sde, LinearSDE):
        raise ValueError(f"schedule {schedule!r} needs a LinearSDE (a log-SNR); use 'time-uniform'")
    return SCHEDULES[schedule](sde, steps, **kwargs)


def check_grid(grid: Tensor | list[float], sde: SDE, name: str = "grid") -> Tensor:
    """Return ``grid`` as a 1-D float64 CPU tensor; ``ValueError`` unless it has at least two
    finite times in ``[0, T]`` that strictly decrease."""
    grid = torch.as_tensor(grid, dtype=torch.float64).detach().cpu()
    if grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 times, got shape {tuple(grid.shape)}")
    if not torch.isfinite(grid).all() or grid.min() < 0 or grid.max() > sde.T * (1 + 1e-9):
        raise ValueError(f"{name} must hold finite times in [0, {sde.T}]")
    if not (grid[1:] < grid[:-1]).all():
        raise ValueError(f"{name} must strictly decrease (time runs from noise T to data eps)")
    return grid
