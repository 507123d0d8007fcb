"""Exact log-likelihoods through the probability-flow ODE, and bits/dim.

The probability-flow ODE ``dx/dt = F(x, t) = f(x, t) - g(t)^2 s(x, t) / 2`` moves samples of
``p_t`` to samples of ``p_{t'}``; along a trajectory the density obeys the instantaneous
change of variables ``d log p_t(x(t)) / dt = -div_x F(x(t), t)``.  Integrating from the data
at ``t = eps`` to the noise end ``t_end`` gives (paper, eq. 39)::

    log p_eps(x) = log p_{t_end}(z) + int_eps^{t_end} div_x F(x(t), t) dt,   z = x(t_end).

The unknown ``p_{t_end}`` is replaced by the Gaussian prior.

**The time variable.**  ``variable="t"`` solves the ODE above as written (the paper's
setting; any :class:`~scoresde.sde.SDE`).  ``variable="log-snr"`` (the default, linear
SDEs) solves the same flow as a function of the log-SNR ``lambda = log(alpha / sigma)``: with the
default ``solver="adams"`` in the denoiser form (below), with the Runge--Kutta pairs for the
normalised state ``y = x / k``, ``k = sqrt(alpha^2 + sigma^2)``::

    dy/dlambda = (sigma^2 / k^2) (y + k s(k y, t(lambda))),     div_y = D sigma^2 / k^2 + sigma^2 div_x s,
    log p_eps(x) = log p_{t_end}(z) + D log(k_end / k_eps) + int_{lambda_eps}^{lambda_end} div_y dlambda.

In these coordinates every linear SDE has the same ODE (that of the variance-preserving SDE with
the same log-SNR), the state stays of order one from data to noise, and the integrand stays
bounded (for Gaussian data ``N(mu, c^2 I)`` it is ``D sigma~^2 alpha~^2 (c^2 - 1) / (alpha~^2 c^2 +
sigma~^2)`` with ``alpha~ = alpha / k``, ``sigma~ = sigma / k``).  The solver steps in ``tau``, the
VP time (``beta`` from 0.1 to 20) of that log-SNR, ``dlambda/dtau = -beta(tau) / (2 (1 -
exp(-B(tau))))``, which packs the nearly-linear stretches at both ends into a few steps.  For VP
this is exactly the ODE in ``t``; VE and sub-VP then cost what VP costs (92--98 NFE at ``rtol =
atol = 1e-5`` on the oracle mixtures, against 104--146 in ``t``) at a similar solver error.
``benchmarks/likelihood.py`` measures error against NFE for both charts (BENCHMARKS.md).

**The prior term.**  ``prior="gaussian"`` (the paper's) replaces ``log p_{t_end}(z)`` by
``log N(z; 0, sigma^2 I)``, ``sigma = sigma(t_end)``, ignoring the mean ``alpha(t_end) x_0`` and the
data variance left in ``p_{t_end}``; its error is first order in ``alpha / sigma``, about
``alpha z.E[x_0] / sigma^2`` per sample, and dominates the estimator's total error on the oracle
mixtures (1.55e-3 nats/dim on the 2-D ring under VP, 30x the solver's error at ``rtol = atol =
1e-5``; 4.7e-3 under VE).  ``prior="corrected"`` (the default) adds the model's own score at
``t_end`` along the segment from ``0`` to ``z``; since ``grad log N(x; 0, sigma^2 I) = -x / sigma^2``::

    log p_{t_end}(z) = log N(z; 0, sigma^2 I) + int_0^1 (s(r z, t_end) + r z / sigma^2) . z dr + C0,
    C0 = log p_{t_end}(0) - log N(0; 0, sigma^2 I) = log E_{x_0} exp(-alpha^2 |x_0|^2 / (2 sigma^2))

(the last form for a point-mass kernel mean; a mixture adds its component variances).  The
integral, whose integrand is ``alpha E[x_0 | r z] . z / sigma^2`` by Tweedie's formula and nearly
linear in ``r``, is taken by ``prior_points``-node Gauss--Legendre in ``r`` (one batched score
call over ``prior_points * B`` states, counted as ``prior_points`` NFE; no divergence).  It
captures the first-order term exactly (two nodes, the default, match the exact line integral to
1e-7 nats/dim on the oracle; one node to 2e-6); what is left is the constant ``C0 ~ -alpha^2
E|x_0|^2 / (2 sigma^2)``, second order, which the line integral cannot see (the score only gives
differences of ``log p``): on the oracle ``-4.4e-5`` (ring) and ``-3.0e-5`` (64-D mixture)
nats/dim under VP and sub-VP, ``-4.1e-4`` and ``-2.8e-4`` under VE (``alpha = 1``, ``sigma = 50``),
up to 8.5e-5 nats/dim on the random family.  ``prior="origin"`` (linear SDEs) estimates it from
one more evaluation, the score and its divergence at the origin (:func:`estimated_prior_constant`,
counted as one NFE; one state, the exact trace up to :data:`ORIGIN_EXACT_MAX_DIM` dimensions)::

    C0 = -(1/2) int_0^u E_v[|x_0|^2] dv ~ -(u / 2) E_u[|x_0|^2] = -(D + sigma^2 (div s(0) + |s(0)|^2)) / 2,

``u = alpha^2 / sigma^2``, ``E_v`` the posterior given the origin at that precision (its second
moment is the denoiser's divergence and square there), exact to first order in ``u`` (on the
oracle mixtures within 1e-3 of ``C0``, about 1e-8 nats/dim).  It is not the default: the
estimate is a small difference, ``D + sigma^2 div s(0) ~ u tr Cov``, so a network's absolute
error in ``sigma^2 div s`` at the origin enters ``C0`` whole (on the CLI tests' briefly trained
digits network it moved bits/dim by 0.057, where the constant from its data moves them by 2.3e-5); it is for
exact or near-exact scores.  ``prior_reference`` (samples of the data) estimates ``C0`` by Monte
Carlo instead (:func:`prior_constant`), for any score.  With either the prior term is exact up to
those errors and only the solver's remains.  The corrected prior is the default because it removes
a bias 7--35x the solver's error at tolerance 1e-5 for 2 NFE.  The
score is queried at ``r z``, closer to the origin than typical latents: a trained network must be
accurate there too, which the oracle cannot check (``prior="gaussian"`` avoids those queries).

**The start.**  The integration starts at ``eps``, by default :func:`likelihood_eps`: the paper's
``1e-5`` (the official ``likelihood.py``) for VP, sub-VP and VE, independent of the SDE's sampling
``eps`` (``sd.VPSDE().eps`` is ``1e-3``), so the default result is the paper's ``log p_{1e-5}``;
other SDEs start at ``sde.eps``.  ``info.eps`` reports the start used.  The result is ``log p_eps``
(data smoothed by the kernel at ``eps``), not ``log p_0``.  A network trained on ``t >= sde.eps``
is queried below its range when ``eps < sde.eps``: train on the likelihood's range too (the
paper trains continuous models from ``1e-5``), or pass ``eps=sde.eps``.  On the oracle the start
costs ``|log p_eps - log p_0|`` of 9e-6 (ring) and 3e-7 (64-D) nats/dim under VP at ``eps =
1e-5`` (9.7e-4 and 3.8e-5 at ``1e-3``); VE keeps ``sigma(0) = sigma_min``, so its ``p_eps`` is the
data smoothed by ``sigma_min``: 9.0e-4 and 3.8e-5 nats/dim (``benchmarks/likelihood.py``).

**The end time.**  The ODE is integrated up to ``t_end = T`` unless the log-SNR at ``T`` is
below ``min_log_snr`` (default ``-10``); then it stops where ``lambda = min_log_snr`` and uses the
prior ``N(0, sigma(t_end)^2 I)`` there.  This only matters for schedules with ``alpha(T) = 0``,
such as :class:`~scoresde.sde.RectifiedFlow`, whose drift is singular at ``T``: stopping at
``alpha = e^{-10} sigma`` leaves a prior error of relative size ``e^{-10}``.

**The default solver: exponential Adams in the denoiser form.**  With ``xbar = x / alpha`` (a VE
process with ``sigmabar = sigma / alpha = exp(-lambda)``) and Tweedie's denoiser ``D(xbar) =
E[x_0 | x] = xbar + sigma^2 s(x, t) / alpha``, the probability-flow ODE of every linear SDE is::

    dxbar/dlambda = D(xbar, lambda) - xbar,   d log p(xbar)/dlambda = D - div_xbar D,
    log p_eps(x) = log p_{t_end}(z) + D log(alpha_end / alpha_eps) + int_{lambda_end}^{lambda_eps} (D - div D) dlambda

(``log p_t(x) = log p(xbar) - D log alpha``; for Gaussian data of width ``w`` the integrand is
``D sigmabar^2 / (w^2 + sigmabar^2)``, a sigmoid in ``lambda``).  ``solver="adams"`` (the default
for linear SDEs) integrates it from the data in ``lambda`` by :mod:`scoresde.multistep`: the
linear part exactly, ``D`` and the integrand by their polynomial through the last ``q`` values
(exponential Adams--Bashforth, variable order ``q <= 5``), **one NFE per step**; the Adams--Moulton
corrector through the new value estimates the local error.  The polynomial is one in the chart
``phi = log(v + a) - log(v + a + b)``, ``v = sigmabar^2`` (:func:`adams_chart`): ``-2 lambda`` in the
middle, affine in ``v`` at the data end (``v << a``, ``a`` the squared width the integrand shows at
the start) and in ``1 / v`` at the noise end (``v >> b =`` :data:`ADAMS_NOISE_SCALE`), where the
field is smooth in those variables and grows like ``exp(-/+ 2 lambda)``.  That error is mapped to ``log p`` itself: a state
error ``dxbar`` made at ``lambda`` changes the final estimate by ``grad log p_lambda(xbar) . dxbar``
(the rest of the solve computes ``log p_lambda`` at the perturbed point), and ``grad log p_lambda =
-(xbar - D) / sigmabar^2`` is known from the same evaluation.  Each step's local error of
``log p / D`` (per sample, its mean over the batch, ``error_norm="batch"``, or the largest,
``"sample"``) sizes the steps for ``atol`` (default :data:`ADAMS_TOL`; ``rtol`` is not used); a
step of order 3 or more is rejected only above :data:`ADAMS_ACCEPT` times it (after the correction
below its estimate is pessimistic, and a rejection costs an NFE), one of order 1 or 2 above
``atol`` itself (their estimates are unreliable, :mod:`scoresde.multistep`).  The sum of the
signed local errors over the steps (``stats.correction``, first-order exact) is added to the
result, a global correction for no NFE: each step's estimate from its own corrector (on the random
family the estimate of orders 3--5 was the negative of the true local error within 3 %; re-estimating the
state's after the solve with the cubic through the nodes on both sides, the default before, left
1.5--2x the error).  The first step, of order 1 (a constant field), is sized for
:data:`ADAMS_FIRST_SHARE` of ``atol`` on the integrand's growth at the data end, ``l'(lambda) =
l'_0 exp(2 (lambda_0 - lambda))``, so ``l'_0 (e^{2h} - 1 - 2h) / 2 = share * atol``: one step
across the stretch where the data's smoothing is far below its width (sub-VP starts at ``lambda =
13.8``).  For Hutchinson the known trace of ``sigma~^2 I`` (the part of ``I - J_D`` of
unit-variance data) is taken exactly and only the rest estimated (a control variate for Gaussian
probes; Rademacher probes are unaffected).  Where it pays: scores smooth in ``lambda`` (the oracle
mixtures, exact scores of data of any width); on a trained network (the digits DDPM++) the
denoiser is rough in ``lambda``, the order drops to 2--3, and bosh3 needs fewer NFE for the same
error (117 NFE for 1.6e-3 bits/dim against 211 for 1.2e-3, BENCHMARKS.md) — the CLI's
``evaluation.solver`` therefore stays ``"bosh3"``.

**Error control of the Runge--Kutta pairs.**  For ``solver="bosh3"``, ``"dopri5"`` and
``"torchdiffeq:<name>"`` the solver state is the flat ``(B, D + k)`` tensor ``[y, l_1 / D, .., l_k / D]``
(``k`` probes, one column for the exact trace): ``rtol`` and ``atol`` (default :data:`RK_TOL`) bound
the RMS, over the batch, of the local error of each state coordinate and of the log-density *per
dimension* (the paper's norm, that of scipy's ``solve_ivp``, with the log-density divided by ``D``
so that a tolerance means the same thing in 2 and in 3072 dimensions); ``error_norm="sample"``
takes the RMS over each sample's row and steps by the worst one.  ``"bosh3"`` is
:mod:`scoresde.rk`'s Bogacki--Shampine 3(2) pair under a PI step-size controller (the default for
non-linear SDEs), ``"dopri5"`` the Dormand--Prince 5(4) pair under the same controller.

A local tolerance is not the global error: ``info.error_estimate`` reports, per sample, the
accumulated absolute local error estimates (:class:`LikelihoodInfo`), so the worst point of a
batch is visible.  On the 48 unseen members of a family of random mixtures (dimension 2--256,
widths down to 0.01, ``benchmarks/likelihood.py --parts family``, held-out and fresh seeds,
BENCHMARKS.md) the default spends 0.43x and 0.48x the NFE of the paper's estimator (scipy's RK45
in ``t`` at ``1e-5``, Gaussian prior; 1060 against 2550, 1099 against 2358) at 1.14x and 0.95x its
error (mean of the per-member ratios; family means 3.4e-4 against 1.3e-3 and 2.4e-4 against 6.8e-4
nats/dim), errs no more than it on 17 of 24 in each set, and the true error stayed below 51 % of
``info.error_estimate`` on every point; half its NFE at no more than its error (the goal of issue
19) is met on 10 and 8 of 24 (every VE member; VP 0 of 6 and 3 of 12, sub-VP 0 of 8 and 1 of 8),
the same counts as the previous settings (polynomials in ``lambda``, ``atol = 1e-4``: 0.47x and
0.53x the NFE at 0.75x and 0.78x the error).  Where it misses on VP and sub-VP the baseline is
either accurate (5e-5--3e-4 nats/dim, which adams at 0.4x its NFE exceeds) or cheap (68--98 NFE,
half of which does not reach from the data to the noise at 0.1--0.3 of ``lambda`` per NFE where
the modes separate).

**Cost per NFE.**  One evaluation of the ODE right-hand side is one forward call of ``score_fn``
plus vector-Jacobian products of its output, batched by ``torch.func.vmap`` (:class:`VJPEngine`):
``k`` VJPs for ``k`` Hutchinson probes, ``D`` for ``"exact"`` (the full Jacobian trace, meant for
low dimension: ``divergence="auto"`` takes it up to :data:`EXACT_MAX_DIM` dimensions only).  The
drift comes from the same forward pass.  ``info.nfe`` counts these evaluations.
"""

from __future__ import annotations

import base64
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from scipy.optimize import brentq
from torch import Tensor
from tqdm.auto import tqdm

from ._tensor import (
    append_dims,
    as_batch_time,
    batch_sum,
    check_choice,
    check_finite,
    check_int,
    check_positive,
    gaussian_logp,
)
from .data import dequantize
from .multistep import solve_exponential_adams
from .rk import ADAPTIVE_METHODS, NORMS, solve
from .score import ScoreFn
from .sde import SDE, VESDE, VPSDE, LinearSDE

DIVERGENCES = ("auto", "exact", "hutchinson")
PROBE_DISTS = ("rademacher", "gaussian")
VARIABLES = ("log-snr", "t")
PRIORS = ("corrected", "origin", "gaussian")
ADAMS = "adams"  # the exponential Adams method in the log-SNR (the default for linear SDEs)
SOLVERS = (ADAMS,) + ADAPTIVE_METHODS
ADAMS_TOL = 3e-4  # adams: each step's local error of log p, nats/dim (set on the dev members of the random family)
ADAMS_ACCEPT = 10.0  # adams: steps of order >= 3 sized for ADAMS_TOL are rejected only above 10x (dev members too)
ADAMS_FIRST_SHARE = 0.01  # adams: the first (order-1) step's share of ADAMS_TOL (dev members too)
ADAMS_NOISE_SCALE = 30.0  # adams: sigmabar^2 beyond which its chart turns into 1 / sigmabar^2 (set on the dev members)
RK_TOL = 1e-3  # the Runge--Kutta pairs' rtol and atol
PAPER_EPS = 1e-5  # the official likelihood.py's start time (VE, VP and sub-VP continuous models)
EXACT_MAX_DIM = 16  # divergence="auto": the exact trace up to this dimension, Hutchinson above
HUTCHINSON_PROBES = 2  # the default probe count: the fewest whose spread gives a standard error
ORIGIN_EXACT_MAX_DIM = 256  # C0 from the origin (estimated_prior_constant): the exact trace up to this dimension
ORIGIN_PROBES = 64  # ... and Rademacher probes above it (one state: 64 VJPs)


def likelihood_eps(sde: SDE) -> float:
    """The default start time of the likelihood ODE: the paper's ``1e-5`` (the official
    ``likelihood.py``) for :class:`~scoresde.sde.VPSDE`, :class:`~scoresde.sde.SubVPSDE` and
    :class:`~scoresde.sde.VESDE`, whatever their sampling ``eps``; ``sde.eps`` for every other SDE
    (:class:`~scoresde.sde.RectifiedFlow`'s ``1e-3`` is ``sigma = 1e-3``, the smoothing VP has at
    ``1e-5``; a user schedule has no paper value)."""
    return PAPER_EPS if isinstance(sde, (VPSDE, VESDE)) else sde.eps


@dataclass
class LikelihoodInfo:
    """What :func:`log_likelihood` spent and found.

    ``nfe``: score evaluations (the prior correction's included); ``z``: the latent ``x(t_end)``;
    ``prior_logp``: the prior term, ``log N(z; 0, sigma^2 I)`` plus the correction when
    ``prior="corrected"``; ``delta_logp``: ``log p_eps(x) - prior_logp``; ``eps``: where the
    integration started (the result is ``log p_eps``); ``t_end``: where the prior was applied;
    ``divergence``: the estimator used (``"exact"`` or ``"hutchinson"``).

    ``error_estimate``: per sample, in nats, the solver's error indicator: for ``solver="adams"``
    the sum over the steps of the absolute local error of ``log p`` (the corrector's difference
    mapped by the score; before the first-order correction the result already includes); for the
    Runge--Kutta pairs the sum of the embedded local error estimate of the log-density plus that of
    the latent weighted by the prior's gradient ``|z| / sigma^2`` (``None`` for torchdiffeq's
    solvers, which do not expose it).  A sum of absolute values, an indicator, not a bound; on the
    384 held-out and fresh points of the random mixture family (``benchmarks/likelihood.py --parts
    family``) at the default settings the true error was 0.01 % to 51 % of it (bosh3 at ``1e-3``,
    held-out: 0.02 % to 22 %).  ``stderr``: per sample, the Monte-Carlo standard error of
    Hutchinson's estimate, ``std / sqrt(probes)`` over the probes' separate integrals (``None``
    for the exact divergence or a single probe).  Neither includes the error of the prior term.
    """

    nfe: int
    z: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    eps: float
    t_end: float
    divergence: str
    error_estimate: Tensor | None
    stderr: Tensor | None


# -- divergences --------------------------------------------------------------------------------
def draw_probes(
    x: Tensor, probes: int, probe_dist: str = "rademacher", generator: torch.Generator | None = None
) -> Tensor:
    """``probes`` Hutchinson probe vectors per sample, shape ``(probes, B, ...)``, with
    ``E[v v^T] = I``: Rademacher (entries +-1) or standard Gaussian."""
    check_choice(probe_dist, PROBE_DISTS, "probe_dist")
    shape = (probes,) + tuple(x.shape)
    if probe_dist == "gaussian":
        return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
    return bits.to(x.dtype) * 2 - 1


def _basis(y: Tensor) -> Tensor:
    """The ``D`` unit vectors of one sample's space, repeated over the batch: ``(D, B, ...)``."""
    dim = y[0].numel()
    eye = torch.eye(dim, dtype=y.dtype, device=y.device)
    return eye[:, None, :].expand(dim, y.shape[0], dim).reshape((dim,) + tuple(y.shape))


class VJPEngine:
    """Vector-Jacobian products of a per-sample map from one forward pass.

    The batched path is ``torch.func.vjp`` with ``torch.func.vmap`` over the vectors (one forward,
    the ``k`` VJPs as one batched backward).  Some models' backward has no vmap rule (diffusers'
    ``UNet2DModel``: GroupNorm on a channels-last tensor, "NYI: querying is_contiguous inside of
    vmap"); then the engine warns once and falls back to ``k`` plain autograd backward passes
    over the same forward graph for the rest of its life.
    """

    def __init__(self) -> None:
        self.batched = True

    def __call__(self, fn: Callable[[Tensor], Tensor], y: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor]:
        """``(fn(y), J^T v_j for each of the vectors (k, B, ...))``; autograd is enabled locally."""
        with torch.inference_mode(False), torch.enable_grad():
            y = y.detach().clone()
            if self.batched:
                try:
                    out, pullback = torch.func.vjp(fn, y)
                    (grads,) = torch.func.vmap(pullback)(vectors)
                    return out.detach(), grads.detach()
                except (RuntimeError, NotImplementedError) as err:  # no vmap rule for an op of the model
                    warnings.warn(f"batched VJPs (torch.func.vmap) failed ({str(err).splitlines()[0]}); "
                                  "using one backward pass per vector", RuntimeWarning, stacklevel=3)
                    self.batched = False
            y.requires_grad_(True)
            out = fn(y)
            last = vectors.shape[0] - 1
            grads = torch.stack([torch.autograd.grad(out, y, v, retain_graph=j < last)[0] for j, v in enumerate(vectors)])
        return out.detach(), grads


def value_and_divergence_terms(
    fn: Callable[[Tensor], Tensor], y: Tensor, probes: Tensor | None, engine: VJPEngine | None = None
) -> tuple[Tensor, Tensor]:
    """``(fn(y), terms)`` with ``terms[j] = v_j^T (d fn / d y) v_j`` per sample, shape ``(k, B)``,
    for the probes ``v_j`` ``(k, B, ...)``; for ``probes=None`` one row, the exact trace
    ``sum_i e_i^T (d fn / d y) e_i`` (``D`` VJPs).  ``fn`` must act on each sample separately."""
    engine = engine or VJPEngine()
    vectors = _basis(y) if probes is None else probes
    out, grads = engine(fn, y, vectors)
    terms = (grads * vectors).flatten(2).sum(2)
    return out, (terms.sum(0, keepdim=True) if probes is None else terms)


def value_and_divergence(fn: Callable[[Tensor], Tensor], y: Tensor, probes: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(fn(y), div_y fn(y))`` from one forward pass and batched VJPs: the exact trace
    (``probes=None``) or Hutchinson's estimate ``mean_j v_j^T (d fn / d y) v_j``
    (:func:`value_and_divergence_terms`)."""
    out, terms = value_and_divergence_terms(fn, y, probes)
    return out, terms.mean(0)


# -- the ODE in its time variable ---------------------------------------------------------------
class _Chart:
    """The probability-flow ODE in a solver variable ``u`` for the state ``y = c(u) x``.

    ``bounds``: ``u`` at ``eps`` and at the end time; ``velocity(y, u)``: ``dy/du``;
    ``log_scale(u) = log c(u)``.
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, t0: float, t1: float) -> None:
        self.sde, self.score_fn, self.t0, self.t1 = sde, score_fn, t0, t1

    def to_state(self, x: Tensor, u: Tensor) -> Tensor:
        return x * torch.exp(self.log_scale(u))

    def from_state(self, y: Tensor, u: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale(u))


class _TimeChart(_Chart):
    """``u = t``, ``y = x``: ``dx/dt = f(x, t) - g(t)^2 s(x, t) / 2`` (the paper's form)."""

    @property
    def bounds(self) -> tuple[float, float]:
        return self.t0, self.t1

    def log_scale(self, u: Tensor) -> Tensor:
        return torch.zeros_like(u)

    def velocity(self, y: Tensor, u: Tensor) -> Tensor:
        t = as_batch_time(u, y)
        return self.sde.probability_flow_drift(y, t, self.score_fn(y, t))


class _LogSNRChart(_Chart):
    """``u = tau``, the VP time of ``lambda = log(alpha/sigma)``; ``y = x / k``, ``k = sqrt(alpha^2 + sigma^2)``:
    ``dy/dtau = (dlambda/dtau) (sigma^2 / k^2) (y + k s(k y, t(lambda(tau))))``."""

    clock = VPSDE(beta_min=0.1, beta_max=20.0)

    @property
    def bounds(self) -> tuple[float, float]:
        lam = self.sde.log_snr(torch.tensor([self.t0, self.t1], dtype=torch.float64))
        tau = self.clock.t_of_log_snr(lam)
        return float(tau[0]), float(tau[1])

    def time(self, u: Tensor) -> Tensor:
        return self.sde.t_of_log_snr(self.clock.log_snr(u))

    def log_scale(self, u: Tensor) -> Tensor:
        t = self.time(u)
        return -0.5 * torch.log(self.sde.alpha(t) ** 2 + self.sde.sigma(t) ** 2)

    def velocity(self, y: Tensor, u: Tensor) -> Tensor:
        t = as_batch_time(self.time(u), y)
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        k2 = alpha**2 + sigma**2
        k = append_dims(k2.sqrt(), y.ndim)
        dlam = -self.clock.beta(u) / (2 * -torch.expm1(-self.clock.int_beta(u)))
        rate = append_dims(dlam * sigma**2 / k2, y.ndim)
        return rate * (y + k * self.score_fn(k * y, t))


_CHARTS = {"t": _TimeChart, "log-snr": _LogSNRChart}


def end_time(sde: SDE, min_log_snr: float = -10.0) -> float:
    """Where the likelihood ODE stops: ``T``, or for a linear SDE whose log-SNR at ``T`` is below
    ``min_log_snr`` (``alpha(T) = 0``, e.g. rectified flow) the time where ``lambda = min_log_snr``."""
    if not isinstance(sde, LinearSDE):
        return sde.T
    lam_T = float(sde.log_snr(torch.tensor(sde.T, dtype=torch.float64)))
    if lam_T >= min_log_snr:
        return sde.T
    return float(sde.t_of_log_snr(torch.tensor(min_log_snr, dtype=torch.float64)))


def _prior_std(sde: SDE, t_end: float) -> float:
    """The Gaussian prior's standard deviation at ``t_end``: ``sde.prior_std`` at ``T``, else ``sigma(t_end)``."""
    if t_end == sde.T:
        return sde.prior_std
    return float(sde.sigma(torch.tensor(t_end, dtype=torch.float64)))


def prior_correction(score_fn: ScoreFn, z: Tensor, t_end: float, std: float, points: int = 2) -> Tensor:
    """``int_0^1 (s(r z, t_end) + r z / std^2) . z dr`` per sample, by ``points``-node Gauss--Legendre
    in ``r`` from one batched call of ``score_fn`` on the ``points * B`` states ``r_j z``.

    Added to ``log N(z; 0, std^2 I)`` it gives ``log p_{t_end}(z) - C0`` with ``C0 = log p_{t_end}(0)
    - log N(0; 0, std^2 I)`` (module docstring): the line integral of ``grad log p - grad log N``.
    """
    nodes, weights = np.polynomial.legendre.leggauss(points)  # on [-1, 1]
    r = torch.as_tensor((nodes + 1) / 2, dtype=z.dtype, device=z.device)
    w = torch.as_tensor(weights / 2, dtype=z.dtype, device=z.device)
    states = append_dims(r, z.ndim + 1) * z  # (points, B, ...)
    flat = states.reshape((-1,) + tuple(z.shape[1:]))
    t = torch.full((flat.shape[0],), t_end, dtype=z.dtype, device=z.device)
    with torch.no_grad():
        score = score_fn(flat, t).reshape(states.shape)
    integrand = ((score + states / std**2) * z).flatten(2).sum(2)  # (points, B)
    return (w[:, None] * integrand).sum(0)


def prior_constant(reference: Tensor, sde: LinearSDE, t_end: float, std: float) -> float:
    """``C0 = log p_{t_end}(0) - log N(0; 0, std^2 I)`` from samples ``reference`` of the data::

        C0 = log E_{x_0} exp(-alpha^2 |x_0|^2 / (2 std^2)) ~ logsumexp_j(-alpha^2 |x_j|^2 / (2 std^2)) - log n,

    exact in expectation for the kernel ``N(alpha x_0, std^2 I)`` at ``t_end`` (``std = sigma(t_end)``):
    the constant the score cannot see (module docstring), taken from the data instead."""
    if not isinstance(sde, LinearSDE):
        raise ValueError("prior_reference needs a LinearSDE (a Gaussian kernel)")
    if not isinstance(reference, Tensor) or reference.ndim < 2 or reference.shape[0] == 0:
        raise ValueError("prior_reference must be a tensor of data samples of shape (n, ...), n >= 1")
    check_finite(reference, "prior_reference")
    alpha = float(sde.alpha(torch.tensor(t_end, dtype=torch.float64)))
    sq = batch_sum(reference.double() ** 2)
    return float(torch.logsumexp(-(alpha**2) * sq / (2 * std**2), 0) - math.log(sq.numel()))


def estimated_prior_constant(
    score_fn: ScoreFn, sde: LinearSDE, t_end: float, std: float, like: Tensor, probes: Tensor | None = None
) -> float:
    """``C0 = log p_{t_end}(0) - log N(0; 0, std^2 I)`` (module docstring) from one evaluation of
    the score and its divergence at the origin (one sample shaped like ``like[0]``).  With ``xbar = x /
    alpha`` (``sigmabar = sigma / alpha``, ``u = 1 / sigmabar^2``) and the denoiser ``D = xbar + sigma^2 s / alpha``::

        C0 = log E exp(-u |x_0|^2 / 2) + D log(std / sigma) = -(1/2) int_0^u E_v[|x_0|^2] dv + D log(std / sigma),

    ``E_v`` the posterior given ``xbar = 0`` at ``sigmabar^2 = 1 / v``, whose second moment at ``v =
    u`` is ``sigmabar^2 div D + |D|^2`` (the trace of its covariance plus its squared mean); the
    rectangle rule at ``u``, exact to first order (it errs by ``-u^2 Var_u(|x_0|^2) / 8``), gives::

        C0 ~ -(div D(0) + u |D(0)|^2) / 2 + D log(std / sigma) = -(D + sigma^2 (div s(0) + |s(0)|^2)) / 2 + D log(std / sigma),

    ``s`` the score at ``t_end`` (``D`` in the formula's first term the dimension).  The divergence
    is the exact trace, or for ``probes`` ``(k, 1, ...)`` Hutchinson's estimate of ``div(x +
    sigma^2 s)`` (small: ``u tr Cov``, so its noise is too)."""
    sigma = float(sde.sigma(torch.tensor(t_end, dtype=torch.float64)))
    origin = like.new_zeros((1,) + tuple(like.shape[1:]))
    tt = torch.full((1,), t_end, dtype=like.dtype, device=like.device)
    shifted, div = value_and_divergence(lambda y: y + sigma**2 * score_fn(y, tt), origin, probes)  # sigma^2 s(0), div
    c0 = -(float(div.double().sum()) + float(shifted.double().pow(2).sum()) / sigma**2) / 2
    return c0 + origin.numel() * math.log(std / sigma)


def _check_input(x: Tensor, sde: SDE, variable: str) -> None:
    """Raise ``ValueError`` naming the argument for malformed ``x`` or an unusable time variable."""
    if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (B, ...) with B >= 1 and at least one data axis, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor, got {x.dtype}")
    check_finite(x, "x")
    check_choice(variable, VARIABLES, "variable")
    if variable == "log-snr" and not isinstance(sde, LinearSDE):
        raise ValueError("variable='log-snr' needs a LinearSDE; use variable='t' for other SDEs")


def _resolve_divergence(divergence: str, probes: int | None, dim: int) -> tuple[str, int]:
    """``("exact", 1)`` or ``("hutchinson", probes)``: ``"auto"`` takes the exact trace up to
    :data:`EXACT_MAX_DIM` dimensions; Hutchinson defaults to :data:`HUTCHINSON_PROBES` probes."""
    check_choice(divergence, DIVERGENCES, "divergence")
    if divergence == "auto":
        divergence = "exact" if dim <= EXACT_MAX_DIM else "hutchinson"
    if probes is not None and probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    if divergence == "exact":
        return divergence, 1
    return divergence, HUTCHINSON_PROBES if probes is None else probes


def _solve_chart(
    chart: _Chart, x: Tensor, probe_vectors: Tensor | None, probes: int, solver: str, rtol: float, atol: float,
    error_norm: str, max_nfe: int, count: Callable[[float], None], std: float,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The ODE of ``chart`` by an explicit Runge--Kutta pair (:func:`scoresde.rk.solve`): the latent
    ``z``, each probe's ``log p_eps(x) - log p_{t_end}(z)`` ``(B, k)``, and the error indicator of
    :class:`LikelihoodInfo` (``None`` for torchdiffeq's solvers)."""
    dim = x[0].numel()
    engine = VJPEngine()
    u0, u1 = chart.bounds

    def rhs(u: float, state: Tensor) -> Tensor:
        """``d[y, l_j/D]/du`` for the flat state ``(B, D + k)``: one forward and its VJPs."""
        count(abs(u - u0) / abs(u1 - u0))
        ut = torch.tensor(u, dtype=x.dtype, device=x.device)
        y = state[:, :dim].reshape(x.shape)
        vel, terms = value_and_divergence_terms(lambda v: chart.velocity(v, ut), y, probe_vectors, engine)
        return torch.cat([vel.flatten(1), terms.T / dim], 1)

    y0 = chart.to_state(x, torch.tensor(u0, dtype=x.dtype, device=x.device))
    state = torch.cat([y0.flatten(1), y0.new_zeros(x.shape[0], probes)], 1)
    state, stats = solve(rhs, state, u0, u1, solver, rtol=rtol, atol=atol, norm=error_norm, max_steps=max_nfe,
                         return_stats=True)
    u_end = torch.tensor(u1, dtype=x.dtype, device=x.device)
    z = chart.from_state(state[:, :dim].reshape(x.shape), u_end)
    shift = chart.log_scale(torch.tensor(u0, dtype=x.dtype, device=x.device)) - chart.log_scale(u_end)
    error = None
    if stats is not None and stats.error is not None:
        latent_error = stats.error[:, :dim].reshape(x.shape) * torch.exp(-chart.log_scale(u_end))
        error = dim * stats.error[:, dim:].mean(1) + batch_sum(latent_error * z.abs()) / std**2
    return z, dim * (state[:, dim:] + shift), error


def adams_chart(data_scale: float, noise_scale: float = ADAMS_NOISE_SCALE) -> Callable[[np.ndarray], np.ndarray]:
    """The variable in which :func:`_solve_adams` interpolates the field (``chart`` of
    :func:`scoresde.multistep.solve_exponential_adams`), a function of ``lambda`` through ``v =
    sigmabar^2 = exp(-2 lambda)``::

        phi(lambda) = log(v + a) - log(v + a + b) = -2 lambda + O(a / v + v / b),   a = data_scale, b = noise_scale.

    Between the ends ``phi ~ -2 lambda`` (the plain log-SNR); at the data end (``v << a``) ``phi``
    is affine in ``v`` and at the noise end (``v >> b``) in ``1 / v``, the variables in which the
    field is smooth there (for Gaussian data of width ``w`` the integrand is ``v / (w^2 + v)``,
    ``D - xbar`` is ``v`` times a smooth function of ``v``, and ``D``, ``div D`` are analytic in
    ``1 / v`` near ``0``), where polynomials in ``lambda`` extrapolate the ``exp(-/+ 2 lambda)``
    growth poorly."""
    log_a, log_b = math.log(data_scale), math.log(noise_scale)

    def phi(lam: np.ndarray) -> np.ndarray:
        inner = np.logaddexp(-2 * np.asarray(lam, dtype=np.float64), log_a)
        return inner - np.logaddexp(inner, log_b)

    return phi


def _solve_adams(
    score_fn: ScoreFn, sde: LinearSDE, x: Tensor, times: tuple[float, float], probe_vectors: Tensor | None,
    probes: int, tol: float, error_norm: str, count: Callable[[float], None],
) -> tuple[Tensor, Tensor, Tensor]:
    """The denoiser form of the ODE (module docstring) by :func:`scoresde.multistep.solve_exponential_adams`:
    the latent ``z``, each probe's ``log p_eps(x) - log p_{t_end}(z)`` ``(B, k)`` with the
    first-order correction, and the error indicator (the uncorrected local errors' absolute sum)."""
    dim, batch = x[0].numel(), x.shape[0]
    lam0, lam1 = (float(v) for v in sde.log_snr(torch.tensor(times, dtype=torch.float64)))
    engine = VJPEngine()

    def field(lam: float, state: Tensor) -> Tensor:
        """``[D(xbar), l_j'/D]``, ``l_j' = v_j^T (d r / d xbar - c I) v_j + c D``, ``r = xbar - D``, ``c =
        sigma~^2`` (a control variate for Gaussian probes): one forward, its VJPs."""
        count(abs(lam - lam0) / abs(lam1 - lam0))
        t = sde.t_of_log_snr(torch.tensor(lam, dtype=torch.float64))
        alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
        tt = torch.full((batch,), float(t), dtype=x.dtype, device=x.device)
        ref = 1 / (1 + math.exp(2 * lam))  # I - J_D for data N(0, I): its trace is exact, the rest estimated
        xbar = state[:, :dim].reshape(x.shape)
        excess, terms = value_and_divergence_terms(lambda v: -(sigma**2 / alpha) * score_fn(alpha * v, tt) - ref * v,
                                                   xbar, probe_vectors, engine)
        return torch.cat([(xbar * (1 - ref) - excess).flatten(1), terms.T / dim + ref], 1)

    def local_error(diff: Tensor, pred: Tensor, new: Tensor, lam: float) -> Tensor:
        """Each probe's local error of ``log p_eps(x) / D``: the state's, ``grad log p_lambda .
        dxbar / D`` with ``grad log p_lambda(xbar) = -r / sigmabar^2``, ``r = xbar - D``, plus its
        density column's, ``-dl_j``."""
        r = pred[:, :dim] - new[:, :dim]
        return (-(r * diff[:, :dim]).sum(1) * math.exp(2 * lam) / dim)[:, None] - diff[:, dim:]

    def first_step(value: Tensor) -> float:
        """The root ``h`` of ``(e^{2h} - 1 - 2h) / 2 = share * tol / |l'_0|`` (increasing in ``h``;
        bracketed by ``0`` and ``log(1 + 2 share tol / |l'_0|) / 2 + 1``): an order-1 step's
        quadrature error where ``l'`` grows like ``exp(-2 lambda)``."""
        target = 2 * ADAMS_FIRST_SHARE * tol / max(float(value[:, dim:].abs().mean()), 1e-30)
        return brentq(lambda h: math.expm1(2 * h) - 2 * h - target, 0.0, 0.5 * math.log1p(target) + 1.0)

    def chart(value: Tensor) -> Callable[[np.ndarray], np.ndarray]:
        """:func:`adams_chart` with the data end's scale ``a = sigmabar_0^2 / l'(lambda_0)`` (the
        squared width the integrand ``l' ~ sigmabar^2 / w^2`` shows at the start), at most
        :data:`ADAMS_NOISE_SCALE` (an integrand that vanishes at the start, e.g. of a zero score,
        would make the chart constant)."""
        width = math.exp(-2 * lam0) / max(float(value[:, dim:].abs().mean()), 1e-30)
        return adams_chart(min(width, ADAMS_NOISE_SCALE))

    alpha0, alpha1 = (float(sde.alpha(torch.tensor(t, dtype=torch.float64))) for t in times)
    state = torch.cat([x.flatten(1) / alpha0, x.new_zeros(batch, probes)], 1)
    rates = torch.cat([torch.ones(dim), torch.zeros(probes)]).to(x.device)
    state, stats = solve_exponential_adams(field, state, lam0, lam1, rates, local_error, tol=tol, norm=error_norm,
                                           first_step=first_step, accept=ADAMS_ACCEPT, chart=chart)
    z = state[:, :dim].reshape(x.shape) * alpha1
    per_probe = dim * (math.log(alpha1 / alpha0) - state[:, dim:] + stats.correction)
    return z, per_probe, dim * stats.error.mean(1)


def log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    divergence: str = "auto",
    probes: int | None = None,
    probe_dist: str = "rademacher",
    rtol: float | None = None,
    atol: float | None = None,
    solver: str | None = None,
    error_norm: str = "batch",
    eps: float | None = None,
    variable: str | None = None,
    prior: str = "corrected",
    prior_points: int = 2,
    prior_reference: Tensor | None = None,
    min_log_snr: float = -10.0,
    generator: torch.Generator | None = None,
    max_nfe: int = 20_000,
    progress: bool = False,
) -> tuple[Tensor, LikelihoodInfo]:
    """``log p_eps(x)`` in nats per sample through the probability-flow ODE (module docstring).

    The names are :func:`scoresde.sample`'s (its ``method="ode"`` options): ``solver``, ``variable``,
    ``rtol``, ``atol``, ``max_nfe``; ``eps`` is the time cut-off only.

    One batched adaptive solve of ``[y, l_1/D, .., l_k/D]`` from ``eps`` (default
    :func:`likelihood_eps`: the paper's ``1e-5`` for VP, sub-VP and VE, ``sde.eps`` otherwise) to
    the end time (:func:`end_time`) on ``x``'s device and dtype, with ``l_j' = v_j^T (d/dy dy/du) v_j``.
    ``divergence``: ``"exact"`` (the Jacobian trace, ``D`` VJPs per NFE), ``"hutchinson"``
    (``probes`` probe vectors, default 2, drawn once from ``generator`` and kept for the whole
    solve, so the estimate is unbiased: ``E[v^T J v] = tr J``; each probe's integral is kept apart,
    so ``info.stderr`` is their standard error) or ``"auto"`` (the default: exact up to
    :data:`EXACT_MAX_DIM` dimensions, Hutchinson above).  VJPs go through ``torch.func``
    (:class:`VJPEngine`, one forward per NFE) with a fallback for models vmap cannot batch.
    ``variable``: ``"log-snr"`` (the default for a :class:`~scoresde.sde.LinearSDE`) or ``"t"`` (the
    default for other SDEs).  ``solver``: ``"adams"`` (the default in the log-SNR: the exponential
    Adams method of :mod:`scoresde.multistep` on the denoiser form, one NFE per step; ``atol``,
    default :data:`ADAMS_TOL`, bounds each step's local error of ``log p`` per dimension; ``rtol`` is
    not used), ``"bosh3"`` (the default in ``t``) or ``"dopri5"`` (:func:`scoresde.rk.solve_adaptive`,
    PI step control) or ``"torchdiffeq:<name>"`` (:data:`SOLVERS`, :func:`scoresde.rk.solve`), whose
    ``rtol``, ``atol`` (default :data:`RK_TOL`) bound the local error per coordinate and per dimension
    of the log-density (module docstring); the error is measured over the whole batch
    (``error_norm="batch"``) or for each sample on its own (``"sample"``: the worst sample sets the
    step; more NFE).  More than ``max_nfe`` score evaluations raise ``RuntimeError`` (a stiff ODE
    stops instead of running on).  ``min_log_snr``: see :func:`end_time`.  ``prior``:
    ``"corrected"`` (``log N`` plus the score's line integral from ``0`` to ``z``,
    :func:`prior_correction`, ``prior_points`` extra NFE), ``"origin"`` (the same plus the constant
    ``C0`` from the score at the origin, :func:`estimated_prior_constant`, one more NFE; linear SDEs,
    exact scores: a network's error there enters it whole) or ``"gaussian"`` (the paper's
    ``log N(z; 0, sigma(t_end)^2 I)``); the module docstring states the bias of each.
    ``prior_reference``: samples of the data (e.g. a training batch, in the model's range); with
    the corrected prior ``C0`` is estimated from them instead (:func:`prior_constant`, no NFE).

    Returns ``(logp, info)`` with ``logp`` of shape ``(B,)`` and :class:`LikelihoodInfo` (``nfe``,
    ``eps``, the per-sample ``error_estimate`` and, for Hutchinson, ``stderr``).
    """
    if variable is None:
        variable = "log-snr" if isinstance(sde, LinearSDE) else "t"
    _check_input(x, sde, variable)
    dim = x[0].numel()
    divergence, probes = _resolve_divergence(divergence, probes, dim)
    if solver is None:
        solver = ADAMS if variable == "log-snr" else "bosh3"
    check_choice(solver, SOLVERS, "solver")
    if solver == ADAMS and variable != "log-snr":
        raise ValueError(f"solver='adams' integrates in the log-SNR; use a Runge--Kutta solver with variable={variable!r}")
    check_choice(prior, PRIORS, "prior")
    check_choice(error_norm, NORMS, "error_norm")
    if prior_reference is not None and prior != "corrected":
        raise ValueError("prior_reference adds the constant of the corrected prior; use prior='corrected'")
    if prior == "origin" and not isinstance(sde, LinearSDE):
        raise ValueError("prior='origin' estimates C0 through a Gaussian kernel; it needs a LinearSDE")
    if prior_points < 1:
        raise ValueError(f"prior_points must be >= 1, got {prior_points}")
    check_int(max_nfe, "max_nfe", 1)
    for tol, name in ((rtol, "rtol"), (atol, "atol")):
        if tol is not None:
            check_positive(tol, name)
    t0 = likelihood_eps(sde) if eps is None else check_positive(eps, "eps")
    t_end = end_time(sde, min_log_snr)
    if not t0 < t_end:
        raise ValueError(f"eps must be below the end time {t_end}, got {t0}")

    std = _prior_std(sde, t_end)
    c0 = 0.0 if prior_reference is None else prior_constant(prior_reference, sde, t_end, std)  # checked before the solve
    probe_vectors = draw_probes(x, probes, probe_dist, generator) if divergence == "hutchinson" else None
    nfe = 0
    bar = tqdm(total=1.0, disable=not progress, desc="log-likelihood", unit="")

    def count(done: float) -> None:
        """One more score evaluation, ``done`` of the way to the end; stop past ``max_nfe``."""
        nonlocal nfe
        if nfe >= max_nfe:
            raise RuntimeError(f"log_likelihood: more than max_nfe={max_nfe} score evaluations before t={t_end}")
        nfe += 1
        if progress:
            bar.set_postfix(nfe=nfe, refresh=False)
            bar.update(done - bar.n)

    try:
        if solver == ADAMS:
            z, per_probe, error = _solve_adams(score_fn, sde, x, (t0, t_end), probe_vectors, probes,
                                               ADAMS_TOL if atol is None else atol, error_norm, count)
        else:
            chart = _CHARTS[variable](sde, score_fn, t0, t_end)
            z, per_probe, error = _solve_chart(chart, x, probe_vectors, probes, solver, RK_TOL if rtol is None else rtol,
                                               RK_TOL if atol is None else atol, error_norm, max_nfe, count, std)
    finally:
        bar.close()
    delta = per_probe.mean(1)
    stderr = per_probe.std(1) / math.sqrt(probes) if probes > 1 else None
    prior_logp = gaussian_logp(z, std)
    if prior in ("corrected", "origin"):
        if prior == "origin":
            origin_probes = None if dim <= ORIGIN_EXACT_MAX_DIM else draw_probes(x[:1], ORIGIN_PROBES, "rademacher", generator)
            c0 = estimated_prior_constant(score_fn, sde, t_end, std, x, origin_probes)
            nfe += 1
        prior_logp = prior_logp + prior_correction(score_fn, z, t_end, std, prior_points) + c0
        nfe += prior_points
    info = LikelihoodInfo(nfe=nfe, z=z, prior_logp=prior_logp, delta_logp=delta, eps=t0, t_end=t_end,
                          divergence=divergence, error_estimate=error, stderr=stderr)
    return prior_logp + delta, info


# -- bits per dimension -------------------------------------------------------------------------
def bits_per_dim(
    logp: Tensor, x: Tensor, data_range: tuple[float, float] = (-1.0, 1.0), levels: int = 256
) -> Tensor:
    """Bits per dimension of dequantised discrete data from the model's log-density ``logp``.

    Pixels ``k in {0, .., levels-1}`` dequantised as ``v = (k + u) / levels``, ``u ~ U[0, 1)^D``,
    reach the model as ``y = lo + (hi - lo) v`` in ``data_range = (lo, hi)``.  The density of
    ``k + u`` on ``[0, levels)^D`` is ``p(y) ((hi - lo) / levels)^D``, so::

        bpd = (-logp / D - log(hi - lo) + log(levels)) / log 2.

    For ``(-1, 1)`` and 17 levels this is ``(-log p(y)/D - log 2 + log 17) / log 2``.  Averaged
    over ``u`` it bounds ``-log2 P(k) / D`` from above.  ``x`` (the model-space batch) gives ``D``.
    """
    lo, hi = data_range
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range}")
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    if logp.shape != (x.shape[0],):
        raise ValueError(f"logp must have shape ({x.shape[0]},) to match x, got {tuple(logp.shape)}")
    dim = x[0].numel()
    return (-logp / dim - math.log(hi - lo) + math.log(levels)) / math.log(2)


@dataclass
class BPDResult:
    """Mean bits/dim over a dataset split, its standard error, per-sample values and NFE spent;
    ``error_max``: the largest per-sample ``info.error_estimate`` of the solves, in bits/dim
    (``None`` for solvers that do not report it)."""

    mean: float
    stderr: float
    values: list[float]
    nfe: int
    error_max: float | None = None


def _first_tensor(batch) -> Tensor:
    """``x`` from a batch given as a tensor or as ``(x, labels, ...)``."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _load_partial(path: Path, config: dict) -> dict:
    state = json.loads(path.read_text())
    if state.get("config") != config:
        raise ValueError(f"resume_path {path} holds results for {state.get('config')}, not {config}")
    return state


def _save_partial(path: Path, state: dict) -> None:
    """Write ``state`` as JSON atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _generator_state(generator: torch.Generator | None) -> str | None:
    return None if generator is None else base64.b64encode(generator.get_state().numpy().tobytes()).decode()


def _set_generator_state(generator: torch.Generator | None, state: str | None) -> None:
    if generator is not None and state is not None:
        raw = torch.frombuffer(bytearray(base64.b64decode(state)), dtype=torch.uint8)
        generator.set_state(raw)


def evaluate_bpd(
    score_fn: ScoreFn,
    sde: SDE,
    batches: Iterable,
    *,
    levels: int = 256,
    data_range: tuple[float, float] = (-1.0, 1.0),
    draws: int = 1,
    generator: torch.Generator | None = None,
    resume_path: str | Path | None = None,
    progress: bool = True,
    **likelihood_options,
) -> BPDResult:
    """Bits/dim over a dataset split: mean and standard error ``std / sqrt(n)`` over samples.

    ``batches`` yields quantised data in the model's range (``lo + (hi - lo) k / (levels - 1)``,
    as :mod:`scoresde.data` loads it), as tensors or ``(x, labels)`` pairs, in a fixed order.
    Each sample's bits/dim (:func:`bits_per_dim`) is averaged over ``draws`` uniform
    dequantizations (:func:`scoresde.data.dequantize`, noise from ``generator``).
    ``likelihood_options`` go to :func:`log_likelihood`.

    With ``resume_path`` the per-sample values, the NFE and the generator state are written to
    that JSON file (atomically) after every batch; a later call with the same file and
    settings (levels, range, draws and the likelihood options: solver, tolerances, divergence,
    prior, ``eps`` (recorded resolved, :func:`likelihood_eps` when not given), ...) skips the batches
    already done and continues; other settings raise ``ValueError``.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    likelihood_options.setdefault("eps", likelihood_eps(sde))  # the start is part of the estimator: recorded
    solver = {k: v for k, v in sorted(likelihood_options.items()) if isinstance(v, (str, int, float, bool))}
    config = {"levels": levels, "data_range": list(data_range), "draws": draws, "likelihood": solver}
    path = None if resume_path is None else Path(resume_path)
    state = {"config": config, "batches": 0, "values": [], "nfe": 0, "error_max": None, "generator": None}
    if path is not None and path.exists():
        state = _load_partial(path, config)
        _set_generator_state(generator, state["generator"])
    bar = tqdm(desc="bits/dim", unit="batch", disable=not progress, initial=state["batches"])
    for index, batch in enumerate(batches):
        if index < state["batches"]:
            continue
        x = _first_tensor(batch)
        bpd = torch.zeros(x.shape[0], dtype=torch.float64)
        for _ in range(draws):
            y = dequantize(x, levels, data_range, generator)
            logp, info = log_likelihood(score_fn, sde, y, generator=generator, **likelihood_options)
            bpd += bits_per_dim(logp, y, data_range, levels).double().cpu() / draws
            state["nfe"] += info.nfe
            if info.error_estimate is not None:
                worst = float(info.error_estimate.max()) / (y[0].numel() * math.log(2))
                state["error_max"] = max(worst, state.get("error_max") or 0.0)
        state["values"] += bpd.tolist()
        state["batches"] = index + 1
        state["generator"] = _generator_state(generator)
        if path is not None:
            _save_partial(path, state)
        bar.update(1)
        bar.set_postfix(bpd=f"{sum(state['values']) / len(state['values']):.4f}")
    bar.close()
    values = torch.tensor(state["values"], dtype=torch.float64)
    if values.numel() == 0:
        raise ValueError("batches yielded no data")
    stderr = float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else float("nan")
    return BPDResult(mean=float(values.mean()), stderr=stderr, values=state["values"], nfe=state["nfe"],
                     error_max=state.get("error_max"))
