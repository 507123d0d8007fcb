"""Fast solvers in the log-SNR ``lambda = log(alpha / sigma)`` for every LinearSDE.

All of them read the score through Tweedie's denoiser ``x0_hat = (x + sigma^2 s) / alpha`` and
move between grid times ``t -> s < t`` with ``h = lambda(s) - lambda(t) > 0``:

* :func:`ddim` -- the exponential integrator of the marginal-preserving family
  ``dx = [f x - (1 + eta^2)/2 g^2 s] dt + eta g dw_bar`` with ``x0_hat`` frozen over the step::

      x_s = (sigma_s/sigma_t) e^{-eta^2 h} x_t + alpha_s (1 - e^{-(1+eta^2) h}) x0_hat
            + sigma_s sqrt(1 - e^{-2 eta^2 h}) z

  (exact for the linear part; ``eta = 0`` is DDIM, ``eta = 1`` is the exact posterior
  ``q(x_s | x_t, x0_hat)``: DDPM's ancestral step for VP, SMLD's for VE).  Exact where ``x0_hat`` is
  constant along the path (a point mass), first order otherwise, Gaussian data included: one step
  of N(0, 1) data on VE from sigma 2 to 1 scales by 0.6, the flow by sqrt(2/5) = 0.632.
* :func:`dpm_solver_pp` -- DPM-Solver++ multistep of any order ``k`` (2M, 3M): the exact solution
  ``x_s = (sigma_s/sigma_t) x_t + sigma_s int e^lambda x0(lambda) dlambda`` with ``x0(lambda)`` the
  polynomial through the last ``k`` denoised values; ``corrector=True`` adds the UniPC-style
  corrector (the polynomial through the new value too, same NFE).
* :func:`edm_heun` -- EDM's second-order Heun sampler on ``dy/dsigma~ = (y - x0_hat)/sigma~`` with
  ``y = x / alpha`` and ``sigma~ = sigma / alpha``, optional churn.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..sde import LinearSDE
from ._common import CountedScore, apply_callback, coeffs, denoise, log_snr, randn_like, steps_of

_GL_NODES, _GL_WEIGHTS = (torch.tensor(v, dtype=torch.float64) for v in np.polynomial.legendre.leggauss(24))


def check_eta(eta: float) -> float:
    """``eta`` of the marginal-preserving family: a finite number ``>= 0``."""
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    return eta


def eta_step(
    x: Tensor, x0: Tensor, sde: LinearSDE, t: float, s: float, eta: float, generator: torch.Generator | None
) -> Tensor:
    """One exponential-integrator step ``t -> s`` of the eta family (formula in the module docstring)."""
    a_s, sig_s = coeffs(sde, s)
    _, sig_t = coeffs(sde, t)
    h = log_snr(sde, s) - log_snr(sde, t)
    out = (sig_s / sig_t) * math.exp(-(eta**2) * h) * x - a_s * math.expm1(-(1 + eta**2) * h) * x0
    if eta > 0:
        out = out + sig_s * math.sqrt(-math.expm1(-2 * eta**2 * h)) * randn_like(x, generator)
    return out


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
    """DDIM / the eta family (see :func:`eta_step`): one NFE per step.  ``eta = 0`` and ``1``
    coincide with DDIM's own ``eta``; in between DDIM's noise level differs, and ``eta > 1`` is allowed."""
    eta = check_eta(eta)
    score = CountedScore(score_fn)
    for i, t, s in steps_of(grid, progress):
        x = eta_step(x, denoise(score, sde, x, t), sde, t, s, eta, generator)
        x = apply_callback(callback, i, s, x)
    return x, score.nfe


# -- DPM-Solver++ multistep -------------------------------------------------------------------------
def _exp_moments(h: float, n: int) -> Tensor:
    """``I_k = int_0^h e^{u-h} (u/h)^k du`` for ``k < n`` (24-point Gauss--Legendre; the integrand is
    analytic, so this is exact to rounding for the step sizes met in sampling)."""
    v = 0.5 * (_GL_NODES + 1)  # nodes on [0, 1]; u = h v
    w = 0.5 * _GL_WEIGHTS * h * torch.exp(h * (v - 1))
    return torch.stack([(w * v**k).sum() for k in range(n)])


def multistep_weights(us: list[float], h: float) -> list[float]:
    """Weights ``w_j`` with ``int_0^h e^{u-h} p(u) du = sum_j w_j m_j`` for the polynomial ``p``
    through ``(u_j, m_j)`` (``u`` = log-SNR offset from the current time): ``w = V^{-T} I`` with the
    Vandermonde matrix ``V_jk = (u_j / h)^k``."""
    v = torch.tensor(us, dtype=torch.float64) / h
    vander = v[:, None] ** torch.arange(len(us), dtype=torch.float64)
    return torch.linalg.solve(vander.T, _exp_moments(h, len(us))).tolist()


def _exp_multistep(x: Tensor, sde: LinearSDE, t: float, s: float, history: list[tuple[float, Tensor]]) -> Tensor:
    """``x_s = (sigma_s/sigma_t) x_t + alpha_s sum_j w_j m_j`` over ``history = [(lambda_j, m_j)]``."""
    a_s, sig_s = coeffs(sde, s)
    _, sig_t = coeffs(sde, t)
    lam_t = log_snr(sde, t)
    weights = multistep_weights([lam - lam_t for lam, _ in history], log_snr(sde, s) - lam_t)
    out = (sig_s / sig_t) * x
    for w, (_, m) in zip(weights, history):
        out = out + (a_s * w) * m
    return out


def dpm_solver_pp(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: LinearSDE,
    x: Tensor,
    grid: Tensor,
    *,
    order: int = 3,
    corrector: bool = False,
    lower_order_final: bool = True,
    max_step_ratio: float = 2.0,
    generator: torch.Generator | None = None,
    callback=None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """DPM-Solver++(kM) in data prediction, one NFE per step (N steps spend N evaluations).

    Step ``i`` integrates ``x_s = (sigma_s/sigma_t) x_t + alpha_s int_0^h e^{u-h} x0(u) du`` exactly for
    the polynomial ``x0(u)`` through the last ``min(order, i + 1)`` denoised values (warm-up at lower
    order; with ``lower_order_final`` the last steps drop to order ``N - i``, which keeps the large
    final log-SNR step stable), and a step longer than ``max_step_ratio`` times the previous one is
    taken at order 1: extrapolating the polynomial far past its nodes overshoots where ``x0_hat``
    saturates (the long high-SNR tail of sub-VP).  ``corrector=True`` (UniPC-style) re-integrates the step with the
    polynomial through the value evaluated at the new point, which the next step needs anyway.
    """
    if isinstance(order, bool) or order not in (1, 2, 3, 4):
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
    score = CountedScore(score_fn)
    n = len(grid) - 1
    history = [(log_snr(sde, float(grid[0])), denoise(score, sde, x, float(grid[0])))]
    for i, t, s in steps_of(grid, progress):
        k = min(order, len(history), n - i) if lower_order_final else min(order, len(history))
        if k > 1 and log_snr(sde, s) - log_snr(sde, t) > max_step_ratio * (log_snr(sde, t) - history[-2][0]):
            k = 1  # a step far longer than the node spacing: extrapolating the polynomial is unsafe
        x_new = _exp_multistep(x, sde, t, s, history[-k:])
        if i < n - 1:
            history.append((log_snr(sde, s), denoise(score, sde, x_new, s)))
            if corrector:
                x_new = _exp_multistep(x, sde, t, s, history[-(k + 1):])
            del history[: -(order + 1)]
        x = apply_callback(callback, i, s, x_new)
    return x, score.nfe


# -- EDM Heun -------------------------------------------------------------------------------------
def _nsr(sde: LinearSDE, t: float) -> float:
    """Noise-to-signal ratio ``sigma~ = sigma / alpha = exp(-lambda)``."""
    return math.exp(-log_snr(sde, t))


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
    """EDM's Heun sampler (Karras et al. 2022, Alg. 2) in ``y = x/alpha``, ``sigma~ = sigma/alpha``::

        dy/dsigma~ = (y - x0_hat(alpha y, t)) / sigma~

    Each step is Euler then the trapezoidal correction (2 NFE).  With ``churn > 0`` steps with
    ``sigma~`` in ``[churn_min, churn_max]`` first raise the noise to ``sigma^ = sigma~ (1 + gamma)``,
    ``gamma = min(churn / N, sqrt(2) - 1)``, by adding ``sqrt(sigma^2 - sigma~^2) churn_noise z``.
    """
    if churn < 0 or churn_noise < 0:
        raise ValueError(f"churn and churn_noise must be >= 0, got {churn}, {churn_noise}")
    score = CountedScore(score_fn)
    n = len(grid) - 1
    nsr_top = _nsr(sde, float(grid[0]))

    def slope(y: Tensor, t: float, nsr: float) -> Tensor:
        a, _ = coeffs(sde, t)
        return (y - denoise(score, sde, a * y, t)) / nsr

    y = x / coeffs(sde, float(grid[0]))[0]
    for i, t, s in steps_of(grid, progress):
        nsr_t, nsr_s = _nsr(sde, t), _nsr(sde, s)
        if churn > 0 and churn_min <= nsr_t <= churn_max:
            nsr_hat = min(nsr_t * (1 + min(churn / n, math.sqrt(2) - 1)), nsr_top)
            y = y + math.sqrt(nsr_hat**2 - nsr_t**2) * churn_noise * randn_like(y, generator)
            nsr_t, t = nsr_hat, float(sde.t_of_log_snr(torch.tensor(-math.log(nsr_hat), dtype=torch.float64)))
        d = slope(y, t, nsr_t)
        y_euler = y + (nsr_s - nsr_t) * d
        y = y + (nsr_s - nsr_t) * 0.5 * (d + slope(y_euler, s, nsr_s))
        a_s, _ = coeffs(sde, s)
        y = apply_callback(callback, i, s, a_s * y) / a_s
    return y * coeffs(sde, float(grid[-1]))[0], score.nfe
