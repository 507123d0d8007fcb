"""The probability-flow ODE ``dx/dt = f(x, t) - g(t)^2 s(x, t) / 2`` (same marginals as the SDE).

* :func:`ode_adaptive` -- an adaptive embedded Runge--Kutta pair (:func:`scoresde.rk.solve`:
  torchdiffeq's dopri5 by default, or ``"dopri5"``/``"bosh3"`` under PI step control) between consecutive grid times, in
  ``t`` or in the log-SNR ``lambda`` (``dx/dlambda = (dx/dt) / lambda'(t)``), on the tensor's own
  device; the score function is wrapped and counted, and ``max_nfe`` bounds the work (a stiff
  problem raises ``RuntimeError`` instead of running forever).
* :func:`ode_fixed` -- explicit Runge--Kutta on a fixed grid in ``t``, methods given as Butcher
  tableaus with their declared order (Euler 1, Heun and midpoint 2, RK4 4; a test checks the orders).
* :func:`encode` / :func:`decode` -- the identifiable latent code: integrate data ``x(eps)`` to
  ``z = x(T)`` and back; :func:`slerp` interpolates latents on the sphere.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .._tensor import append_dims, as_batch_time, batch_sum, check_choice, check_finite, check_int, check_positive
from ..rk import ADAPTIVE_METHODS, TABLEAUS, rk_step, solve
from ..sde import SDE, LinearSDE
from ._common import CountedScore, SampleInfo, apply_callback, steps_of
from .grids import default_t_max


def probability_flow(score: CountedScore, sde: SDE) -> Callable[[float, Tensor], Tensor]:
    """``F(t, x) = f(x, t) - g(t)^2 s(x, t) / 2``, one NFE per call."""

    def field(t: float, x: Tensor) -> Tensor:
        return sde.probability_flow_drift(x, as_batch_time(t, x), score(x, t))

    return field


def ode_fixed(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x: Tensor,
    grid: Tensor,
    *,
    scheme: str = "heun",
    generator: torch.Generator | None = None,
    callback=None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Integrate the probability-flow ODE over ``grid`` in ``t`` with the named tableau
    (``euler``, ``heun``, ``midpoint``, ``rk4``; NFE = stages x steps): per step ``t -> s``,
    ``k_j = F(t + c_j h, x + h sum_l a_jl k_l)``, ``x_s = x + h sum_j b_j k_j`` (``h = s - t``,
    :func:`~scoresde.rk.rk_step`) with ``F`` the :func:`probability_flow` (any SDE).
    Deterministic: ``generator`` is unused."""
    tableau = TABLEAUS[check_choice(scheme, list(TABLEAUS), "scheme")]
    score = CountedScore(score_fn)
    field = probability_flow(score, sde)
    for i, t, s in steps_of(grid, progress):
        x = apply_callback(callback, i, s, rk_step(field, tableau, x, t, s))
    return x, score.nfe


class _FiniteWatch:
    """A field that records, on the state's device and without a host sync, whether any of its
    values was NaN or infinite (:meth:`saw_nonfinite` syncs once, after a failed solve)."""

    def __init__(self, field: Callable[[float, Tensor], Tensor], x: Tensor) -> None:
        self.field = field
        self.bad = torch.zeros((), dtype=torch.bool, device=x.device)

    def __call__(self, t: float, x: Tensor) -> Tensor:
        out = self.field(t, x)
        self.bad = self.bad | ~torch.isfinite(out).all()
        return out

    def saw_nonfinite(self) -> bool:
        return bool(self.bad)


def _log_snr_field(field: Callable[[float, Tensor], Tensor], sde: LinearSDE) -> Callable[[float, Tensor], Tensor]:
    """The same ODE in ``lambda``: ``dx/dlambda = F(t(lambda), x) / lambda'(t)``, ``lambda' = alpha'/alpha - sigma'/sigma``."""

    def dx_dlam(lam: float, x: Tensor) -> Tensor:
        t = sde.t_of_log_snr(torch.tensor(lam, dtype=torch.float64))  # float64 on the CPU
        dlam = sde.dalpha(t) / sde.alpha(t) - sde.dsigma(t) / sde.sigma(t)
        return field(float(t), x) / float(dlam)

    return dx_dlam


def ode_adaptive(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x: Tensor,
    grid: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "torchdiffeq:dopri5",
    variable: str = "t",
    max_nfe: int = 20000,
    generator: torch.Generator | None = None,
    callback=None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Solve the probability-flow ODE adaptively from ``grid[0]`` to ``grid[-1]`` (either direction),
    restarting at each interior grid time (where ``callback`` may replace the state).  ``solver``:
    one of :data:`scoresde.rk.ADAPTIVE_METHODS` (:func:`scoresde.rk.solve`).  The default is the
    paper's, torchdiffeq's dopri5 (elementary step control).  ``"dopri5"`` under PI control errs
    less at equal NFE on the oracle mixtures and its error follows the tolerance steadily, but at
    a given tolerance it takes smaller steps: on the trained digits model at ``1e-5``, 740 NFE
    against 284 for the same sample quality (``benchmarks/ode_solvers.py``, BENCHMARKS.md).
    ``variable``: ``"t"`` or ``"log-snr"`` (LinearSDE only).  At most ``max_nfe`` score evaluations, then ``RuntimeError``.  Deterministic:
    ``generator`` is unused."""
    check_positive(rtol, "rtol")
    check_positive(atol, "atol")
    check_choice(variable, ("t", "log-snr"), "variable")
    check_choice(solver, ADAPTIVE_METHODS, "solver")
    check_int(max_nfe, "max_nfe", 1)
    if variable == "log-snr" and not isinstance(sde, LinearSDE):
        raise ValueError("variable='log-snr' needs a LinearSDE")
    check_finite(x, "the start state")
    score = CountedScore(score_fn, max_nfe=max_nfe)
    field = probability_flow(score, sde)
    watch = _FiniteWatch(_log_snr_field(field, sde) if variable == "log-snr" else field, x)
    to_var = (lambda t: float(sde.log_snr(torch.tensor(t, dtype=torch.float64)))) if variable == "log-snr" else float
    for i, t, s in steps_of(grid, progress):
        try:
            x = solve(watch, x, to_var(t), to_var(s), solver, rtol=rtol, atol=atol, max_steps=max_nfe)
        except (RuntimeError, ValueError, AssertionError) as err:  # a NaN field ends in a step or time error
            if watch.saw_nonfinite():
                raise FloatingPointError(f"the probability-flow field (the score) turned non-finite between "
                                         f"t={t:.6g} and t={s:.6g}") from err
            raise
        x = apply_callback(callback, i, s, x)
    return x, score.nfe


# -- the latent code -----------------------------------------------------------------------------
def _flow_between(score_fn, sde: SDE, x: Tensor, span: Tensor, rtol: float, atol: float, options: dict,
                  name: str):
    check_finite(x, name)
    with torch.no_grad():
        out, nfe = ode_adaptive(score_fn, sde, x, span, rtol=rtol, atol=atol, **options)
    return out, SampleInfo(nfe=nfe, method="ode", grid=span)


def _latent_span(sde: SDE, t_max: float | None) -> Tensor:
    """``[eps, t_max]`` with ``t_max`` defaulting to :func:`~.grids.default_t_max` (``T``)."""
    return torch.tensor([sde.eps, default_t_max(sde) if t_max is None else t_max], dtype=torch.float64)


def encode(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_max: float | None = None,
    **options,
) -> tuple[Tensor, SampleInfo]:
    """The latent code ``z = x(t_max)`` of data ``x = x(eps)`` by the probability-flow ODE
    (adaptive, options as :func:`ode_adaptive`).  Returns ``(z, info)``."""
    return _flow_between(score_fn, sde, x, _latent_span(sde, t_max), rtol, atol, options, "encode: x")


def decode(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    z: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_max: float | None = None,
    **options,
) -> tuple[Tensor, SampleInfo]:
    """Data ``x(eps)`` from a latent ``z = x(t_max)``: the inverse of :func:`encode`."""
    return _flow_between(score_fn, sde, z, _latent_span(sde, t_max).flip(0), rtol, atol, options, "decode: z")


def slerp(z0: Tensor, z1: Tensor, w: float | Tensor) -> Tensor:
    """Spherical interpolation of latents per sample:
    ``sin((1-w) theta)/sin(theta) z0 + sin(w theta)/sin(theta) z1``, ``cos theta = <z0, z1>/(|z0||z1|)``
    (Gaussian latents keep their norm; linear interpolation would shrink it)."""
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    w = torch.as_tensor(w, dtype=z0.dtype, device=z0.device)
    cos = batch_sum(z0 * z1) / (batch_sum(z0**2) * batch_sum(z1**2)).sqrt()
    theta = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(theta).clamp_min(1e-12)
    c0 = torch.where(theta > 1e-6, torch.sin((1 - w) * theta) / sin, 1 - w)
    c1 = torch.where(theta > 1e-6, torch.sin(w * theta) / sin, w)
    return append_dims(c0, z0.ndim) * z0 + append_dims(c1, z0.ndim) * z1
