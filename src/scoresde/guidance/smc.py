"""Particle (sequential Monte Carlo) sampling of ``p(x | y)`` for ``y = A x + sigma_y z``: the
asymptotically exact default of :func:`~scoresde.guidance.inverse.solve_inverse_problem`,
:func:`~scoresde.guidance.inverse.inpaint` and :func:`~scoresde.guidance.inverse.colorize`.

It is SMCDiff (Trippe et al. 2022) generalised to any linear operator and to noisy
measurements, in the singular basis ``A = U S V^T`` of the operator
(:meth:`~scoresde.guidance.operators.LinearOperator.svd`; as in DDRM, Kawar et al. 2022):

1. **Each measurement is an exact observation of the diffused state.** In direction ``i``
   (``s_i > 0``) the measurement reads ``y~_i = (U^T y)_i / s_i = (V^T x_0)_i + (sigma_y / s_i) n_i``,
   distributed exactly as ``(V^T x_t)_i / alpha_t`` at the time ``t*_i`` where
   ``sigma_t / alpha_t = sigma_y / s_i`` (``t*_i = 0`` without noise). Couple the forward noise
   with the measurement noise so that ``(V^T x_{t*})_i = alpha_{t*} y~_i``; above ``t*_i`` the
   direction follows the forward chain, below it it is free. The observed path ``c_t`` of every
   seen direction is drawn once per row: ``c_t = alpha_t y~ + sqrt(sigma_t^2 - alpha_t^2
   sigma_y^2 / s^2) z`` at its first grid time ``t >= t*``, then ``c_t = a c_s + b z`` upward
   (:meth:`LinearSDE.transition`). The path beyond ``y`` is independent of ``x_0`` given ``y``,
   so ``p(x_0 | path) = p(x_0 | y)``. The times ``t*_i`` inside the grid are added to it.
2. ``P`` particles per row move by the ancestral kernel ``q(x_s | x_t, x0_hat) = N(m, k_z^2 I)``,
   ``m = k_x x_t + k_0 x0_hat`` (:func:`scoresde.sampling.fast.eta_weights` at ``eta = 1``,
   Tweedie's ``x0_hat``), **conditioned exactly** on the observed coefficients
   ``(V^T x_s)_obs = c_s`` (an isotropic Gaussian conditioned on orthonormal coordinates: those
   coordinates replaced, the rest untouched).
3. The weight is the kernel's density of what was observed, ``w <- w N(c_s; (V^T m)_obs, k_z^2)``,
   twisted as in the twisted diffusion sampler (Wu et al. 2023) by
   ``psi_t(x_t) = N(y~_ahead; (V^T x0_hat)_ahead, sigma_t^2 / alpha_t^2 + sigma_y^2 / s^2)`` over
   the directions still to be observed below ``t`` (without noise all seen directions, ``t* = 0``;
   a Gaussian guess of ``p(y | x_t)``): the
   weight gains ``psi_t(x_t) / psi_t'(x_t')`` at each state and loses the last ``psi`` before
   the final draw, so any twist keeps the target; it lets resampling favour particles
   consistent with ``y`` before the path resolves the modes. The weight depends on ``x_t``
   alone, so the conditioned kernel is the locally optimal proposal and resampling
   (multinomial, of each row whose effective sample size falls below ``ess_threshold * P``;
   the other rows keep their particles and weights) happens before the move.
4. Below the last ``t*`` nothing is observed and the weights stop changing: one particle per
   row is drawn there and continues alone (noisy measurements cost ``P`` evaluations per step
   only above ``t*``), over :data:`TAIL_STEPS` extra log-SNR-uniform steps. Below its ``t*`` a
   seen direction moves with the variance ``k_z^2 + k_0^2 v_t`` that the ancestral kernel omits
   the second term of, ``v_t = c^2 sigma_t^2 / (alpha_t^2 c^2 + sigma_t^2)`` the posterior
   variance of ``x_0`` at the measurement's scale ``c = sigma_y / s`` (without it the samples fit
   ``y`` too closely: mean square residual 0.92 ``sigma_y^2``, with it 0.98). The last state is
   denoised by Tweedie's formula; without noise the seen directions are then set to ``y~``
   exactly (``A x = y``).

The particles target ``p(x_0 | y)`` up to the Gaussian reverse kernel and the score: the method
is consistent as ``P -> infinity`` and the steps shrink. Cost per output sample: ``P`` score
evaluations per step above the last observation time, one per step below it, one for the final
denoising (``ConditionalInfo.nfe``).

*Measured limits* (benchmarks/conditional.py, exact score of the oracle): the ancestral kernel
omits ``Var(x_0 | x_t)``, so coarse steps bias the weights (SMCDiff's reverse-kernel
assumption): on the 2-D ring with ``x_1 = 2`` (exact shares 0.88 / 0.10 / 0.02) the total
variation of the component shares is 0.028 at 64 particles x 100 steps and 0.010 at 64 x 200
(one seed each; at-floor bound, mean + 3 sd of pairs of exact sets of 500: 0.056). **Far in the tails it is not right
by default**: on random problems (``benchmarks/conditional.py --sweep``, held-out seeds) 53 of 60
tasks pass the tests' statistics, all 52 whose ``y`` lies within squared Mahalanobis distance
40 of a mode's predictive and 1 of the 8 beyond it (inpainting or colorizing between two modes
with ``y`` in both modes' tails), where a bias of the size of the one it
removes remains. The mode weights there are small differences of large Mahalanobis distances,
so every approximation counts: with the oracle's exact ``p(y | x_t)`` as ``twist`` these
problems come closer but 4 of 5 still fail (the kernel, which omits ``Var(x_0 | x_t)``, and the
Gaussian twist both err; the exact twist fixes a colorization at distance 29 that failed under
the former all-rows resampling, tests/test_inverse.py). A less noisy observed path (any path with
``c_{t*} = alpha y~`` keeps the target) removes the variance but conditions the discretised
kernel on an atypical path: biased at this cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._tensor import randn_like
from ..sampling._common import kernel_at
from ..sampling.fast import eta_weights
from ..sampling.grids import check_grid, make_grid
from ..score import ScoreFn, tweedie
from ..sde import LinearSDE
from .operators import LinearOperator, Spectrum

#: ``twist(x_t, x0_hat, t) -> log psi_t``: particles ``(B, P, ...)`` and their Tweedie denoising to ``(B, P)``.
Twist = Callable[[Tensor, Tensor, float], Tensor]


@dataclass
class ConditionalInfo:
    """What a conditional sampler spent. ``nfe``: score evaluations per output sample, all its
    particles together (users budget by it); ``method``: ``"smc"`` or ``"replacement"``;
    ``particles``; ``steps``: steps of the time grid (for SMC, observation times included);
    ``ess``: the effective-sample-size fraction before each SMC step's resampling decision
    (mean over rows; ``None`` for replacement); ``resamples``: steps at which some row resampled."""

    nfe: int
    method: str
    particles: int = 1
    steps: int = 0
    ess: Tensor | None = None
    resamples: int = 0


def check_particles(particles: int) -> int:
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        raise ValueError(f"particles must be an integer >= 1, got {particles!r}")
    return particles


def observation_times(sde: LinearSDE, s: Tensor, sigma_y: float) -> Tensor:
    """``t*`` per direction (``s``'s shape, float64): the time with ``sigma_t / alpha_t =
    sigma_y / s`` (0 without noise; ``inf`` where ``s = 0`` or where the measurement is noisier
    than the prior at ``T``: never seen)."""
    s = s.double().cpu()
    if sigma_y == 0.0:
        return torch.where(s > 0, torch.zeros_like(s), torch.full_like(s, math.inf))
    lam = torch.log(s.clamp_min(1e-300) / sigma_y)
    t = sde.t_of_log_snr(lam).double().clamp(0.0, sde.T)
    never = (s <= 0) | (lam < sde.log_snr(torch.tensor(sde.T, dtype=torch.float64)))  # noisier than the prior
    return torch.where(never, torch.full_like(s, math.inf), t)


def with_observation_times(grid: Tensor, t_obs: Tensor) -> Tensor:
    """``grid`` (descending) with the distinct finite ``t*`` strictly inside it added."""
    inside = t_obs[torch.isfinite(t_obs) & (t_obs > grid[-1]) & (t_obs < grid[0])]
    merged = torch.cat([grid, torch.unique(inside.round(decimals=12))])
    merged = torch.unique(merged.round(decimals=12))
    return merged.flip(0)


#: The default cost: particles x steps score evaluations per output sample (BENCHMARKS.md,
#: conditional sampling: the smallest setting at the exact-posterior floor on inpainting,
#: colorization and super-resolution).
DEFAULT_PARTICLES, DEFAULT_STEPS = 64, 100
TAIL_STEPS = 50


def tail_times(sde: LinearSDE, t_obs: Tensor, t_end: float) -> Tensor:
    """:data:`TAIL_STEPS` log-SNR-uniform times between the last observation time and ``t_end``:
    below it one particle continues unconditionally (one evaluation per step), and the ancestral
    kernel, which omits ``Var(x_0 | x_t)``, needs fine steps there not to shrink the spread."""
    finite = t_obs[torch.isfinite(t_obs) & (t_obs > t_end)]
    if finite.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    lam = torch.linspace(float(sde.log_snr(torch.tensor(float(finite.min()), dtype=torch.float64))),
                         float(sde.log_snr(torch.tensor(t_end, dtype=torch.float64))), TAIL_STEPS + 1, dtype=torch.float64)
    return sde.t_of_log_snr(lam[1:-1]).double()


class _Particles:
    """``(B, P, *sample)`` particles read through a :class:`Spectrum` (coefficients ``(B, P, *c)``)."""

    def __init__(self, spec: Spectrum, sample_shape: tuple[int, ...]) -> None:
        self.spec, self.sample_shape = spec, sample_shape

    def coef(self, x: Tensor) -> Tensor:
        c = self.spec.coef(x.reshape(-1, *self.sample_shape))
        return c.reshape(*x.shape[:2], *c.shape[1:])

    def expand(self, c: Tensor) -> Tensor:
        out = self.spec.expand(c.reshape(-1, *c.shape[2:]))
        return out.reshape(*c.shape[:2], *self.sample_shape)

    def constrain(self, x: Tensor, target: Tensor, observed: Tensor) -> Tensor:
        """``x`` with its ``observed`` coefficients replaced by ``target`` (the rest untouched)."""
        if not bool(observed.any()):
            return x
        delta = torch.where(observed, target - self.coef(x), torch.zeros((), dtype=target.dtype, device=target.device))
        return x + self.expand(delta)


def _draw(log_w: Tensor, generator, count: int) -> Tensor:
    """``count`` particle indices per row drawn by weight (multinomial): ``(B, count)``."""
    probs = torch.softmax(log_w, dim=1)
    where = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(where), count, replacement=True, generator=generator).to(log_w.device)


def _take(x: Tensor, idx: Tensor) -> Tensor:
    """Particles ``idx`` ``(B, count)`` of ``x`` ``(B, P, ...)``: ``(B, count, ...)``."""
    return torch.gather(x, 1, idx.reshape(idx.shape + (1,) * (x.ndim - 2)).expand(idx.shape + x.shape[2:]))


def _score(score_fn: ScoreFn, x: Tensor, t: float) -> Tensor:
    """The score of particles ``(B, P, ...)`` evaluated as one batch ``(B * P, ...)``."""
    flat = x.reshape(-1, *x.shape[2:])
    tt = torch.full((flat.shape[0],), t, dtype=x.dtype, device=x.device)
    out = score_fn(flat, tt)
    if out.shape != flat.shape:
        raise ValueError(f"score_fn returned shape {tuple(out.shape)} for x of shape {tuple(flat.shape)}")
    return out.reshape(x.shape)


@torch.no_grad()
def smc_inverse(
    score_fn: ScoreFn,
    sde: LinearSDE,
    y: Tensor,
    op: LinearOperator,
    shape: tuple[int, ...],
    *,
    sigma_y: float = 0.0,
    particles: int = DEFAULT_PARTICLES,
    steps: int = DEFAULT_STEPS,
    grid: Tensor | None = None,
    ess_threshold: float = 0.5,
    twist: Twist | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, ConditionalInfo]:
    """One sample of ``p(x | y)`` per row for ``y = A x + sigma_y z`` (module doc); ``x`` has
    ``shape`` ``(B, ...)``, ``y`` is ``op`` applied to such a batch. ``grid``: descending times
    ``T .. t_N > 0`` (default ``steps`` log-SNR-uniform steps); the observation times are added.
    ``twist(x_t, x0_hat, t)``: ``log psi_t`` of the particles ``(B, P, ...)`` as ``(B, P)``, a
    better guess of ``log p(y | x_t)`` than the default Gaussian one (any finite function keeps
    the target; module doc, step 3). Returns ``(x, ConditionalInfo)``."""
    particles = check_particles(particles)
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    sigma_y = float(sigma_y)
    if not (math.isfinite(sigma_y) and sigma_y >= 0):
        raise ValueError(f"sigma_y must be a finite number >= 0, got {sigma_y}")
    grid = make_grid(sde, steps, "log-snr") if grid is None else check_grid(grid, sde)
    if float(grid[-1]) <= 0:
        raise ValueError("the SMC grid must end at a time > 0 (the ancestral kernel has no noise at t = 0)")
    probe = torch.zeros(shape, dtype=y.dtype, device=y.device)
    op.check(probe)
    spec = op.svd(probe)
    B, sample_shape = shape[0], tuple(shape[1:])
    view = _Particles(spec, sample_shape)
    c_shape = tuple(spec.coef(probe[:1]).shape[1:])
    s = spec.s if spec.s.ndim == len(c_shape) + 1 else spec.s.expand(1, *c_shape)
    s = s.unsqueeze(1)  # (1 or B, 1, *c)
    seen = s > 0
    y_coef = spec.observe(y).unsqueeze(1)
    y_tilde = torch.where(seen, y_coef / torch.where(seen, s, torch.ones_like(s)), torch.zeros_like(y_coef))

    t_obs = observation_times(sde, s, sigma_y)  # float64, CPU, s's shape
    grid = with_observation_times(grid, torch.cat([t_obs.flatten(), tail_times(sde, t_obs, float(grid[-1]))]))
    kern = kernel_at(sde, grid)
    k_x, k_0, k_z = eta_weights(kern, 1.0)
    n_steps = len(grid) - 1
    t_obs = t_obs.to(s.device)
    observed = [seen & (t_obs <= float(t) * (1 + 1e-9)) for t in grid.tolist()]
    noise_var = (sigma_y / torch.where(seen, s, torch.ones_like(s)).double()) ** 2

    def coef_noise(like: Tensor) -> Tensor:
        return view.coef(randn_like(like, generator))

    # 1. the observed path, drawn upward from each direction's first observed grid time
    one = torch.zeros((B, 1, *sample_shape), dtype=y.dtype, device=y.device)
    path: list[Tensor] = [torch.zeros(())] * (n_steps + 1)
    for j in range(n_steps, -1, -1):
        a_j, s_j = float(kern.alpha[j]), float(kern.sigma[j])
        z = coef_noise(one)
        fresh = a_j * y_tilde + (s_j**2 - a_j**2 * noise_var).clamp_min(0).sqrt().to(z.real.dtype) * z
        if j < n_steps:
            a, b = (float(v) for v in sde.transition(float(grid[j + 1]), float(grid[j])))
            fresh = torch.where(observed[j + 1], a * path[j + 1] + b * z, fresh)
        path[j] = torch.where(observed[j], fresh, torch.zeros_like(fresh))

    # 2.-4. the particles, weighted by the observed path and twisted by psi_t (module doc)
    def log_twist(x0: Tensor, t: float, r2: float) -> Tensor:
        ahead = seen & (t_obs < t * (1 - 1e-9))
        if not bool(ahead.any()):
            return torch.zeros(x0.shape[:2], dtype=torch.float64, device=x0.device)
        d = torch.where(ahead, (y_tilde - view.coef(x0)).abs() ** 2 / (r2 + noise_var), torch.zeros((), dtype=torch.float64))
        return -0.5 * d.flatten(2).sum(-1).double()

    P = particles
    x = sde.prior_sample((B * P, *sample_shape), generator=generator, device=y.device, dtype=y.dtype)
    x = view.constrain(x.reshape(B, P, *sample_shape), path[0], observed[0])
    log_w = torch.zeros(B, P, dtype=torch.float64, device=y.device)
    psi = torch.zeros_like(log_w)
    ess, resamples, nfe = [], 0, 0
    for i in range(n_steps):
        t, a_t, s_t = float(grid[i]), float(kern.alpha[i]), float(kern.sigma[i])
        x0 = tweedie(x, _score(score_fn, x, t), a_t, s_t)
        nfe += P
        if P > 1:
            new_psi = log_twist(x0, t, (s_t / a_t) ** 2) if twist is None else twist(x, x0, t).double()
            log_w, psi = log_w + new_psi - psi, new_psi
            if not bool(observed[i + 1].any()):  # nothing more is observed (psi = 1): one particle per row
                idx = _draw(log_w - psi, generator, 1)
                x, x0, P = _take(x, idx), _take(x0, idx), 1
        mean = x.mul(float(k_x[i])).add_(x0, alpha=float(k_0[i]))
        var = float(k_z[i]) ** 2
        if P > 1:
            r = torch.where(observed[i + 1], path[i + 1] - view.coef(mean), torch.zeros((), dtype=path[i + 1].dtype))
            log_w = log_w - 0.5 * (r.abs() ** 2).flatten(2).sum(-1).double() / var
            log_w = log_w - log_w.logsumexp(dim=1, keepdim=True)
            frac = 1.0 / (torch.exp(2 * log_w).sum(dim=1) * P)
            ess.append(float(frac.mean()))
            low = frac < ess_threshold  # the weight depends on x_t only: resample these rows, then move
            if bool(low.any()):
                idx = torch.where(low[:, None], _draw(log_w, generator, P), torch.arange(P, device=log_w.device))
                mean, psi = _take(mean, idx), torch.gather(psi, 1, idx)
                log_w, resamples = log_w.masked_fill(low[:, None], 0.0), resamples + 1
        x = mean + math.sqrt(var) * randn_like(mean, generator)
        past = seen & ~observed[i + 1]  # observed above t_{i+1}, free below it (noisy measurements)
        if bool(past.any()):  # the kernel's missing k_0^2 Var(x_0 | x_t) at the measurement's scale (step 4)
            v = noise_var * s_t**2 / (a_t**2 * noise_var + s_t**2)
            x = x + view.expand(torch.where(past, float(k_0[i]) * v.sqrt().to(mean.dtype), 0.0) * coef_noise(mean))
        x = view.constrain(x, path[i + 1], observed[i + 1])

    x = _take(x, _draw(log_w - psi, generator, 1)) if P > 1 else x
    x = tweedie(x, _score(score_fn, x, float(grid[-1])), float(kern.alpha[-1]), float(kern.sigma[-1]))
    nfe += 1
    x = x.squeeze(1)
    if sigma_y == 0.0:
        x = op.project(x, y)
    return x, ConditionalInfo(nfe=nfe, method="smc", particles=particles, steps=n_steps,
                                         ess=torch.tensor(ess), resamples=resamples)
