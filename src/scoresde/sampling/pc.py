"""Predictor-corrector sampling of the reverse-time SDE (Song et al. 2021, Alg. 1).

Each grid step ``t -> s < t`` applies a *predictor* (one step of a discretised reverse SDE) and
then ``corrector_steps`` of a *corrector* (score-based MCMC targeting ``p_s``), as in the paper's
Algorithm 1, so the last corrections act at the final time.  The predictors integrate the
marginal-preserving family (issue 9) in reverse time::

    dx = [f(x, t) - (1 + eta^2)/2 g(t)^2 s(x, t)] dt + eta g(t) dw_bar      (eta = 1: Anderson's SDE)

Predictors (one step ``(score, sde, x, t, s, eta, generator) -> x``; ``pc_sample`` plans a whole
grid's coefficients once, see ``PREDICTORS``):

* ``euler-maruyama``: ``x_s = x + drift (s - t) + eta g(t) sqrt(t - s) z`` (any SDE; ``eta = 0`` is the
  probability-flow Euler step);
* ``reverse-diffusion``: the paper's discretisation through ``sde.discretize`` (``f_i, G_i``):
  ``x_s = x - f_i + (1 + eta^2)/2 G_i^2 s + eta G_i z``;
* ``ancestral``: the exact Gaussian posterior ``q(x_s | x_t, x0_hat)`` of the linear kernel
  (DDPM's step for VP, SMLD's for VE), the ``eta`` exponential step of :func:`~.fast.eta_step`.
  Weak order 1 even with the exact score: its mean is the true ``E[x_s | x_t]`` but its variance
  (DDPM's "fixed small" posterior variance) misses ``B^2 Cov[x0 | x_t]``, ``B = alpha_s (1 - e^{-2h})``,
  per step (see :func:`ancestral`);
* ``srk``: Rößler's SRA1 stochastic Runge--Kutta scheme for additive noise (strong order 1.5, 2 NFE);
* ``none``.

Correctors ``(score, sde, x, t, s, generator, **options) -> x`` at level ``s``:

* ``langevin``: ``x += e s + sqrt(2 e) z`` with the paper's ``e = 2 a (snr |z| / |s|)^2`` (norms averaged over the batch),
  ``a = (alpha_t / alpha_s)^2`` (``1 - beta_i`` for VP, 1 for VE);
* ``annealed-langevin`` (NCSN): ``x += e/2 s + sqrt(e) z``, ``e = step_lr sigma_s^2 / sigma(eps)^2``;
* ``mala``: the Langevin proposal with the paper's ``e``, accepted with the Metropolis--Hastings
  ratio, whose ``log p_s(x') - log p_s(x)`` is the trapezoidal line integral of the score
  ``(s(x) + s(x'))/2 . (x' - x)`` (exact for Gaussian targets); this removes the ``O(e)`` bias of
  unadjusted Langevin (stationary variance ``v / (1 - e / 2v)`` on ``N(0, v)``) at 2 NFE per step;
* ``hmc``: unadjusted Hamiltonian Monte Carlo (no accept/reject: only the score of ``p_s`` is
  known, not its density): fresh momentum ``p ~ N(0, I)``, ``leapfrog_steps`` leapfrog steps of
  size ``delta = sqrt(2 e)`` with the Langevin ``e`` above (``leapfrog_steps = 1`` is exactly the
  Langevin corrector); ``leapfrog_steps`` NFE per corrector step;
* ``none``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .._tensor import append_dims, as_batch_time, batch_sum, check_choice, check_int
from ..sde import SDE, LinearSDE
from ._common import (CountedScore, apply_callback, coeffs, device_times, drift_at, kernel_at, linear_step,
                      randn_like, step_range)
from .fast import check_eta, eta_weights


# -- predictors ----------------------------------------------------------------------------------
# A predictor is planned once per grid: ``plan(sde, grid, eta, x)`` computes every coefficient of
# the run (vectorised, float64 on the host) and returns ``step(score, x, i, generator)``, the step
# ``t_i -> t_{i+1}``.  On a LinearSDE (drift ``f(t) x``) the Euler--Maruyama, reverse-diffusion and
# ancestral steps are all ``x_s = c_x x + c_s s(x, t) + c_z z`` (:func:`linear_step`); other SDEs
# take the per-step forms below, which evaluate the drift at each step.
Step = Callable[[CountedScore, Tensor, int, "torch.Generator | None"], Tensor]


def euler_maruyama(score: CountedScore, sde: SDE, x: Tensor, t: float, s: float, eta: float, generator) -> Tensor:
    """``x_s = x + [f - (1+eta^2)/2 g^2 s](s - t) + eta g(t) sqrt(t - s) z`` (one step, any SDE)."""
    tb = as_batch_time(t, x)
    out = x + sde.reverse_drift(x, tb, score(x, t), eta) * (s - t)
    if eta > 0:
        out = out + append_dims(eta * sde.g(tb) * math.sqrt(t - s), x.ndim) * randn_like(x, generator)
    return out


def reverse_diffusion(score: CountedScore, sde: SDE, x: Tensor, t: float, s: float, eta: float, generator) -> Tensor:
    """``x_s = x - f_i + (1+eta^2)/2 G_i^2 s + eta G_i z`` with ``(f_i, G_i) = sde.discretize(x, t, t - s)``
    (one step, any SDE)."""
    tb = as_batch_time(t, x)
    f_i, g_i = sde.discretize(x, tb, t - s)
    g_i = append_dims(g_i, x.ndim)
    out = x - f_i + 0.5 * (1 + eta**2) * g_i**2 * score(x, t)
    if eta > 0:
        out = out + eta * g_i * randn_like(x, generator)
    return out


def _linear_plan(x: Tensor, grid: Tensor, c_x: Tensor, c_s: Tensor, c_z: Tensor, eta: float) -> Step:
    """The step ``x_s = c_x[i] x + c_s[i] s(x, t_i) + c_z[i] z`` (no draw at ``eta = 0``)."""
    times, c_x, c_s = device_times(grid, x), c_x.tolist(), c_s.tolist()
    c_z = c_z.tolist() if eta > 0 else [None] * len(c_x)

    def step(score: CountedScore, x: Tensor, i: int, generator) -> Tensor:
        return linear_step(x, score(x, times[i]), c_x[i], c_s[i], c_z[i], generator)

    return step


def _per_step(fn: Callable[..., Tensor], sde: SDE, grid: Tensor, eta: float) -> Step:
    """``fn(score, sde, x, t_i, t_{i+1}, eta, generator)`` as a planned step (for SDEs that are not linear)."""
    ts = grid.tolist()
    return lambda score, x, i, generator: fn(score, sde, x, ts[i], ts[i + 1], eta, generator)


def plan_euler_maruyama(sde: SDE, grid: Tensor, eta: float, x: Tensor) -> Step:
    """:func:`euler_maruyama` over ``grid``; on a LinearSDE, with ``dt = s - t``,
    ``c_x = 1 + f(t) dt``, ``c_s = -(1+eta^2)/2 g(t)^2 dt``, ``c_z = eta g(t) sqrt(-dt)``."""
    if not isinstance(sde, LinearSDE):
        return _per_step(euler_maruyama, sde, grid, eta)
    dt = grid[1:] - grid[:-1]
    f, g = drift_at(sde, grid[:-1])
    return _linear_plan(x, grid, 1 + f * dt, -0.5 * (1 + eta**2) * g**2 * dt, eta * g * torch.sqrt(-dt), eta)


def plan_reverse_diffusion(sde: SDE, grid: Tensor, eta: float, x: Tensor) -> Step:
    """:func:`reverse_diffusion` over ``grid``; on a LinearSDE ``f_i = (a - 1) x`` and ``G_i = b``
    with the kernel ``x_t = a x_s + b z`` (``sde.transition(s, t)``), so ``c_x = 2 - a``,
    ``c_s = (1+eta^2)/2 b^2``, ``c_z = eta b``."""
    if not isinstance(sde, LinearSDE):
        return _per_step(reverse_diffusion, sde, grid, eta)
    a, b = (v.double() for v in sde.transition(grid[1:], grid[:-1]))
    return _linear_plan(x, grid, 2 - a, 0.5 * (1 + eta**2) * b**2, eta * b, eta)


def plan_ancestral(sde: LinearSDE, grid: Tensor, eta: float, x: Tensor) -> Step:
    """:func:`ancestral` over ``grid``: :func:`~.fast.eta_weights` ``(k_x, k_0, k_z)`` with Tweedie's
    ``x0_hat = (x + sigma_t^2 s) / alpha_t`` folded in, ``c_x = k_x + k_0 / alpha_t``,
    ``c_s = k_0 sigma_t^2 / alpha_t``, ``c_z = k_z``."""
    kern = kernel_at(sde, grid)
    k_x, k_0, k_z = eta_weights(kern, eta)
    a_t, sig_t = kern.alpha[:-1], kern.sigma[:-1]
    return _linear_plan(x, grid, k_x + k_0 / a_t, k_0 * sig_t**2 / a_t, k_z, eta)


def ancestral(score: CountedScore, sde: LinearSDE, x: Tensor, t: float, s: float, eta: float, generator) -> Tensor:
    """The exponential step of the eta family; at ``eta = 1`` a draw of ``q(x_s | x_t, x0_hat)``::

        x_s = (sigma_s/sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) x0_hat + sigma_s sqrt(1 - e^{-2h}) z

    (``h = lambda_s - lambda_t``).  The true reverse kernel is the mixture of ``q(x_s | x_t, x0)``
    over ``p(x0 | x_t)``: same mean, variance larger by ``alpha_s^2 (1 - e^{-2h})^2 Cov[x0 | x_t]``,
    an ``O(h^2)`` shortfall per step that no single score evaluation reveals.  Summed over a run it
    leaves the samples too concentrated by a relative variance of about one log-SNR step per axis
    (Gaussian data, log-SNR-uniform grid), i.e. a log-density gap of about ``-d h / 2`` nats in
    ``d`` dimensions: first order in the step, visible on 64-D data at 1000 steps.  (One step;
    :func:`plan_ancestral` lays out a whole grid.)"""
    return plan_ancestral(sde, torch.tensor([t, s], dtype=torch.float64), eta, x)(score, x, 0, generator)


def srk(score: CountedScore, sde: SDE, x: Tensor, t: float, s: float, eta: float, generator) -> Tensor:
    """Rößler's SRA1 (strong order 1.5 for additive noise) in reverse time ``tau = -t``, ``h = t - s``::

        H2  = x + 3/4 h a(t, x) + 3/2 b(t - h) I10 / h
        x_s = x + h (a(t, x)/3 + 2 a(t - 3h/4, H2)/3) + b(t - h) (I1 - I10/h) + b(t) I10/h

    with ``a(t, x) = -reverse_drift``, ``b = eta g``, ``I1 = sqrt(h) z1`` and the space-time integral
    ``I10 = h/2 (I1 + sqrt(h/3) z2)`` (``Var = h^3/3``, ``Cov(I1, I10) = h^2/2``).
    """
    h = t - s

    def a(tt: float, y: Tensor) -> Tensor:
        return -sde.reverse_drift(y, as_batch_time(tt, y), score(y, tt), eta)

    def b(tt: float) -> float:
        return eta * float(sde.g(torch.tensor(tt, dtype=torch.float64)))

    i1 = math.sqrt(h) * randn_like(x, generator)
    i10 = 0.5 * h * (i1 + math.sqrt(h / 3) * randn_like(x, generator))
    a1 = a(t, x)
    h2 = x + 0.75 * h * a1 + 1.5 * b(s) * i10 / h
    return x + h * (a1 / 3 + 2 * a(t - 0.75 * h, h2) / 3) + b(s) * (i1 - i10 / h) + b(t) * i10 / h


def plan_srk(sde: SDE, grid: Tensor, eta: float, x: Tensor) -> Step:
    """:func:`srk` over ``grid``; on a LinearSDE the drift ``a(u, y) = -f(u) y + (1+eta^2)/2 g(u)^2 s(y, u)``
    and ``b`` are laid out at ``t``, ``t - 3h/4`` and ``s`` before the loop (same draws, same order)."""
    if not isinstance(sde, LinearSDE):
        return _per_step(srk, sde, grid, eta)
    t, s = grid[:-1], grid[1:]
    h = t - s
    mid = t - 0.75 * h
    (f_t, g_t), (f_m, g_m), (_, g_s) = drift_at(sde, t), drift_at(sde, mid), drift_at(sde, s)
    c = 0.5 * (1 + eta**2)
    t_dev, m_dev = device_times(t, x), device_times(mid, x)
    hs, f_t, f_m = h.tolist(), f_t.tolist(), f_m.tolist()
    q_t, q_m = (c * g_t**2).tolist(), (c * g_m**2).tolist()
    b_t, b_s = (eta * g_t).tolist(), (eta * g_s).tolist()

    def step(score: CountedScore, x: Tensor, i: int, generator) -> Tensor:
        hi = hs[i]
        i1 = randn_like(x, generator).mul_(math.sqrt(hi))
        i10 = torch.add(i1, randn_like(x, generator), alpha=math.sqrt(hi / 3)).mul_(0.5 * hi)
        a1 = x.mul(-f_t[i]).add_(score(x, t_dev[i]), alpha=q_t[i])
        h2 = torch.add(x, a1, alpha=0.75 * hi).add_(i10, alpha=1.5 * b_s[i] / hi)
        s2 = score(h2, m_dev[i])
        a2 = h2.mul_(-f_m[i]).add_(s2, alpha=q_m[i])
        out = torch.add(x, a1, alpha=hi / 3).add_(a2, alpha=2 * hi / 3).add_(i1, alpha=b_s[i])
        return out.add_(i10, alpha=(b_t[i] - b_s[i]) / hi)

    return step


def plan_no_predictor(sde: SDE, grid: Tensor, eta: float, x: Tensor) -> Step:
    """Leave the state unchanged (corrector-only sampling, e.g. NCSN)."""
    return lambda score, x, i, generator: x


PREDICTORS: dict[str, Callable[[SDE, Tensor, float, Tensor], Step]] = {
    "euler-maruyama": plan_euler_maruyama,
    "reverse-diffusion": plan_reverse_diffusion,
    "ancestral": plan_ancestral,
    "srk": plan_srk,
    "none": plan_no_predictor,
}


# -- correctors ----------------------------------------------------------------------------------
def _langevin_step_size(sde: LinearSDE, grad: Tensor, noise: Tensor, t: float, s: float, snr: float) -> Tensor:
    """The paper's ``e = 2 a (snr |z| / |grad|)^2``, ``a = (alpha_t / alpha_s)^2``, with the norms
    averaged over the batch as in the paper's code (per-sample norms make ``e`` explode where the
    score vanishes, e.g. at a mode's centre in 2-D); a 0-d tensor."""
    ratio = coeffs(sde, t)[0] / coeffs(sde, s)[0]
    norm_z, norm_g = batch_sum(noise**2).sqrt().mean(), batch_sum(grad**2).sqrt().mean()
    return 2 * ratio**2 * (snr * norm_z / norm_g.clamp_min(torch.finfo(grad.dtype).tiny)) ** 2


def langevin(score: CountedScore, sde: LinearSDE, x: Tensor, t: float, s: float, generator, *, snr: float) -> Tensor:
    """One Langevin step at level ``s``: ``x + e grad + sqrt(2 e) z`` (step size in the module docstring)."""
    grad, z = score(x, s), randn_like(x, generator)
    e = _langevin_step_size(sde, grad, z, t, s, snr)
    return x + e * grad + (2 * e).sqrt() * z


def mala(score: CountedScore, sde: LinearSDE, x: Tensor, t: float, s: float, generator, *, snr: float) -> Tensor:
    """One Metropolis-adjusted Langevin step at level ``s`` (see the module docstring)."""
    grad, z = score(x, s), randn_like(x, generator)
    e = _langevin_step_size(sde, grad, z, t, s, snr)
    prop = x + e * grad + (2 * e).sqrt() * z
    grad_p = score(prop, s)
    log_target = 0.5 * batch_sum((grad + grad_p) * (prop - x))
    log_q = (batch_sum((x - prop - e * grad_p) ** 2) - batch_sum((prop - x - e * grad) ** 2)) / (-4 * e)
    u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
    accept = torch.log(u) < log_target + log_q
    return torch.where(append_dims(accept, x.ndim), prop, x)


def annealed_langevin(
    score: CountedScore, sde: LinearSDE, x: Tensor, t: float, s: float, generator, *, step_lr: float
) -> Tensor:
    """NCSN's step at level ``s``: ``x + e/2 grad + sqrt(e) z``, ``e = step_lr (sigma_s / sigma(eps))^2``."""
    e = step_lr * (coeffs(sde, s)[1] / coeffs(sde, sde.eps)[1]) ** 2
    return x + 0.5 * e * score(x, s) + math.sqrt(e) * randn_like(x, generator)


def hmc(
    score: CountedScore, sde: LinearSDE, x: Tensor, t: float, s: float, generator, *, snr: float, leapfrog_steps: int
) -> Tensor:
    """Unadjusted HMC at level ``s``: momentum ``p ~ N(0, I)``, then ``leapfrog_steps`` leapfrog steps
    ``p += delta/2 grad; x += delta p; p += delta/2 grad`` with ``delta = sqrt(2 e)`` (the last
    half-kick is skipped: the momentum is discarded)."""
    grad, p = score(x, s), randn_like(x, generator)
    delta = (2 * _langevin_step_size(sde, grad, p, t, s, snr)).sqrt()
    p = p + 0.5 * delta * grad
    for k in range(leapfrog_steps):
        x = x + delta * p
        if k < leapfrog_steps - 1:
            p = p + delta * score(x, s)
    return x


CORRECTORS: dict[str, Callable[..., Tensor] | None] = {
    "langevin": langevin,
    "mala": mala,
    "annealed-langevin": annealed_langevin,
    "hmc": hmc,
    "none": None,
}


def pc_sample(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    x: Tensor,
    grid: Tensor,
    *,
    predictor: str = "reverse-diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    corrector_steps: int = 1,
    eta: float = 1.0,
    step_lr: float = 2e-5,
    leapfrog_steps: int = 3,
    generator: torch.Generator | None = None,
    callback=None,
    progress: bool = False,
) -> tuple[Tensor, int]:
    """Predictor-corrector sampling over ``grid``: per step the predictor ``t -> s``, then
    ``corrector_steps`` corrector steps at ``s``.  NFE per step: predictor (1; ``srk`` 2; ``none`` 0)
    plus ``corrector_steps`` (times 2 for ``mala``, ``leapfrog_steps`` for ``hmc``)."""
    predictor, corrector = predictor or "none", corrector or "none"  # None means "none"
    predict = PREDICTORS[check_choice(predictor, list(PREDICTORS), "predictor")]
    correct = CORRECTORS[check_choice(corrector, list(CORRECTORS), "corrector")]
    eta = check_eta(eta)
    if not snr >= 0:
        raise ValueError(f"snr must be >= 0, got {snr}")
    if not step_lr > 0:
        raise ValueError(f"step_lr must be > 0, got {step_lr}")
    check_int(corrector_steps, "corrector_steps", 0)
    check_int(leapfrog_steps, "leapfrog_steps", 1)
    options = {"langevin": {"snr": snr}, "mala": {"snr": snr}, "annealed-langevin": {"step_lr": step_lr},
               "hmc": {"snr": snr, "leapfrog_steps": leapfrog_steps}}.get(corrector, {})
    score = CountedScore(score_fn)
    step, ts, times = predict(sde, grid, eta, x), grid.tolist(), device_times(grid, x)
    for i in step_range(len(ts) - 1, progress):
        x = step(score, x, i, generator)
        for _ in range(corrector_steps if correct else 0):
            x = correct(score, sde, x, ts[i], ts[i + 1], generator, **options)
        x = apply_callback(callback, i, times[i + 1], x)
    return x, score.nfe
