"""Fast solvers in the log-SNR ``lambda = log(alpha / sigma)`` for every LinearSDE.

All of them read the score through Tweedie's denoiser ``x0_hat = (x + sigma^2 s) / alpha`` and
move between grid times ``t -> s < t`` with ``h = lambda(s) - lambda(t) > 0``; each loop below is
the method's equation, one step per iteration:

* :func:`ddim` -- the exponential integrator of the marginal-preserving family
  ``dx = [f x - (1 + eta^2)/2 g^2 s] dt + eta g dw_bar`` with ``x0_hat`` frozen over the step::

      x_s = (sigma_s/sigma_t) e^{-eta^2 h} x_t + alpha_s (1 - e^{-(1+eta^2) h}) x0_hat
            + sigma_s sqrt(1 - e^{-2 eta^2 h}) z

  (Song et al. 2021, DDIM; exact for the linear part; ``eta = 0`` is DDIM, ``eta = 1`` is the exact
  posterior ``q(x_s | x_t, x0_hat)``: DDPM's ancestral step for VP, SMLD's for VE).  Exact where
  ``x0_hat`` is constant along the path (a point mass), first order otherwise.
* :func:`dpm_solver_pp` -- DPM-Solver++ multistep of order ``k`` (Lu et al. 2022, 2M/3M): the exact
  solution ``x_s = (sigma_s/sigma_t) x_t + alpha_s int_0^h e^{u-h} x0(u) du`` with ``x0(u)`` the
  polynomial through the last ``k`` denoised values; ``corrector=True`` adds UniPC's corrector
  (Zhao et al. 2023: the polynomial through the new value too, same NFE).  ``solver_type`` picks
  the quadrature: ``"exact"`` (ours, the integral of the polynomial) or diffusers' forms
  (:func:`moments`).
* :func:`edm_heun` -- EDM's second-order Heun sampler (Karras et al. 2022, Alg. 2) on
  ``dy/dsigma~ = (y - x0_hat)/sigma~`` with ``y = x / alpha`` and ``sigma~ = sigma / alpha``, optional churn.

Their default grid is ``log-snr-fine`` (:mod:`.grids`: uniform in ``lambda`` on ``[-3, 5.5]``, where
the denoiser of data with widths 0.01 to 20 changes, sparse tails of bounded mass outside), and ``sample()``'s default
method is UniPC at 20 NFE, the fewest at the floor on multi-scale, rare-mode and 256-D mixtures.

A grid may end where ``sigma = 0`` (``t = 0`` of VP, sub-VP, cosine and the rectified flow, what
diffusers' ``final_sigmas_type="zero"`` does): there ``h = inf`` and every method's last step is
its limit, the denoised prediction ``x_0 = alpha_s x0_hat(x_t, t)`` (first order; EDM's Euler step
to ``sigma~ = 0``), with no extra NFE.  A time where the kernel has no log-SNR elsewhere on the grid
(``alpha = 0``, or ``sigma = 0`` before the end) is a ``ValueError`` naming it (:func:`fast_kernel`).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .._tensor import check_choice, randn_like
from ..sde import LinearSDE
from ._common import (
    CountedScore,
    Kernel,
    apply_callback,
    coeffs,
    device_times,
    kernel_at,
    step_range,
    tweedie,
)

_GL_NODES, _GL_WEIGHTS = (torch.tensor(v, dtype=torch.float64) for v in np.polynomial.legendre.leggauss(24))


def fast_kernel(sde: LinearSDE, grid: Tensor) -> Kernel:
    """:func:`kernel_at` on ``grid`` after checking that the fast solvers can take it: a finite
    log-SNR at every time but the last, which may also be ``+inf`` (``sigma = 0``: the last step
    lands on the denoised ``x0``).  ``ValueError`` naming the first time that fails."""
    kern = kernel_at(sde, grid)
    ok = torch.isfinite(kern.lam)
    ok[-1] = ok[-1] | (kern.lam[-1] == math.inf)
    if not bool(ok.all()):
        i = int((~ok).nonzero()[0])
        raise ValueError(
            f"grid time {float(grid[i]):.6g} has alpha = {float(kern.alpha[i]):.3g}, sigma = {float(kern.sigma[i]):.3g}: "
            "the fast solvers need alpha > 0 at every time and sigma > 0 before the last one (start at T - eps)")
    return kern


def check_eta(eta: float) -> float:
    """``eta`` of the marginal-preserving family: a finite number ``>= 0``."""
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    return eta


def eta_weights(kern: Kernel, eta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per step ``t = t_i -> s = t_{i+1}`` of ``kern``'s times, ``(k_x, k_0, k_z)`` with
    ``x_s = k_x x_t + k_0 x0_hat + k_z z`` (the formula in the module docstring; at ``h = inf``
    the limit ``(0, alpha_s, 0)``)."""
    h = kern.lam[1:] - kern.lam[:-1]
    decay = torch.exp(-(eta**2) * h) if eta > 0 else torch.ones_like(h)
    k_x = kern.sigma[1:] / kern.sigma[:-1] * decay
    k_0 = -kern.alpha[1:] * torch.expm1(-(1 + eta**2) * h)
    k_z = kern.sigma[1:] * torch.sqrt(-torch.expm1(-2 * eta**2 * h)) if eta > 0 else torch.zeros_like(h)
    return k_x, k_0, k_z


def eta_step(
    x: Tensor, x0: Tensor, sde: LinearSDE, t: float, s: float, eta: float, generator: torch.Generator | None
) -> Tensor:
    """One exponential-integrator step ``t -> s`` of the eta family (formula in the module docstring)."""
    k_x, k_0, k_z = (float(k) for k in eta_weights(kernel_at(sde, [t, s]), eta))
    out = x.mul(k_x).add_(x0, alpha=k_0)
    return out.add_(randn_like(x, generator), alpha=k_z) if eta > 0 else out


def ddim(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: LinearSDE,
    x: Tensor,
    grid: Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    callback=None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """DDIM / the eta family (:func:`eta_weights`): one NFE per step.  ``eta = 0`` and ``1``
    coincide with DDIM's own ``eta``; in between DDIM's noise level differs, and ``eta > 1`` is allowed."""
    eta = check_eta(eta)
    score = CountedScore(score_fn)
    kern, times = fast_kernel(sde, grid), device_times(grid, x)
    alpha, sigma = kern.alpha.tolist(), kern.sigma.tolist()
    k_x, k_0, k_z = (w.tolist() for w in eta_weights(kern, eta))
    for i in step_range(len(grid) - 1, progress):
        x0 = tweedie(x, score(x, times[i]), alpha[i], sigma[i])
        x_s = k_x[i] * x + k_0[i] * x0
        if eta > 0:
            x_s = x_s + k_z[i] * randn_like(x, generator)
        x = apply_callback(callback, i, times[i + 1], x_s)
    return x, score.nfe


# -- DPM-Solver++ multistep -------------------------------------------------------------------------
SOLVER_TYPES = ("exact", "midpoint", "heun", "bh1", "bh2")


def moments(h: float, n: int, solver_type: str = "exact") -> list[float]:
    """``I_k = int_0^h e^{u-h} (u/h)^k du`` for ``k < n`` (24-point Gauss--Legendre: the integrand is
    analytic, so this is exact to rounding for the steps met in sampling), or the forms that
    diffusers' schedulers use in their place, for reproducing their runs:

    * ``"midpoint"`` -- ``DPMSolverMultistepScheduler(solver_type="midpoint")``, its default: a
      two-node step takes ``I_1 = I_0 / 2`` (not exact on a linear ``x0(u)``), a three-node step
      ``I_2 / 2`` (half the quadratic term, not exact on a quadratic ``x0(u)``);
    * ``"heun"`` -- ``solver_type="heun"``: exact with two nodes (ours), ``I_2 / 2`` with three;
    * ``"bh2"`` / ``"bh1"`` -- ``UniPCMultistepScheduler(solver_type=...)``: a two-node integral
      (its order-2 predictor, order-1 corrector) takes the hard-coded ``rho = 1/2``:
      ``I_1 = I_0 / 2`` (bh2) or ``h / 2`` (bh1); more nodes are exact.
    """
    v = 0.5 * (_GL_NODES + 1)  # nodes on [0, 1]; u = h v
    w = 0.5 * _GL_WEIGHTS * h * torch.exp(h * (v - 1))
    out = (w @ v[:, None] ** torch.arange(n, dtype=torch.float64)).tolist()
    if solver_type in ("midpoint", "bh2", "bh1") and n == 2:
        out[1] = out[0] / 2 if solver_type != "bh1" else h / 2
    if solver_type in ("midpoint", "heun") and n == 3:
        out[2] = out[2] / 2
    return out


def multistep_weights(us: list[float], h: float, solver_type: str = "exact") -> list[float]:
    """Weights ``w_j`` with ``int_0^h e^{u-h} p(u) du = sum_j w_j m_j`` for the polynomial ``p``
    through ``(u_j, m_j)`` (``u`` = log-SNR offset from the current time): ``w = V^{-T} I`` with the
    Vandermonde matrix ``V_jk = (u_j / h)^k`` and the moments ``I`` of :func:`moments`."""
    if not math.isfinite(h):
        if len(us) != 1:
            raise ValueError("a step to sigma = 0 (h = inf) takes one node: the last denoised value")
        return [1.0]
    v = torch.tensor(us, dtype=torch.float64) / h
    vander = v[:, None] ** torch.arange(len(us), dtype=torch.float64)
    rhs = torch.tensor(moments(h, len(us), solver_type), dtype=torch.float64)
    return torch.linalg.solve(vander.T, rhs).tolist()


# grids of fewer steps lower the order of their final steps by default (DPM-Solver's rule, as in
# diffusers' DPMSolverMultistepScheduler): on finer grids the order-1 last step would bound the
# global order at 2 (measured on the hard mixtures: no row needs it from 15 steps on, BENCHMARKS.md)
LOWER_ORDER_FINAL_BELOW = 15


def step_orders(lam: Tensor, order: int, lower_order_final: bool | None, max_step_ratio: float) -> list[int]:
    """Order of each step ``i``: ``min(order, i + 1)`` (warm-up), also ``<= N - i`` with
    ``lower_order_final`` (``None``: on grids of fewer than :data:`LOWER_ORDER_FINAL_BELOW` steps),
    1 on a step to ``sigma = 0``, and lowered until the step ``h_i`` is at most
    ``max_step_ratio`` times each gap between the nodes it uses (``h_{i-1} .. h_{i-k+1}``), so no
    step extrapolates its polynomial far past its nodes -- every long step, not just the first."""
    n = len(lam) - 1
    if lower_order_final is None:
        lower_order_final = n < LOWER_ORDER_FINAL_BELOW
    h = (lam[1:] - lam[:-1]).tolist()
    out = []
    for i in range(n):
        k = min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
        if not math.isfinite(h[i]):
            k = 1
        while k > 1 and h[i] > max_step_ratio * min(h[i - k + 1 : i]):
            k -= 1
        out.append(k)
    return out


def dpm_solver_pp(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: LinearSDE,
    x: Tensor,
    grid: Tensor,
    *,
    order: int = 3,
    corrector: bool = False,
    solver_type: str = "exact",
    lower_order_final: bool | None = None,
    max_step_ratio: float = 2.0,
    generator: torch.Generator | None = None,
    callback=None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """DPM-Solver++(kM) in data prediction, one NFE per step (N steps spend N evaluations)::

        x_s = (sigma_s / sigma_t) x_t + alpha_s sum_j w_j x0_hat_j,   w = multistep_weights(u_j, h)

    the exact step for the polynomial ``x0(u)`` through the last ``k`` denoised values
    (:func:`step_orders`: warm-up at lower order; with ``lower_order_final`` -- by default on grids
    of fewer than 15 steps -- the last steps drop to order ``N - i``; a step longer than ``max_step_ratio`` times a gap between its nodes is taken at
    lower order, since extrapolating far past the nodes overshoots where ``x0_hat`` saturates).
    ``corrector=True`` (UniPC) re-integrates the step with the polynomial through the value
    evaluated at the new point, which the next step needs anyway.  ``solver_type``: ``"exact"``,
    or diffusers' ``"midpoint"``/``"heun"`` (DPM-Solver++) and ``"bh1"``/``"bh2"`` (UniPC, with the
    corrector) for reproducing their runs (:func:`moments`); ``order = 4`` is ``"exact"`` only.
    Observed order on the default grid (Gaussian data, 80-640 steps, BENCHMARKS.md): 2M 2.0,
    UniPC 3.0-4.0 (its corrector lifts the order-1 warm-up and long steps), 3M 2.3-2.5: its
    order-1 first step (and on sub-VP / RF the order-1 step into the sparse tail) bounds it at 2;
    correcting those steps restores ~2.9 asymptotically but costs NFE to the floor at 10-40 steps.
    """
    if isinstance(order, bool) or order not in (1, 2, 3, 4):
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
    check_choice(solver_type, list(SOLVER_TYPES), "solver_type")
    if solver_type != "exact" and (order > 3 or (solver_type in ("bh1", "bh2")) != bool(corrector)):
        raise ValueError(f"solver_type {solver_type!r} is diffusers' "
                         f"{'UniPC (needs corrector=True)' if solver_type.startswith('bh') else 'DPM-Solver++ (corrector=False)'}"
                         f", orders 1-3; got order={order}, corrector={corrector}")
    score = CountedScore(score_fn)
    n = len(grid) - 1
    kern, times = fast_kernel(sde, grid), device_times(grid, x)
    orders = step_orders(kern.lam, order, lower_order_final, max_step_ratio)
    alpha, sigma, lam = kern.alpha.tolist(), kern.sigma.tolist(), kern.lam.tolist()

    def integrate(x_t: Tensor, i: int, denoised: list[Tensor], nodes: list[float]) -> Tensor:
        """``(sigma_s/sigma_t) x_t + alpha_s sum_j w_j m_j`` over the nodes (log-SNR offsets from lam_i)."""
        w = multistep_weights(nodes, lam[i + 1] - lam[i], solver_type)
        return sum((alpha[i + 1] * w_j * m_j for w_j, m_j in zip(w, denoised)), (sigma[i + 1] / sigma[i]) * x_t)

    denoised = [tweedie(x, score(x, times[0]), alpha[0], sigma[0])]
    for i in step_range(n, progress):
        k = orders[i]
        nodes = [lam[j] - lam[i] for j in range(i - k + 1, i + 1)]
        x_s = integrate(x, i, denoised[-k:], nodes)
        if i < n - 1:
            denoised.append(tweedie(x_s, score(x_s, times[i + 1]), alpha[i + 1], sigma[i + 1]))
            if corrector:
                x_s = integrate(x, i, denoised[-(k + 1):], nodes + [lam[i + 1] - lam[i]])
            del denoised[: -(order + 1)]
        x = apply_callback(callback, i, times[i + 1], x_s)
    return x, score.nfe


# -- EDM Heun -------------------------------------------------------------------------------------
def edm_heun(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: LinearSDE,
    x: Tensor,
    grid: Tensor,
    *,
    churn: float = 0.0,
    churn_min: float = 0.0,
    churn_max: float = float("inf"),
    churn_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback=None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """EDM's Heun sampler (Karras et al. 2022, Alg. 2) in ``y = x/alpha``, ``v = sigma~ = sigma/alpha``::

        d = (y - x0_hat(y, v)) / v,   y' = y + (v_s - v) d,   y_s = y + (v_s - v) (d + d') / 2

    with ``d'`` the slope at ``(y', v_s)``: 2 NFE per step, 1 on a last step to ``v_s = 0`` (Euler,
    which lands on ``x0_hat``).  With ``churn > 0`` a step whose ``v`` lies in ``[churn_min, churn_max]``
    first raises it to ``v^ = min(v (1 + gamma), v_0)``, ``gamma = min(churn / N, sqrt(2) - 1)``,
    adding noise of std ``sqrt(v^2 - v^2) churn_noise``, and starts from ``t^ = t(lambda = -log v^)``.
    """
    if churn < 0 or churn_noise < 0:
        raise ValueError(f"churn and churn_noise must be >= 0, got {churn}, {churn_noise}")
    score = CountedScore(score_fn)
    n = len(grid) - 1
    kern, times = fast_kernel(sde, grid), device_times(grid, x)
    alpha, sigma, v = kern.alpha.tolist(), kern.sigma.tolist(), torch.exp(-kern.lam).tolist()
    gamma = min(churn / n, math.sqrt(2) - 1)

    def slope(y: Tensor, t: Tensor, a: float, s: float, v_t: float) -> Tensor:
        """``dy/dv = (y - x0_hat) / v`` at ``x = a y``."""
        return (y - tweedie(a * y, score(a * y, t), a, s)) / v_t

    y = x / alpha[0]
    for i in step_range(n, progress):
        t_hat, a_hat, s_hat, v_hat = times[i], alpha[i], sigma[i], v[i]
        if churn > 0 and churn_min <= v[i] <= churn_max:
            v_hat = min(v[i] * (1 + gamma), v[0])
            y = y + math.sqrt(v_hat**2 - v[i] ** 2) * churn_noise * randn_like(y, generator)
            t_hat = sde.t_of_log_snr(torch.tensor(-math.log(v_hat), dtype=torch.float64))
            a_hat, s_hat = coeffs(sde, float(t_hat))
            t_hat = t_hat.to(dtype=x.dtype, device=x.device)
        d = slope(y, t_hat, a_hat, s_hat, v_hat)
        y_s = y + (v[i + 1] - v_hat) * d
        if v[i + 1] > 0:
            y_s = y + (v[i + 1] - v_hat) * 0.5 * (d + slope(y_s, times[i + 1], alpha[i + 1], sigma[i + 1], v[i + 1]))
        y = y_s if callback is None else apply_callback(callback, i, times[i + 1], y_s * alpha[i + 1]) / alpha[i + 1]
    return y * alpha[-1], score.nfe
