"""Predictor-corrector sampling of the reverse-time SDE (Song et al. 2021, Alg. 1).

Each grid step ``t -> s < t`` applies a *predictor* (one step of a discretised reverse SDE) and
then ``corrector_steps`` of a *corrector* (score-based MCMC targeting ``p_s``), as in the paper's
Algorithm 1, so the last corrections act at the final time.  The predictors integrate the
marginal-preserving family in reverse time (every ``eta >= 0`` has the marginals ``p_t``)::

    dx = [f(x, t) - (1 + eta^2)/2 g(t)^2 s(x, t)] dt + eta g(t) dw_bar      (eta = 1: Anderson's SDE)

Predictors (one step ``(score, sde, x, t, s, eta, generator) -> x``, see ``PREDICTORS``; every one
but ``ancestral`` works for any :class:`~scoresde.sde.SDE`, a non-linear drift included):

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
  on coarse grids it amplifies deviations from ``p_t`` where the noise dominates (VE below 15
  steps) and warns (:func:`srk_growth`);
* ``none``.

Correctors ``(score, sde, x, t, s, generator, **options) -> x`` at level ``s``:

* ``langevin``: ``x += e s + sqrt(2 e) z`` with the paper's ``e = 2 a (snr |z| / |s|)^2`` (norms averaged over the batch),
  ``a = (alpha_t / alpha_s)^2`` (``1 - beta_i`` for VP, 1 for VE and for SDEs without a kernel);
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
import warnings
from typing import Callable

import torch
from torch import Tensor

from .._tensor import append_dims, as_batch_time, batch_sum, check_choice, check_int, randn_like
from ..sde import SDE, LinearSDE
from ._common import CountedScore, apply_callback, coeffs, denoise, steps_of
from .fast import check_eta, eta_step


# -- predictors ----------------------------------------------------------------------------------
# A predictor is one step ``(score, sde, x, t, s, eta, generator) -> x`` of the reverse SDE from
# ``t`` to ``s < t``, written as its equation; every coefficient comes from the SDE at that step.
Predictor = Callable[[CountedScore, SDE, Tensor, float, float, float, "torch.Generator | None"], Tensor]


def euler_maruyama(score: CountedScore, sde: SDE, x: Tensor, t: float, s: float, eta: float, generator) -> Tensor:
    """``x_s = x + [f(x, t) - (1+eta^2)/2 g(t)^2 s(x, t)](s - t) + eta g(t) sqrt(t - s) z`` (any SDE)."""
    tb = as_batch_time(t, x)
    out = x + sde.reverse_drift(x, tb, score(x, t), eta) * (s - t)
    if eta > 0:
        out = out + append_dims(eta * sde.g(tb) * math.sqrt(t - s), x.ndim) * randn_like(x, generator)
    return out


def reverse_diffusion(score: CountedScore, sde: SDE, x: Tensor, t: float, s: float, eta: float, generator) -> Tensor:
    """``x_s = x - f_i + (1+eta^2)/2 G_i^2 s(x, t) + eta G_i z`` with ``(f_i, G_i) = sde.discretize(x, t, t - s)``
    (any SDE; on a LinearSDE ``f_i = (a - 1) x``, ``G_i = b`` from the kernel ``x_t = a x_s + b z``)."""
    tb = as_batch_time(t, x)
    f_i, g_i = sde.discretize(x, tb, t - s)
    g_i = append_dims(g_i, x.ndim)
    out = x - f_i + 0.5 * (1 + eta**2) * g_i**2 * score(x, t)
    if eta > 0:
        out = out + eta * g_i * randn_like(x, generator)
    return out


def ancestral(score: CountedScore, sde: LinearSDE, x: Tensor, t: float, s: float, eta: float, generator) -> Tensor:
    """DDIM's exponential step of the eta family (:func:`~.fast.eta_step`) from Tweedie's ``x0_hat``
    at ``t``; at ``eta = 1`` a draw of ``q(x_s | x_t, x0_hat)``::

        x_s = (sigma_s/sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) x0_hat + sigma_s sqrt(1 - e^{-2h}) z

    (``h = lambda_s - lambda_t``; DDPM's step for VP, SMLD's for VE).  The true reverse kernel is the
    mixture of ``q(x_s | x_t, x0)`` over ``p(x0 | x_t)``: same mean, variance larger by
    ``alpha_s^2 (1 - e^{-2h})^2 Cov[x0 | x_t]``, an ``O(h^2)`` shortfall per step that no single score
    evaluation reveals.  Summed over a run it leaves the samples too concentrated by a relative
    variance of about one log-SNR step per axis (Gaussian data, log-SNR-uniform grid), i.e. a
    log-density gap of about ``-d h / 2`` nats in ``d`` dimensions: first order in the step."""
    return eta_step(x, denoise(score, sde, x, t), sde, t, s, eta, generator)


def srk(score: CountedScore, sde: SDE, x: Tensor, t: float, s: float, eta: float, generator) -> Tensor:
    """Rößler's SRA1 (strong order 1.5 for additive noise) in reverse time ``tau = -t``, ``h = t - s``::

        H2  = x + 3/4 h a(t, x) + 3/2 b(s) I10 / h
        x_s = x + h (a(t, x)/3 + 2 a(t - 3h/4, H2)/3) + b(s) (I1 - I10/h) + b(t) I10/h

    with ``a(u, y) = -reverse_drift(y, u)``, ``b = eta g``, ``I1 = sqrt(h) z1`` and the space-time
    integral ``I10 = h/2 (I1 + sqrt(h/3) z2)`` (``Var = h^3/3``, ``Cov(I1, I10) = h^2/2``); any SDE.
    """
    h = t - s

    def a(u: float, y: Tensor) -> Tensor:
        return -sde.reverse_drift(y, as_batch_time(u, y), score(y, u), eta)

    def b(u: float) -> float:
        return eta * float(sde.g(torch.tensor(u, dtype=torch.float64)))

    i1 = math.sqrt(h) * randn_like(x, generator)
    i10 = 0.5 * h * (i1 + math.sqrt(h / 3) * randn_like(x, generator))
    a1 = a(t, x)
    h2 = x + 0.75 * h * a1 + 1.5 * b(s) * i10 / h
    return x + h * (a1 / 3 + 2 * a(t - 0.75 * h, h2) / 3) + b(s) * (i1 - i10 / h) + b(t) * i10 / h


def srk_growth(sde: LinearSDE, grid: Tensor, eta: float = 1.0) -> float:
    """How much :func:`srk` amplifies a deviation from ``p_t`` over the noise-dominated part of
    ``grid`` (steps after the first that start at ``lambda(t) <= 0``, where data of unit scale is
    negligible and the score is that of a point mass, ``-x / sigma^2``).  On that linear test
    problem the drift is ``a(u, y) = l(u) y`` with ``l = -(f + (1+eta^2)/2 g^2 / sigma^2)``, SRA1's
    step multiplies ``y`` by ``R = 1 + h (l_t / 3 + 2/3 l_m (1 + 3/4 h l_t))`` (``m = t - 3h/4``) and
    the marginal's std by ``sigma_s / sigma_t``, so a deviation relative to the marginal grows by
    ``|R| sigma_t / sigma_s`` per step (the exact reverse kernel: ``e^{-h_lambda} < 1``).  Returns the
    product of ``max(1, |R| sigma_t / sigma_s)`` over those steps (float64).  ``R = 1 + z + z^2/2``
    stays above 1/2, so on VE (``z = -2 h_lambda``) every step longer than ``log 2`` in log-SNR grows
    deviations: 10 steps of ``VESDE(0.01, 50)`` give 9.4 (within-mode std 1.7 for 0.2), 15 give 1."""
    t, s = grid[:-1].double(), grid[1:].double()
    h, mid = t - s, t - 0.75 * (t - s)

    def rate(u: Tensor) -> Tensor:
        return -(sde.f(u) + 0.5 * (1 + eta**2) * sde.g2(u) / sde.sigma(u) ** 2)

    r = 1 + h * (rate(t) / 3 + 2 / 3 * rate(mid) * (1 + 0.75 * h * rate(t)))
    growth = (r.abs() * sde.sigma(t) / sde.sigma(s)).clamp_min(1)
    noisy = sde.log_snr(t) <= 0
    noisy[0] = False  # x_T is drawn from the prior: the first step has no deviation to amplify
    return float(growth[noisy].prod())


def no_predictor(score: CountedScore, sde: SDE, x: Tensor, t: float, s: float, eta: float, generator) -> Tensor:
    """Leave the state unchanged (corrector-only sampling, e.g. NCSN)."""
    return x


PREDICTORS: dict[str, Predictor] = {
    "euler-maruyama": euler_maruyama,
    "reverse-diffusion": reverse_diffusion,
    "ancestral": ancestral,
    "srk": srk,
    "none": no_predictor,
}
NEEDS_KERNEL = ("ancestral", "annealed-langevin")  # predictor / corrector names that need a LinearSDE
SRK_MAX_GROWTH = 2.0  # srk warns above this growth (:func:`srk_growth`)


# -- correctors ----------------------------------------------------------------------------------
def _mean_ratio_sq(sde: SDE, t: float, s: float) -> float:
    """``a = (alpha_t / alpha_s)^2`` of a LinearSDE (the paper's ``1 - beta_i`` for VP, 1 for VE);
    1 for an SDE without a kernel, as the paper's code does for every SDE other than VP and sub-VP."""
    if not isinstance(sde, LinearSDE):
        return 1.0
    return (coeffs(sde, t)[0] / coeffs(sde, s)[0]) ** 2


def _langevin_step_size(sde: SDE, grad: Tensor, noise: Tensor, t: float, s: float, snr: float) -> Tensor:
    """The paper's ``e = 2 a (snr |z| / |grad|)^2`` (``a``: :func:`_mean_ratio_sq`), with the norms
    averaged over the batch as in the paper's code (per-sample norms make ``e`` explode where the
    score vanishes, e.g. at a mode's centre in 2-D); a 0-d tensor."""
    norm_z, norm_g = batch_sum(noise**2).sqrt().mean(), batch_sum(grad**2).sqrt().mean()
    return 2 * _mean_ratio_sq(sde, t, s) * (snr * norm_z / norm_g.clamp_min(torch.finfo(grad.dtype).tiny)) ** 2


def langevin(score: CountedScore, sde: SDE, x: Tensor, t: float, s: float, generator, *, snr: float) -> Tensor:
    """One Langevin step at level ``s``: ``x + e grad + sqrt(2 e) z`` (step size in the module docstring)."""
    grad, z = score(x, s), randn_like(x, generator)
    e = _langevin_step_size(sde, grad, z, t, s, snr)
    return x + e * grad + (2 * e).sqrt() * z


def mala(score: CountedScore, sde: SDE, x: Tensor, t: float, s: float, generator, *, snr: float) -> Tensor:
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
    score: CountedScore, sde: SDE, x: Tensor, t: float, s: float, generator, *, snr: float, leapfrog_steps: int
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
    for name in (predictor, corrector):
        if name in NEEDS_KERNEL and not isinstance(sde, LinearSDE):
            raise ValueError(f"{name!r} needs a LinearSDE (a Gaussian kernel); got {type(sde).__name__}")
    eta = check_eta(eta)
    if not snr >= 0:
        raise ValueError(f"snr must be >= 0, got {snr}")
    if not step_lr > 0:
        raise ValueError(f"step_lr must be > 0, got {step_lr}")
    check_int(corrector_steps, "corrector_steps", 0)
    check_int(leapfrog_steps, "leapfrog_steps", 1)
    if predictor == "srk" and isinstance(sde, LinearSDE):
        growth = srk_growth(sde, grid, eta)
        if growth > SRK_MAX_GROWTH:
            warnings.warn(f"srk: this {len(grid) - 1}-step grid is too coarse for {type(sde).__name__} "
                          f"(deviations from p_t grow {growth:.3g}x over its noise-dominated steps: "
                          "samples come out too wide); use more steps, or 'ancestral'", RuntimeWarning, stacklevel=3)
    options = {"langevin": {"snr": snr}, "mala": {"snr": snr}, "annealed-langevin": {"step_lr": step_lr},
               "hmc": {"snr": snr, "leapfrog_steps": leapfrog_steps}}.get(corrector, {})
    score = CountedScore(score_fn)
    for i, t, s in steps_of(grid, progress):
        x = predict(score, sde, x, t, s, eta, generator)
        for _ in range(corrector_steps if correct else 0):
            x = correct(score, sde, x, t, s, generator, **options)
        x = apply_callback(callback, i, s, x)
    return x, score.nfe
