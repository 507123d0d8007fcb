"""Training objectives for score models: every loss is ``loss(model, x0, labels=None, generator=None)``.

The model is called as ``model(x_t, t)`` (or ``model(x_t, t, labels=labels)`` when labels are
given) with ``t`` the continuous time ``(B,)`` and returns an output read by the loss's
:class:`~scoresde.score.Parameterization`.  Each loss exposes ``.parameterization`` (and
``.sde``) so that a trained model becomes a score with
``sd.score_fn_from_model(model, loss.sde, loss.parameterization)``.

Losses on a Gaussian path ``x_t = alpha(t) x_0 + sigma(t) eps`` share one recipe:
draw ``t`` (:meth:`sample_time`, which also returns an importance weight), draw ``eps``, and
average :meth:`per_sample`.  The random draws happen in that order from ``generator``.

* :class:`DSMLoss` -- continuous denoising score matching with weighting ``lambda(t)``.
* :class:`FlowMatchingLoss` -- conditional flow matching, the DSM weighting ``lambda = g^4 / 4``.
* :class:`DDPMLoss`, :class:`SMLDLoss` -- the discrete objectives of the seeds.
* :class:`SlicedScoreMatchingLoss` -- needs no kernel score, so it works for any :class:`~scoresde.sde.SDE`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._tensor import (
    append_dims,
    as_batch_time,
    batch_mean,
    batch_sum,
    check_batch,
    check_choice,
    check_labels,
    check_time,
    rand,
    randn_like,
)
from .score import Parameterization
from .sde import SDE, LinearSDE, VESDE, VPSDE, ddpm_alphas_cumprod, ddpm_betas, smld_sigmas

Model = Callable[..., Tensor]
Weighting = Union[str, Callable[[Tensor], Tensor]]

WEIGHTINGS = ("sigma2", "likelihood", "none")
REDUCTIONS = ("mean", "sum")
TIME_SAMPLINGS = ("uniform", "logit-normal")


# -- shared helpers ------------------------------------------------------------------------------
def _call_model(model: Model, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
    """``model(x, t)``, or ``model(x, t, labels=labels)`` when labels are given."""
    return model(x, t) if labels is None else model(x, t, labels=labels)


def _reduce(sq: Tensor, how: str) -> Tensor:
    """Per-sample reduction over every axis but the batch axis: mean or sum."""
    return batch_mean(sq) if how == "mean" else batch_sum(sq)


def _uniform_times(sde: SDE, n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """``t ~ U[eps, T]``."""
    return sde.eps + (sde.T - sde.eps) * rand(n, like, generator)


def _grid_times(grid: Tensor, n: int, generator: torch.Generator | None, like: Tensor) -> tuple[Tensor, Tensor]:
    """Times drawn uniformly from the discrete ``grid``, with unit weights."""
    idx = (rand(n, like, generator) * grid.numel()).long().clamp_max(grid.numel() - 1)
    t = grid.to(like)[idx]
    return t, torch.ones_like(t)


def _check_labels(x0: Tensor, labels: Tensor | None) -> None:
    if labels is not None:
        check_batch(x0, labels, "x0", "labels")


def score_weight(sde: SDE, weighting: Weighting, t: Tensor) -> Tensor:
    """The score-space weight ``lambda(t)`` of a weighting name (or a callable ``lambda(t)``):
    ``sigma2`` -> ``sigma(t)^2``, ``likelihood`` -> ``g(t)^2``, ``none`` -> ``1``."""
    if callable(weighting):
        return weighting(t)
    if weighting == "sigma2":
        return sde.sigma(t) ** 2
    if weighting == "likelihood":
        return sde.g(t) ** 2
    return torch.ones_like(t)


def _check_weighting(weighting: Weighting, sde: SDE) -> Weighting:
    if callable(weighting):
        return weighting
    check_choice(weighting, WEIGHTINGS, "weighting")
    if weighting == "sigma2" and not isinstance(sde, LinearSDE):
        raise ValueError("weighting 'sigma2' needs a LinearSDE (a kernel std sigma(t)); use 'likelihood' or 'none'")
    return weighting


def _check_linear(sde: SDE) -> LinearSDE:
    if not isinstance(sde, LinearSDE):
        raise ValueError(f"sde must be a LinearSDE (a Gaussian kernel), got {type(sde).__name__}")
    return sde


# -- losses on a Gaussian path -------------------------------------------------------------------
class _GaussianPathLoss(ABC):
    """Common recipe for ``x_t = alpha(t) x_0 + sigma(t) eps``: draw ``t`` then ``eps``, average
    ``weight(t) * per_sample``."""

    def __init__(self, sde: LinearSDE, parameterization: str, reduce: str) -> None:
        self.sde = _check_linear(sde)
        self.parameterization = Parameterization(parameterization, self.sde)
        self.reduce = check_choice(reduce, REDUCTIONS, "reduce")

    @abstractmethod
    def sample_time(
        self, n: int, generator: torch.Generator | None, like: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``n`` training times and their importance weights (ones unless stated)."""

    @abstractmethod
    def per_sample(
        self, model: Model, x0: Tensor, t: Tensor, noise: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        """The loss of each sample ``(B,)`` at given times and noise."""

    def kernel(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))`` of the perturbation kernel."""
        return self.sde.alpha(t), self.sde.sigma(t)

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = alpha(t) x_0 + sigma(t) noise``."""
        a, s = self.kernel(t)
        return append_dims(a, x0.ndim) * x0 + append_dims(s, x0.ndim) * noise

    def _prepare(self, x0: Tensor, t: Tensor, noise: Tensor, labels: Tensor | None) -> Tensor:
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        _check_labels(x0, labels)
        t = as_batch_time(t, x0)
        check_time(t, self.sde.T)
        return t

    def __call__(
        self,
        model: Model,
        x0: Tensor,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Monte-Carlo loss: ``mean_b w(t_b) per_sample_b`` with ``(t, w)`` from :meth:`sample_time`
        and ``eps ~ N(0, I)``, drawn in that order from ``generator``."""
        _check_labels(x0, labels)
        t, w = self.sample_time(x0.shape[0], generator, x0)
        noise = randn_like(x0, generator)
        return (w * self.per_sample(model, x0, t, noise, labels)).mean()


class DSMLoss(_GaussianPathLoss):
    """Continuous denoising score matching (Song et al. 2021, eq. 7) with ``t ~ U[eps, T]``::

        L = E_t E_{x_0, eps} [ lambda(t) |s_theta(x_t, t) - grad log p_0t(x_t | x_0)|^2 ]
          = E_t E_{x_0, eps} [ lambda(t) / sigma(t)^2 |eps_hat - eps|^2 ],

    since ``grad log p_0t = -eps / sigma`` and ``s_theta = -eps_hat / sigma`` for any
    parameterization (``eps_hat`` from :meth:`Parameterization.eps`), so the minimiser is the
    true score whatever the network outputs.  Weightings ``lambda(t)``:

    * ``sigma2``: ``sigma^2`` (the paper's default): ``|eps_hat - eps|^2``;
    * ``likelihood``: ``g^2``: ``(g^2 / sigma^2) |eps_hat - eps|^2``; then ``(T - eps) L / 2`` plus
      terms free of theta bounds ``-E log p_0`` (Song et al. 2021, "Maximum likelihood training");
    * ``none``: ``1``; or any callable ``lambda(t)``.

    ``reduce`` averages (``mean``) or sums (``sum``) the squared error over the data axes.

    ``importance_sampling=True`` draws ``t`` with density ``q(t) = g^2 / (sigma^2 Z)`` instead of
    uniformly and multiplies by ``1 / ((T - eps) q(t))``, leaving the expectation unchanged.
    Because ``g^2 / sigma^2 = -2 d lambda_snr / dt`` (with ``lambda_snr = log(alpha / sigma)``),
    ``Z = 2 (lambda_snr(eps) - lambda_snr(T))`` and ``q`` is uniform in log-SNR: the inverse CDF
    is ``t = t_of_log_snr(lambda_snr(eps) - u (lambda_snr(eps) - lambda_snr(T)))``.  With the
    likelihood weighting each term becomes ``Z / (T - eps) |eps_hat - eps|^2`` (the
    variance-reduced form).
    """

    def __init__(
        self,
        sde: LinearSDE,
        parameterization: str = "eps",
        weighting: Weighting = "sigma2",
        reduce: str = "mean",
        importance_sampling: bool = False,
    ) -> None:
        super().__init__(sde, parameterization, reduce)
        self.weighting = _check_weighting(weighting, self.sde)
        self.importance_sampling = bool(importance_sampling)
        if self.importance_sampling:
            ends = self.sde.log_snr(torch.tensor([self.sde.eps, self.sde.T], dtype=torch.float64))
            if not torch.isfinite(ends).all():
                raise ValueError("importance_sampling needs a finite log-SNR at eps and T; lower T")
            self._lam_eps, self._lam_T = float(ends[0]), float(ends[1])

    def __repr__(self) -> str:
        return (
            f"DSMLoss({type(self.sde).__name__}, parameterization={self.parameterization.kind!r}, "
            f"weighting={self.weighting!r}, importance_sampling={self.importance_sampling})"
        )

    def sample_time(self, n: int, generator: torch.Generator | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """Uniform ``t`` with weight 1, or log-SNR-uniform ``t`` with weight ``1 / ((T - eps) q(t))``."""
        if not self.importance_sampling:
            t = _uniform_times(self.sde, n, generator, like)
            return t, torch.ones_like(t)
        span = self._lam_eps - self._lam_T
        lam = self._lam_eps - span * rand(n, like, generator)
        t = self.sde.t_of_log_snr(lam).clamp(self.sde.eps, self.sde.T)
        q = self.sde.g2(t) / self.sde.sigma(t) ** 2 / (2 * span)
        return t, 1.0 / ((self.sde.T - self.sde.eps) * q)

    def eps_weight(self, t: Tensor) -> Tensor:
        """The weight in noise space, ``lambda(t) / sigma(t)^2`` (exactly 1 for ``sigma2``)."""
        if self.weighting == "sigma2":
            return torch.ones_like(t)
        return score_weight(self.sde, self.weighting, t) / self.kernel(t)[1] ** 2

    def per_sample(
        self, model: Model, x0: Tensor, t: Tensor, noise: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        """``lambda(t) / sigma(t)^2 * reduce(|eps_hat - eps|^2)`` per sample."""
        t = self._prepare(x0, t, noise, labels)
        x_t = self.perturb(x0, t, noise)
        eps_hat = self.parameterization.eps(_call_model(model, x_t, t, labels), x_t, t)
        return self.eps_weight(t) * _reduce((eps_hat - noise) ** 2, self.reduce)


class FlowMatchingLoss(_GaussianPathLoss):
    """Conditional flow matching (Lipman et al. 2023) with the ``flow`` parameterization::

        L = E_t E_{x_0, eps} |u_theta(x_t, t) - (alpha'(t) x_0 + sigma'(t) eps)|^2.

    It is a DSM weighting.  With ``x_0 = (x_t - sigma eps) / alpha`` the target is
    ``u = (alpha'/alpha) x_t + (det / alpha) eps`` with ``det = alpha sigma' - sigma alpha'``, and
    the network's ``eps_hat`` satisfies the same relation, so
    ``u_theta - u = (det / alpha)(eps_hat - eps) = (det / alpha) sigma (s_theta - grad log p_0t)``.
    Since ``g^2 = 2 sigma (sigma' - f sigma) = 2 sigma det / alpha``, the score-space weight is::

        lambda_FM(t) = det^2 sigma^2 / alpha^2 = g(t)^4 / 4

    (``(g^2 / (2 sigma))^2 = sigma^2 (d lambda_snr / dt)^2`` in noise space; for the rectified
    flow ``t^2 / (1 - t)^2``).  ``time_sampling``: ``uniform`` on ``[eps, T]`` or ``logit-normal``:
    ``t = eps + (T - eps) sigmoid(logit_mean + logit_std n)``, ``n ~ N(0, 1)`` (Esser et al. 2024), without
    reweighting (a different time density, hence a different objective).
    """

    def __init__(
        self,
        sde: LinearSDE,
        time_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        reduce: str = "mean",
    ) -> None:
        super().__init__(sde, "flow", reduce)
        self.time_sampling = check_choice(time_sampling, TIME_SAMPLINGS, "time_sampling")
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)
        if not (math.isfinite(self.logit_std) and self.logit_std > 0):
            raise ValueError(f"logit_std must be a positive finite number, got {logit_std}")

    def __repr__(self) -> str:
        return f"FlowMatchingLoss({type(self.sde).__name__}, time_sampling={self.time_sampling!r})"

    def sample_time(self, n: int, generator: torch.Generator | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """Uniform or logit-normal ``t`` on ``[eps, T]``, unit weights."""
        if self.time_sampling == "uniform":
            t = _uniform_times(self.sde, n, generator, like)
        else:
            z = randn_like(like.new_empty(n), generator)
            t = self.sde.eps + (self.sde.T - self.sde.eps) * torch.sigmoid(self.logit_mean + self.logit_std * z)
        return t, torch.ones_like(t)

    def per_sample(
        self, model: Model, x0: Tensor, t: Tensor, noise: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        """``reduce(|u_theta - (alpha' x_0 + sigma' eps)|^2)`` per sample."""
        t = self._prepare(x0, t, noise, labels)
        x_t = self.perturb(x0, t, noise)
        target = self.parameterization.target(x0, noise, t)
        return _reduce((_call_model(model, x_t, t, labels) - target) ** 2, self.reduce)


class DDPMLoss(DSMLoss):
    """DDPM's simple loss (Ho et al. 2020) over ``N`` discrete levels::

        L = E_i E_{x_0, eps} |eps_theta(x_i, t_i) - eps|^2,
        x_i = sqrt(abar_i) x_0 + sqrt(1 - abar_i) eps,  i ~ U{0, ..., N-1},

    with ``abar_i`` from :func:`~scoresde.sde.ddpm_betas`.  The network receives the continuous
    time ``t_i = (i + 1) / N`` of the VP SDE it discretises (``abar_i ~ alpha(t_i)^2``), so the
    same network serves continuous samplers through ``.sde`` (that :class:`~scoresde.sde.VPSDE`)
    and ``.parameterization`` (``eps``).
    """

    def __init__(self, N: int = 1000, beta_min: float = 0.1, beta_max: float = 20.0, reduce: str = "mean") -> None:
        self.N = int(N)
        self.alphas_cumprod = ddpm_alphas_cumprod(ddpm_betas(self.N, beta_min, beta_max))
        super().__init__(VPSDE(beta_min, beta_max), "eps", "sigma2", reduce)
        self.times = torch.arange(1, self.N + 1, dtype=torch.float64) / self.N

    def __repr__(self) -> str:
        return f"DDPMLoss(N={self.N}, beta_min={self.sde.beta_min}, beta_max={self.sde.beta_max})"

    def sample_time(self, n: int, generator: torch.Generator | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """``t_i = (i + 1) / N`` with ``i`` uniform on ``0..N-1``."""
        return _grid_times(self.times, n, generator, like)

    def kernel(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(sqrt(abar_i), sqrt(1 - abar_i))`` of the level ``i = N t - 1``."""
        i = torch.round(t * self.N).long() - 1  # in t's dtype: no float64 on the device
        if (i < 0).any() or not torch.allclose(t, self.times.to(t)[i.clamp(0)], atol=1e-6):
            raise ValueError(f"t must lie on the DDPM grid (i + 1) / N with N = {self.N}")
        abar = self.alphas_cumprod.to(t)[i]
        return abar.sqrt(), (1 - abar).sqrt()


class SMLDLoss(DSMLoss):
    """NCSN's loss (Song & Ermon 2019) over ``N`` geometric noise levels::

        L = E_i E_{x_0, z} sigma_i^2 |s_theta(x_0 + sigma_i z, t_i) + z / sigma_i|^2,  i ~ U{0..N-1},

    with ``sigma_i`` from :func:`~scoresde.sde.smld_sigmas`.  The network receives the VE time
    ``t_i = i / (N - 1)``, at which ``VESDE(sigma_min, sigma_max).sigma(t_i) = sigma_i``: this is
    :class:`DSMLoss` with the ``sigma2`` weighting restricted to that grid (any parameterization;
    NCSN's network predicts the score).
    """

    def __init__(
        self,
        N: int = 1000,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        parameterization: str = "score",
        reduce: str = "mean",
    ) -> None:
        self.N = int(N)
        self.sigmas = smld_sigmas(self.N, sigma_min, sigma_max)
        super().__init__(VESDE(sigma_min, sigma_max), parameterization, "sigma2", reduce)
        self.times = torch.arange(self.N, dtype=torch.float64) / (self.N - 1)

    def __repr__(self) -> str:
        return f"SMLDLoss(N={self.N}, sigma_min={self.sde.sigma_min}, sigma_max={self.sde.sigma_max})"

    def sample_time(self, n: int, generator: torch.Generator | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """``t_i = i / (N - 1)`` with ``i`` uniform on ``0..N-1``."""
        return _grid_times(self.times, n, generator, like)


# -- sliced score matching -----------------------------------------------------------------------
class SlicedScoreMatchingLoss:
    """Sliced score matching (Song et al. 2019) on the perturbed marginals ``p_t``::

        L = E_t lambda(t) E_{x_t ~ p_t} E_v [ v^T (d s_theta / dx) v + (v^T s_theta)^2 / 2 ]   (plain)
        L = E_t lambda(t) E_{x_t ~ p_t} E_v [ v^T (d s_theta / dx) v + |s_theta|^2 / 2 ]       (variance-reduced)

    with ``v ~ N(0, I)`` (``n_projections`` of them, averaged) and ``t ~ U[eps, T]``.  By parts,
    ``E_{p_t}[tr(ds/dx) + |s|^2 / 2] = E_{p_t}|s - grad log p_t|^2 / 2 - E_{p_t}|grad log p_t|^2 / 2``,
    so the minimiser is the score and the value there is ``-E_t lambda(t) F(t) / 2`` with
    ``F(t) = E_{p_t}|grad log p_t|^2`` the Fisher information.  ``reduce='mean'`` divides by the
    number of data coordinates.

    No kernel score is used: ``x_t`` is a sample of ``p_t``, drawn with the kernel for a
    :class:`~scoresde.sde.LinearSDE` and by Euler--Maruyama (``sde.simulate``, ``simulation_steps``
    on ``[0, T]``, each sample stopped at its own grid time ``t >= eps``) for any other SDE.
    Weightings ``sigma2`` (linear SDEs), ``likelihood`` (``g^2``), ``none`` or a callable.  For a
    non-linear SDE the model must output the score and ``.parameterization`` is ``None``.
    """

    def __init__(
        self,
        sde: SDE,
        n_projections: int = 1,
        variance_reduced: bool = True,
        weighting: Weighting = "sigma2",
        parameterization: str = "score",
        reduce: str = "mean",
        simulation_steps: int = 100,
    ) -> None:
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be an SDE, got {type(sde).__name__}")
        self.sde = sde
        if n_projections < 1:
            raise ValueError(f"n_projections must be >= 1, got {n_projections}")
        if simulation_steps < 1:
            raise ValueError(f"simulation_steps must be >= 1, got {simulation_steps}")
        self.n_projections = int(n_projections)
        self.variance_reduced = bool(variance_reduced)
        self.weighting = _check_weighting(weighting, sde)
        self.reduce = check_choice(reduce, REDUCTIONS, "reduce")
        self.simulation_steps = int(simulation_steps)
        if isinstance(sde, LinearSDE):
            self.parameterization: Parameterization | None = Parameterization(parameterization, sde)
        elif parameterization != "score":
            raise ValueError("parameterization must be 'score' for a non-linear SDE")
        else:
            self.parameterization = None

    def __repr__(self) -> str:
        return (
            f"SlicedScoreMatchingLoss({type(self.sde).__name__}, n_projections={self.n_projections}, "
            f"variance_reduced={self.variance_reduced}, weighting={self.weighting!r})"
        )

    def sample_xt(self, x0: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Samples ``(x_t, t)`` of the perturbed marginals, ``t`` drawn first."""
        if isinstance(self.sde, LinearSDE):
            t = _uniform_times(self.sde, x0.shape[0], generator, x0)
            return self.sde.marginal(x0, t, randn_like(x0, generator)), t
        steps, T = self.simulation_steps, self.sde.T
        grid = torch.arange(1, steps + 1, dtype=torch.float64) * (T / steps)
        grid = grid[grid >= self.sde.eps]
        if grid.numel() == 0:
            raise ValueError("simulation_steps is too small: no grid time lies in [eps, T]")
        t, _ = _grid_times(grid, x0.shape[0], generator, x0)
        stop = torch.round(t * (steps / T)).long()
        x, out = x0, x0
        for j in range(1, int(stop.max()) + 1):
            x = self.sde.simulate(x, (j - 1) * T / steps, j * T / steps, 1, generator=generator)
            out = torch.where(append_dims(stop == j, x.ndim), x, out)
        return out, t

    def score(self, model: Model, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        """The model's score ``s_theta(x, t)``."""
        out = _call_model(model, x, t, labels)
        return out if self.parameterization is None else self.parameterization.score(out, x, t)

    def per_sample(
        self,
        model: Model,
        x_t: Tensor,
        t: Tensor,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``lambda(t) reduce(mean_v [v^T J v] + |s|^2/2 or (v^T s)^2/2)`` per sample ``(B,)``, with
        ``J = d s_theta / dx`` through vector-Jacobian products (graph kept for training)."""
        _check_labels(x_t, labels)
        t = as_batch_time(t, x_t)
        check_time(t, self.sde.T)
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            s = self.score(model, x, t, labels)
            traces, projections = [], []
            for _ in range(self.n_projections):
                v = randn_like(x, generator)
                (jv,) = torch.autograd.grad(s, x, grad_outputs=v, create_graph=True)
                traces.append(batch_sum(jv * v))
                projections.append(batch_sum(v * s) ** 2)
            square = batch_sum(s**2) if self.variance_reduced else torch.stack(projections).mean(0)
            value = torch.stack(traces).mean(0) + 0.5 * square
        if self.reduce == "mean":
            value = value / x_t[0].numel()
        return score_weight(self.sde, self.weighting, t) * value

    def __call__(
        self,
        model: Model,
        x0: Tensor,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Monte-Carlo loss: draw ``t`` and ``x_t`` (:meth:`sample_xt`), then the projections."""
        _check_labels(x0, labels)
        x_t, t = self.sample_xt(x0, generator)
        return self.per_sample(model, x_t, t, labels, generator).mean()


_LOSSES = ("dsm", "fm", "ddpm", "smld", "ssm")


def loss_from_name(name: str, sde: SDE, **kwargs) -> DSMLoss | FlowMatchingLoss | SlicedScoreMatchingLoss:
    """Build a loss from its config name: ``dsm``, ``fm`` (flow matching), ``ddpm`` (``sde`` a
    :class:`VPSDE`, whose betas it uses), ``smld`` (``sde`` a :class:`VESDE`, whose sigmas it
    uses) or ``ssm``; ``kwargs`` go to the constructor."""
    check_choice(name, _LOSSES, "loss")
    if name == "dsm":
        return DSMLoss(sde, **kwargs)
    if name == "fm":
        return FlowMatchingLoss(sde, **kwargs)
    if name == "ssm":
        return SlicedScoreMatchingLoss(sde, **kwargs)
    if name == "ddpm":
        if type(sde) is not VPSDE:
            raise ValueError(f"sde must be a VPSDE for the ddpm loss, got {type(sde).__name__}")
        return DDPMLoss(beta_min=sde.beta_min, beta_max=sde.beta_max, **kwargs)
    if not isinstance(sde, VESDE):
        raise ValueError(f"sde must be a VESDE for the smld loss, got {type(sde).__name__}")
    return SMLDLoss(sigma_min=sde.sigma_min, sigma_max=sde.sigma_max, **kwargs)


# -- classifier guidance objectives ----------------------------------------------------------
class NoisyClassifierLoss:
    """Cross-entropy of a noise-conditional classifier on perturbed data:
    ``E_{t ~ U[eps, T], eps ~ N(0, I)} [-log softmax(clf(alpha(t) x_0 + sigma(t) eps, t))[y]]``.

    Callable as ``loss(model, x0, labels, generator=None) -> scalar`` (the Trainer's contract);
    ``model(x, t) -> logits``. ``parameterization`` is ``None``: a classifier is not a score model.
    """

    parameterization = None

    def __init__(self, sde: LinearSDE, eps: float | None = None) -> None:
        if not isinstance(sde, LinearSDE):
            raise ValueError("sde must be a LinearSDE (the perturbation kernel is sampled exactly)")
        self.sde = sde
        self.eps = sde.eps if eps is None else float(eps)
        check_time(self.eps, sde.T, "eps")

    def __call__(
        self, model: Callable[..., Tensor], x0: Tensor, labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if labels is None:
            raise ValueError("labels are required to train a classifier")
        t = self.eps + (self.sde.T - self.eps) * rand(x0.shape[0], x0, generator)
        x_t = self.sde.marginal(x0, t, randn_like(x0, generator))
        return F.cross_entropy(model(x_t, t), labels.long())


class LabelDropout:
    """Wrap a conditional score loss for classifier-free guidance: each label is replaced by
    ``null_label`` with probability ``p_uncond`` before calling ``loss(model, x0, labels, generator)``,
    so one network learns both ``s(x, t, y)`` and ``s(x, t) = s(x, t, null)``."""

    def __init__(self, loss: Callable[..., Tensor], null_label: int, p_uncond: float = 0.1) -> None:
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
        if null_label < 1:
            raise ValueError(f"null_label must be >= 1, got {null_label}")
        self.loss, self.null_label, self.p_uncond = loss, int(null_label), float(p_uncond)
        self.parameterization = getattr(loss, "parameterization", None)

    def __call__(
        self, model: Callable[..., Tensor], x0: Tensor, labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        if labels is None:
            raise ValueError("labels are required for label dropout")
        labels = check_labels(labels, x0.shape[0], self.null_label, x0.device)
        drop = rand(labels.shape[0], x0, generator) < self.p_uncond
        return self.loss(model, x0, torch.where(drop, torch.full_like(labels, self.null_label), labels), generator)
