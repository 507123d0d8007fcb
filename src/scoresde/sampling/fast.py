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

Every coefficient of a run (kernel values, step weights, orders, churn levels) is computed once
for the whole grid, vectorised in float64 on the host, before the loop; a step is then a few fused
passes over the state (``torch.add(..., alpha=c)`` and in-place updates of tensors the solver
made), with Tweedie's denoiser folded into the step where the step is linear in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..sde import LinearSDE
from .._tensor import randn_like
from ._common import CountedScore, Kernel, apply_callback, device_times, kernel_at, step_range, tweedie

_GL_NODES, _GL_WEIGHTS = (torch.tensor(v, dtype=torch.float64) for v in np.polynomial.legendre.leggauss(24))


def check_eta(eta: float) -> float:
    """``eta`` of the marginal-preserving family: a finite number ``>= 0``."""
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    return eta


def eta_weights(kern: Kernel, eta: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per step ``t = t_i -> s = t_{i+1}`` of ``kern``'s times, ``(k_x, k_0, k_z)`` with
    ``x_s = k_x x_t + k_0 x0_hat + k_z z`` (the formula in the module docstring, ``h = lam_s - lam_t``)."""
    h = kern.lam[1:] - kern.lam[:-1]
    k_x = kern.sigma[1:] / kern.sigma[:-1] * torch.exp(-(eta**2) * h)
    k_0 = -kern.alpha[1:] * torch.expm1(-(1 + eta**2) * h)
    k_z = kern.sigma[1:] * torch.sqrt(-torch.expm1(-2 * eta**2 * h))
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
    """DDIM / the eta family (see :func:`eta_step`): one NFE per step.  ``eta = 0`` and ``1``
    coincide with DDIM's own ``eta``; in between DDIM's noise level differs, and ``eta > 1`` is allowed.

    With Tweedie's ``x0_hat = (x + sigma_t^2 s) / alpha_t`` folded in, a step is
    ``x_s = (k_x + k_0 / alpha_t) x_t + (k_0 sigma_t^2 / alpha_t) s(x_t, t) + k_z z``."""
    eta = check_eta(eta)
    score = CountedScore(score_fn)
    kern, times = kernel_at(sde, grid), device_times(grid, x)
    k_x, k_0, k_z = eta_weights(kern, eta)
    c_x = (k_x + k_0 / kern.alpha[:-1]).tolist()
    c_s = (k_0 * kern.sigma[:-1] ** 2 / kern.alpha[:-1]).tolist()
    c_z = k_z.tolist()
    for i in step_range(len(grid) - 1, progress):
        out = x.mul(c_x[i]).add_(score(x, times[i]), alpha=c_s[i])
        if eta > 0:
            out.add_(randn_like(x, generator), alpha=c_z[i])
        x = apply_callback(callback, i, times[i + 1], out)
    return x, score.nfe


# -- DPM-Solver++ multistep -------------------------------------------------------------------------
def _exp_moments(h: Tensor, n: int) -> Tensor:
    """``I_k = int_0^h e^{u-h} (u/h)^k du`` for ``k < n``, shape ``h.shape + (n,)`` (24-point
    Gauss--Legendre; the integrand is analytic, so this is exact to rounding for the step sizes met
    in sampling)."""
    v = 0.5 * (_GL_NODES + 1)  # nodes on [0, 1]; u = h v
    w = 0.5 * _GL_WEIGHTS * h[..., None] * torch.exp(h[..., None] * (v - 1))
    return w @ v[:, None] ** torch.arange(n, dtype=torch.float64)


def multistep_weights(us: Tensor | list, h: Tensor | float) -> Tensor:
    """Weights ``w_j`` with ``int_0^h e^{u-h} p(u) du = sum_j w_j m_j`` for the polynomial ``p``
    through ``(u_j, m_j)`` (``u`` = log-SNR offset from the current time): ``w = V^{-T} I`` with the
    Vandermonde matrix ``V_jk = (u_j / h)^k``.  Batched: ``us`` ``(..., k)``, ``h`` ``(...)``,
    result ``(..., k)`` (float64)."""
    h = torch.as_tensor(h, dtype=torch.float64)
    v = torch.as_tensor(us, dtype=torch.float64) / h[..., None]
    vander = v[..., :, None] ** torch.arange(v.shape[-1], dtype=torch.float64)
    return torch.linalg.solve(vander.transpose(-1, -2), _exp_moments(h, v.shape[-1]))


@dataclass(frozen=True)
class MultistepPlan:
    """A DPM-Solver++ run laid out before the loop: per step ``i``, the polynomial order, the
    factor ``sigma_s / sigma_t`` and the weights ``alpha_s w_j`` on the last ``order`` denoised
    values (``predict``) and on the last ``order + 1`` with the new one (``correct``), oldest first."""

    order: list[int]
    ratio: list[float]
    predict: list[list[float]]
    correct: list[list[float]]


def _step_orders(lam: Tensor, order: int, lower_order_final: bool, max_step_ratio: float) -> Tensor:
    """Order of each step: ``min(order, i + 1)`` (warm-up), also ``<= N - i`` with
    ``lower_order_final``, and 1 where ``h_i > max_step_ratio h_{i-1}`` (log-SNR step lengths)."""
    n = len(lam) - 1
    i = torch.arange(n)
    k = torch.clamp(i + 1, max=order)
    if lower_order_final:
        k = torch.minimum(k, n - i)
    h = lam[1:] - lam[:-1]
    k[1:] = torch.where((k[1:] > 1) & (h[1:] > max_step_ratio * h[:-1]), 1, k[1:])
    return k


def _weights_by_order(lam: Tensor, alpha_s: Tensor, k: Tensor, extra: int) -> list[list[float]]:
    """Per step ``i``: ``alpha_s w_j`` over the nodes ``lam_{i-k_i+1} .. lam_{i+extra}`` (offsets from
    ``lam_i``), batched over the steps that share an order."""
    h = lam[1:] - lam[:-1]
    out: list[list[float]] = [[] for _ in range(len(k))]
    for order in k.unique().tolist():
        idx = (k == order).nonzero().flatten()
        nodes = idx[:, None] + torch.arange(1 - order, 1 + extra)
        w = alpha_s[idx, None] * multistep_weights(lam[nodes] - lam[idx, None], h[idx])
        for i, row in zip(idx.tolist(), w.tolist()):
            out[i] = row
    return out


def multistep_plan(kern: Kernel, order: int, corrector: bool, lower_order_final: bool,
                   max_step_ratio: float) -> MultistepPlan:
    """The :class:`MultistepPlan` of :func:`dpm_solver_pp` on ``kern``'s grid (float64, vectorised)."""
    k = _step_orders(kern.lam, order, lower_order_final, max_step_ratio)
    ratio = (kern.sigma[1:] / kern.sigma[:-1]).tolist()
    predict = _weights_by_order(kern.lam, kern.alpha[1:], k, 0)
    correct = _weights_by_order(kern.lam, kern.alpha[1:], k, 1) if corrector else []
    return MultistepPlan(k.tolist(), ratio, predict, correct)


def _combine(x: Tensor, ratio: float, weights: list[float], denoised: list[Tensor]) -> Tensor:
    """``ratio x + sum_j weights_j denoised_j`` (one fused pass per term)."""
    out = x.mul(ratio)
    for w, m in zip(weights, denoised):
        out.add_(m, alpha=w)
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
    kern, times = kernel_at(sde, grid), device_times(grid, x)
    plan = multistep_plan(kern, order, corrector, lower_order_final, max_step_ratio)
    alpha, sigma = kern.alpha.tolist(), kern.sigma.tolist()
    denoised = [tweedie(x, score(x, times[0]), alpha[0], sigma[0])]
    for i in step_range(n, progress):
        k = plan.order[i]
        x_new = _combine(x, plan.ratio[i], plan.predict[i], denoised[-k:])
        if i < n - 1:
            denoised.append(tweedie(x_new, score(x_new, times[i + 1]), alpha[i + 1], sigma[i + 1]))
            if corrector:
                x_new = _combine(x, plan.ratio[i], plan.correct[i], denoised[-(k + 1):])
            del denoised[: -(order + 1)]
        x = apply_callback(callback, i, times[i + 1], x_new)
    return x, score.nfe


# -- EDM Heun -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeunLevels:
    """Where each step of :func:`edm_heun` starts after churn: the kernel at ``t^`` (``t`` itself
    where no churn applies), ``sigma^~`` (``nsr``), whether noise is drawn and its std."""

    kern: Kernel
    nsr: Tensor
    churned: list[bool]
    noise_std: list[float]


def heun_levels(sde: LinearSDE, kern: Kernel, churn: float, churn_min: float, churn_max: float,
                churn_noise: float) -> HeunLevels:
    """Steps with ``sigma~_t`` in ``[churn_min, churn_max]`` (and ``churn > 0``) start from
    ``sigma^ = min(sigma~_t (1 + gamma), sigma~_T)``, ``gamma = min(churn / N, sqrt(2) - 1)``, at
    ``t^ = t(lambda = -log sigma^)``, after adding noise of std ``sqrt(sigma^2 - sigma~_t^2) churn_noise``."""
    nsr = torch.exp(-kern.lam[:-1])
    t = kern.t[:-1]
    mask = (nsr >= churn_min) & (nsr <= churn_max) if churn > 0 else torch.zeros_like(nsr, dtype=torch.bool)
    if bool(mask.any()):
        raised = torch.clamp(nsr * (1 + min(churn / len(nsr), math.sqrt(2) - 1)), max=float(torch.exp(-kern.lam[0])))
        std = torch.where(mask, torch.sqrt(raised**2 - nsr**2) * churn_noise, 0.0)
        nsr = torch.where(mask, raised, nsr)
        t = torch.where(mask, sde.t_of_log_snr(-torch.log(nsr)).double(), t)
    else:
        std = torch.zeros_like(nsr)
    return HeunLevels(kernel_at(sde, t), nsr, mask.tolist(), std.tolist())


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

        dy/dsigma~ = (y - x0_hat(alpha y, t)) / sigma~ = -(sigma^2 / (alpha sigma~)) s(alpha y, t)

    (Tweedie's ``x0_hat = y + (sigma^2/alpha) s`` folded in).  Each step is Euler then the
    trapezoidal correction (2 NFE).  With ``churn > 0`` steps with ``sigma~`` in
    ``[churn_min, churn_max]`` first raise the noise (:func:`heun_levels`).
    """
    if churn < 0 or churn_noise < 0:
        raise ValueError(f"churn and churn_noise must be >= 0, got {churn}, {churn_noise}")
    score = CountedScore(score_fn)
    kern, times = kernel_at(sde, grid), device_times(grid, x)
    start = heun_levels(sde, kern, churn, churn_min, churn_max, churn_noise)
    t_hat = device_times(start.kern.t, x)
    a_hat = start.kern.alpha.tolist()
    # -slope / score at the start and at the end of each step, times the step in sigma~
    nsr_s = torch.exp(-kern.lam[1:])
    step = nsr_s - start.nsr
    k_start = (-step * start.kern.sigma**2 / (start.kern.alpha * start.nsr)).tolist()
    k_end = (-step * kern.sigma[1:] ** 2 / (kern.alpha[1:] * nsr_s)).tolist()
    alpha = kern.alpha.tolist()
    y = x / alpha[0]
    for i in step_range(len(grid) - 1, progress):
        if start.churned[i]:
            y = y.add(randn_like(y, generator), alpha=start.noise_std[i])
        d_start = score(y * a_hat[i], t_hat[i])
        y_euler = torch.add(y, d_start, alpha=k_start[i])
        d_end = score(y_euler.mul_(alpha[i + 1]), times[i + 1])
        y = y.add(d_start, alpha=0.5 * k_start[i]).add_(d_end, alpha=0.5 * k_end[i])
        if callback is not None:
            y = apply_callback(callback, i, times[i + 1], y * alpha[i + 1]) / alpha[i + 1]
    return y * alpha[-1], score.nfe
