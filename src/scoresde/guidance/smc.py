"""Particle (sequential Monte Carlo) inpainting that corrects the replacement method's bias.

The replacement method conditions the missing part on independently re-noised copies of the
observation, which distorts mode weights when the posterior over modes stays ambiguous. Following
SMCDiff (Trippe et al. 2022), this sampler instead

1. draws **one** forward-noised path of the observed coordinates ``y_{t_N}, ..., y_{t_0}``
   from the forward Markov chain (``y_t = a_{t|s} y_s + b_{t|s} z``, :meth:`LinearSDE.transition`),
   starting at ``y = x_obs`` (the path is independent of the missing part given ``y``);
2. runs ``P`` particles of the missing part through the reverse ancestral kernel
   ``q(x_s | x_t, x0_hat)`` (the Gaussian posterior of the forward kernel with Tweedie's
   ``x0_hat = (x_t + sigma_t^2 s(x_t, t)) / alpha_t``)::

       mean = (alpha_s b^2 / sigma_t^2) x0_hat + (a sigma_s^2 / sigma_t^2) x_t,
       var  = b^2 sigma_s^2 / sigma_t^2,        a = alpha_t / alpha_s, b^2 = sigma_t^2 - a^2 sigma_s^2

   with the observed entries of ``x_t`` set to ``y_t``;
3. weights each particle by the kernel's density of the next observed values,
   ``w <- w N(y_s; mean_obs, var)``. With diagonal kernels this weight depends on ``x_t`` alone
   (the observed and missing parts of ``x_s`` are independent given ``x_t``), so the kernel is
   the optimal proposal and resampling (multinomial, every row, when the effective sample size
   of any row falls below ``ess_threshold * P``) happens *before* the move, which keeps the
   copies of a resampled particle apart.

The weighted particles target ``p(x_miss | y_{t_0..t_N}) = p(x_miss | x_obs)``: the method is
consistent as ``P -> infinity`` and the steps shrink (the only approximations are the Gaussian
reverse kernel and the score). The last state is denoised by Tweedie's formula and one particle
per row is drawn by weight. Cost: ``steps * P`` score evaluations per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._tensor import append_dims
from ..score import ScoreFn
from ..sde import LinearSDE
from ._random import randn_like
from .inverse import as_mask


@dataclass
class SMCInfo:
    """``nfe``: score evaluations per particle; ``ess``: the effective sample size fraction
    before each step's resampling decision (``(steps,)``, mean over rows); ``resamples``: how
    many steps resampled."""

    nfe: int
    ess: Tensor
    resamples: int


def _observed_path(sde: LinearSDE, x_obs: Tensor, grid: Tensor, generator) -> list[Tensor]:
    """One forward-chain path ``[y_{t_0}, ..., y_{t_N}]`` of ``x_obs`` on the descending ``grid``."""
    path = [sde.marginal(x_obs, float(grid[-1]), randn_like(x_obs, generator))]
    for s, t in zip(grid.flip(0)[:-1], grid.flip(0)[1:]):
        a, b = sde.transition(float(s), float(t))
        path.append(float(a) * path[-1] + float(b) * randn_like(x_obs, generator))
    return path[::-1]


def _resample(x: Tensor, log_w: Tensor, generator) -> Tensor:
    """Multinomial resampling within each row: ``x`` ``(B, P, ...)``, ``log_w`` ``(B, P)``."""
    idx = torch.multinomial(torch.softmax(log_w, dim=1).cpu(), log_w.shape[1], replacement=True, generator=generator)
    idx = idx.to(x.device)
    return torch.gather(x, 1, idx.reshape(idx.shape + (1,) * (x.ndim - 2)).expand_as(x))


@torch.no_grad()
def inpaint_smc(
    score_fn: ScoreFn,
    sde: LinearSDE,
    x_obs: Tensor,
    mask: Tensor,
    *,
    particles: int = 64,
    steps: int = 100,
    grid: Tensor | None = None,
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, SMCInfo]:
    """Sample the unobserved entries of ``x_obs`` (``mask`` ``True`` where observed) by SMC
    (module doc). ``grid``: descending times ``T .. eps`` (default: ``steps`` time-uniform steps).
    Returns ``(x, info)``: one sample per row with ``x[mask] == x_obs[mask]``."""
    from ..sampling.grids import check_grid, make_grid

    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        raise ValueError(f"particles must be an integer >= 1, got {particles!r}")
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    grid = make_grid(sde, steps) if grid is None else check_grid(grid, sde)
    m = as_mask(mask, x_obs.shape).to(x_obs.device)
    m = m.expand(x_obs.shape).unsqueeze(1)  # (B, 1, ...)
    B, P = x_obs.shape[0], particles
    path = [y.unsqueeze(1) for y in _observed_path(sde, x_obs, grid, generator)]

    x = sde.prior_sample((B, P) + tuple(x_obs.shape[1:]), generator=generator, device=x_obs.device, dtype=x_obs.dtype)
    log_w = torch.zeros(B, P, dtype=x_obs.dtype, device=x_obs.device)
    ess, resamples = [], 0
    for i in range(len(grid) - 1):
        t, s = float(grid[i]), float(grid[i + 1])
        x = torch.where(m, path[i], x)
        mean, var = _ancestral_step(score_fn, sde, x, t, s)
        log_w = log_w - 0.5 * ((path[i + 1] - mean) ** 2 * m).flatten(2).sum(-1) / var
        log_w = log_w - log_w.logsumexp(dim=1, keepdim=True)
        frac = 1.0 / (torch.exp(2 * log_w).sum(dim=1) * P)
        ess.append(float(frac.mean()))
        if bool((frac < ess_threshold).any()):  # the weight depends on x_t only: resample, then move
            mean, log_w, resamples = _resample(mean, log_w, generator), torch.zeros_like(log_w), resamples + 1
        x = mean + var**0.5 * randn_like(mean, generator)

    x = _denoise(score_fn, sde, torch.where(m, path[-1], x), float(grid[-1]))
    pick = torch.multinomial(torch.softmax(log_w, dim=1).cpu(), 1, generator=generator).to(x.device)
    x = torch.gather(x, 1, pick.reshape(B, 1, *([1] * (x.ndim - 2))).expand(B, 1, *x.shape[2:])).squeeze(1)
    x = torch.where(m.squeeze(1), x_obs, x)
    return x, SMCInfo(nfe=len(grid), ess=torch.tensor(ess), resamples=resamples)


def _flat_score(score_fn: ScoreFn, x: Tensor, t: float) -> Tensor:
    """The score of particles ``(B, P, ...)`` evaluated as one batch ``(B * P, ...)``."""
    flat = x.reshape(-1, *x.shape[2:])
    tt = torch.full((flat.shape[0],), t, dtype=x.dtype, device=x.device)
    return score_fn(flat, tt).reshape(x.shape)


def _ancestral_step(score_fn: ScoreFn, sde: LinearSDE, x: Tensor, t: float, s: float) -> tuple[Tensor, float]:
    """Mean and variance of ``q(x_s | x_t, x0_hat)`` (module doc, step 2)."""
    alpha_t, sigma_t = float(sde.alpha(torch.tensor(t))), float(sde.sigma(torch.tensor(t)))
    alpha_s, sigma_s = float(sde.alpha(torch.tensor(s))), float(sde.sigma(torch.tensor(s)))
    a, b = (float(v) for v in sde.transition(s, t))
    x0 = (x + sigma_t**2 * _flat_score(score_fn, x, t)) / alpha_t
    mean = (alpha_s * b**2 / sigma_t**2) * x0 + (a * sigma_s**2 / sigma_t**2) * x
    return mean, b**2 * sigma_s**2 / sigma_t**2


def _denoise(score_fn: ScoreFn, sde: LinearSDE, x: Tensor, t: float) -> Tensor:
    """Tweedie's ``E[x_0 | x_t] = (x + sigma^2 s) / alpha`` at the last time."""
    alpha, sigma = float(sde.alpha(torch.tensor(t))), float(sde.sigma(torch.tensor(t)))
    return (x + sigma**2 * _flat_score(score_fn, x, t)) / alpha
