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
  integrator steps are nearly exact; the default of the fixed-step ODE schemes;
* ``"log-snr-fine"``: the same with the window ``[-3, 5]``: density 1 down to noise ``e^-5 = 0.0067``
  of the unit data scale, because the end is where the finest structure of the data lives -- the
  denoiser of a component of width ``w`` changes around ``lambda = -log w``, up to ``lambda(eps)``
  for the narrowest the smoothed data ``p_eps`` can hold (VP and VE: 4.6, width 0.01), so a window
  stopping at 3 leaves components narrower than about 0.3 to a few long tail steps; beyond 5
  (sub-VP's eps reaches 9.1, the rectified flow's 6.9) the denoiser of data no narrower than 0.01
  is the identity and long steps are exact again (measured: upper edge 6 costs sub-VP and RF 5-10
  NFE more on the multi-scale mixtures); the default of the fast solvers;
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
) -> Tensor:
    """``N + 1`` times at equal quantiles of the step density in ``lambda``: 1 on ``window``,
    ``tail_density`` elsewhere on ``[lambda(t_max), lambda(t_min)]`` (a piecewise-linear cumulative)."""
    t_max = default_t_max(sde) if t_max is None else t_max
    t_min = sde.eps if t_min is None else t_min
    if not (window[0] < window[1] and tail_density > 0):
        raise ValueError(f"window must be increasing and tail_density > 0, got {window}, {tail_density}")
    lo, hi = log_snr(sde, t_max), log_snr(sde, t_min)
    knots = sorted({lo, hi, *(min(max(w, lo), hi) for w in window)})
    density = [1.0 if window[0] <= 0.5 * (a + b) <= window[1] else tail_density for a, b in zip(knots, knots[1:])]
    cum = np.concatenate([[0.0], np.cumsum(np.diff(knots) * density)])
    levels = np.linspace(0.0, cum[-1], check_int(steps, "steps", 1) + 1)
    lam = torch.from_numpy(np.interp(levels, cum, knots))
    return _times_of_log_snr(sde, lam, t_max, t_min)


def log_snr_fine(
    sde: LinearSDE, steps: int, t_max: float | None = None, t_min: float | None = None,
    window: tuple[float, float] = (-3.0, 5.0), tail_density: float = 0.2,
) -> Tensor:
    """:func:`log_snr_window` with the window ``[-3, 5]`` (see the module docstring)."""
    return log_snr_window(sde, steps, t_max, t_min, window=window, tail_density=tail_density)


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
