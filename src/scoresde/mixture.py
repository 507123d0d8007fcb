"""The Gaussian-mixture oracle: the exact reference of every test and benchmark.

:class:`GaussianMixture` is a diagonal-covariance mixture whose diffused marginal ``p_t`` under a
linear SDE is again a mixture (component ``k`` becomes ``N(alpha mu_k, alpha^2 s_k^2 + sigma^2)``),
so its score, log-density, class posterior and conditionals are all closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._tensor import as_batch_time, check_choice, check_labels, check_time
from .score import ScoreFn
from .sde import LinearSDE

_LOG_2PI = math.log(2 * math.pi)


class GaussianMixture:
    """A mixture of diagonal Gaussians ``sum_k w_k N(mu_k, diag(s_k^2))`` in ``R^d``.

    Under a linear SDE the diffused marginal is the mixture with components
    ``N(alpha(t) mu_k, diag(alpha(t)^2 s_k^2 + sigma(t)^2))`` and the same weights, so
    ``log p_t``, ``grad log p_t`` and ``p(k | x_t)`` are exact.  Parameters are stored in
    float64 and cast to the input's dtype and device on use.
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float64)
        means = torch.as_tensor(means, dtype=torch.float64)
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(means.shape)}")
        if weights.shape != (means.shape[0],):
            raise ValueError(f"weights must have shape ({means.shape[0]},), got {tuple(weights.shape)}")
        if stds.shape != means.shape:
            raise ValueError(f"stds must have shape {tuple(means.shape)}, got {tuple(stds.shape)}")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        if (stds <= 0).any():
            raise ValueError("stds must be positive")
        self.weights = weights / weights.sum()
        self.means = means
        self.stds = stds

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, d={self.dim})"

    # -- named mixtures -----------------------------------------------------------------------
    @classmethod
    def named(cls, name: str) -> "GaussianMixture":
        """Named reference mixtures:

        * ``ring2d``: 8 modes on a circle of radius 2, std 0.2, weights proportional to 1..8;
        * ``mix64``: 10 modes in 64-D, means ``N(0, I)``, per-axis stds in [0.3, 0.7], unequal weights;
        * ``mix16``: 4 modes in 16-D built the same way;
        * ``gauss2d``: one anisotropic Gaussian in 2-D (closed-form tests).
        """
        check_choice(name, _NAMED, "mixture name")
        return _NAMED[name]()

    # -- sampling -----------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``n`` samples of ``p_0`` and their component labels."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[labels] + self.stds[labels] * z
        return x.to(dtype=dtype, device=device), labels.to(device)

    # -- the diffused marginal ----------------------------------------------------------------
    def _params_at(self, x: Tensor, sde: LinearSDE | None, t: Tensor | float | None) -> tuple[Tensor, Tensor]:
        """Component means and variances of ``p_t``, broadcast as ``(B or 1, K, d)``."""
        self._check_x(x)
        means = self.means.to(x)
        var = (self.stds**2).to(x)
        if sde is None or t is None:
            return means[None], var[None]
        t = as_batch_time(t, x)
        check_time(t, sde.T)
        if bool((t == t[0]).all()):  # one time for the batch: shared parameters, matrix-product path
            t = t[:1]
        a = sde.alpha(t)[:, None, None]
        s = sde.sigma(t)[:, None, None]
        return a * means[None], a**2 * var[None] + s**2

    def _check_x(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")

    def _component_logp(self, x: Tensor, means: Tensor, var: Tensor) -> Tensor:
        """``log N(x; m_k, diag var_k)`` for every component: ``(B, K)``.  With parameters shared by
        the batch the quadratic ``sum_d (x - m_k)^2 / v_k`` is expanded into matrix products
        ``x^2 . (1/v_k) - 2 x . (m_k/v_k) + m_k^2 . (1/v_k)`` (O(B K d) work without a ``(B, K, d)`` tensor)."""
        log_norm = (torch.log(var) + _LOG_2PI).sum(-1)
        if means.shape[0] == 1:
            m, inv = means[0], 1 / var[0]
            quad = (x**2) @ inv.T - 2 * x @ (m * inv).T + (m**2 * inv).sum(-1)
            return -0.5 * (quad + log_norm)
        return -0.5 * ((x[:, None, :] - means) ** 2 / var).sum(-1) - 0.5 * log_norm

    def _joint_logp(self, x: Tensor, sde: LinearSDE | None, t) -> Tensor:
        means, var = self._params_at(x, sde, t)
        return torch.log(self.weights.to(x)) + self._component_logp(x, means, var)

    def log_prob(self, x: Tensor, t: Tensor | float | None = None, sde: LinearSDE | None = None) -> Tensor:
        """``log p_t(x)`` per sample (``p_0`` when ``sde`` or ``t`` is None)."""
        return torch.logsumexp(self._joint_logp(x, sde, t), dim=1)

    def posterior(self, x: Tensor, t: Tensor | float | None = None, sde: LinearSDE | None = None) -> Tensor:
        """Class posterior ``p(k | x_t) = w_k N_k(x_t) / p_t(x_t)``: ``(B, K)``."""
        return torch.softmax(self._joint_logp(x, sde, t), dim=1)

    def assign(self, x: Tensor) -> Tensor:
        """Most probable component of each sample under ``p_0``: ``(B,)``."""
        return self._joint_logp(x, None, None).argmax(dim=1)

    def component_scores(self, x: Tensor, t: Tensor | float | None = None, sde: LinearSDE | None = None) -> Tensor:
        """``grad log N_k(x_t)`` for every component: ``(B, K, d) = -(x - m_k) / var_k``."""
        means, var = self._params_at(x, sde, t)
        return -(x[:, None, :] - means) / var

    def score(self, x: Tensor, t: Tensor | float | None = None, sde: LinearSDE | None = None) -> Tensor:
        """``grad log p_t(x) = sum_k p(k | x_t) grad log N_k(x_t)``."""
        means, var = self._params_at(x, sde, t)
        post = torch.softmax(torch.log(self.weights.to(x)) + self._component_logp(x, means, var), dim=1)
        if means.shape[0] == 1:  # sum_k p_k (m_k - x) / v_k as two matrix products
            inv = 1 / var[0]
            return post @ (means[0] * inv) - x * (post @ inv)
        return (post[..., None] * (-(x[:, None, :] - means) / var)).sum(1)

    def grad_log_posterior(
        self, x: Tensor, t: Tensor | float | None, sde: LinearSDE | None, labels: Tensor | int
    ) -> Tensor:
        """``grad_x log p_t(y | x) = grad log N_y(x_t) - grad log p_t(x_t)`` (classifier guidance)."""
        labels = check_labels(labels, x.shape[0], self.num_components, x.device)
        comp = self.component_scores(x, t, sde)
        return comp[torch.arange(x.shape[0], device=x.device), labels] - self.score(x, t, sde)

    def score_fn(self, sde: LinearSDE, label: Tensor | int | None = None) -> ScoreFn:
        """The exact score function of ``p_t`` (or of component ``label``: the class-conditional score)."""

        def fn(x: Tensor, t: Tensor) -> Tensor:
            shape = x.shape
            flat = x.reshape(shape[0], -1)
            if label is None:
                out = self.score(flat, t, sde)
            else:
                labels = check_labels(label, shape[0], self.num_components, x.device)
                out = self.component_scores(flat, t, sde)[torch.arange(shape[0], device=x.device), labels]
            return out.reshape(shape)

        return fn

    def diffused(self, sde: LinearSDE, t: float) -> "GaussianMixture":
        """The exact marginal ``p_t`` as a mixture."""
        check_time(t, sde.T)
        tt = torch.tensor(float(t), dtype=torch.float64)
        a, s = sde.alpha(tt), sde.sigma(tt)
        return GaussianMixture(self.weights, a * self.means, torch.sqrt(a**2 * self.stds**2 + s**2))

    def component(self, k: int) -> "GaussianMixture":
        """Component ``k`` alone, as a one-mode mixture."""
        check_labels(k, 1, self.num_components, "cpu")
        return GaussianMixture(torch.ones(1), self.means[k : k + 1], self.stds[k : k + 1])

    # -- conditionals (inpainting oracle) -----------------------------------------------------
    def marginal_dims(self, idx: Tensor | list[int]) -> "GaussianMixture":
        """The mixture of the coordinates ``idx`` (diagonal covariances marginalise per axis)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return GaussianMixture(self.weights, self.means[:, idx], self.stds[:, idx])

    def conditional_weights(self, x_obs: Tensor, obs_idx: Tensor | list[int]) -> Tensor:
        """``p(k | x_obs) = w_k N(x_obs; mu_k[obs], s_k[obs]^2) / p(x_obs)``: ``(B, K)``."""
        return self.marginal_dims(obs_idx).posterior(x_obs)

    def missing_dims(self, obs_idx: Tensor | list[int]) -> Tensor:
        """The coordinates not in ``obs_idx``, ascending."""
        keep = torch.ones(self.dim, dtype=torch.bool)
        keep[torch.as_tensor(obs_idx, dtype=torch.long)] = False
        return keep.nonzero().squeeze(1)

    def sample_conditional(
        self, x_obs: Tensor, obs_idx: Tensor | list[int], generator: torch.Generator | None = None
    ) -> Tensor:
        """Exact samples of the missing coordinates given ``x_obs`` (one per row): with diagonal
        components the conditional is the mixture of the missing axes with weights ``p(k | x_obs)``."""
        weights = self.conditional_weights(x_obs.to(torch.float64), obs_idx)
        labels = torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1)
        miss = self.missing_dims(obs_idx)
        z = torch.randn(x_obs.shape[0], miss.numel(), generator=generator, dtype=torch.float64)
        x = self.means[labels][:, miss] + self.stds[labels][:, miss] * z
        return x.to(dtype=x_obs.dtype, device=x_obs.device)

    def linear_gaussian_posterior(self, A: Tensor, y: Tensor, sigma_y: float = 0.0) -> "MixturePosterior":
        """The exact posterior given ``y = A x + sigma_y n`` (``A`` dense ``(m, d)``, ``y`` ``(B, m)``,
        ``n ~ N(0, I)``): again a mixture, of full-covariance components (Bishop, PRML, Eq. 2.116)::

            w_k' ∝ w_k N(y; A mu_k, S_k),      S_k = A C_k A^T + sigma_y^2 I,
            mu_k' = mu_k + C_k A^T S_k^-1 (y - A mu_k),   C_k' = C_k - C_k A^T S_k^-1 A C_k.

        Rows of ``A`` may be dependent (a mask's zero rows): ``A`` and ``y`` are first reduced to
        the ``r`` directions of ``A``'s SVD with singular values above ``1e-9 max`` (noise in the
        others carries no information), so ``sigma_y = 0`` works whenever ``S_k`` is then regular."""
        A, y = torch.as_tensor(A, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
        if A.ndim != 2 or A.shape[1] != self.dim or y.ndim != 2 or y.shape[1] != A.shape[0]:
            raise ValueError(f"A must be (m, {self.dim}) and y (B, m), got {tuple(A.shape)} and {tuple(y.shape)}")
        U, s, Vh = torch.linalg.svd(A, full_matrices=False)
        keep = s > 1e-9 * s.max()
        A, y = s[keep, None] * Vh[keep], y @ U[:, keep]
        cov = torch.diag_embed(self.stds**2)  # (K, d, d)
        S = A @ cov @ A.T + float(sigma_y) ** 2 * torch.eye(A.shape[0], dtype=torch.float64)
        gain = cov @ A.T @ torch.linalg.inv(S)  # (K, d, r)
        resid = y[:, None, :] - self.means @ A.T  # (B, K, r)
        chol = torch.linalg.cholesky(S)
        white = torch.linalg.solve_triangular(chol, resid.unsqueeze(-1), upper=False).squeeze(-1)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        log_w = torch.log(self.weights) - 0.5 * ((white**2).sum(-1) + log_det)
        means = self.means + (gain @ resid.unsqueeze(-1)).squeeze(-1)
        return MixturePosterior(torch.softmax(log_w, dim=1), means, cov - gain @ A @ cov)


@dataclass(frozen=True)
class MixturePosterior:
    """A mixture of full-covariance Gaussians per row: ``weights`` ``(B, K)``, ``means`` ``(B, K, d)``,
    ``covs`` ``(K, d, d)`` shared by the rows (float64): :meth:`GaussianMixture.linear_gaussian_posterior`."""

    weights: Tensor
    means: Tensor
    covs: Tensor

    def mean(self) -> Tensor:
        """``E[x | y]`` per row: ``(B, d)``."""
        return (self.weights[..., None] * self.means).sum(1)

    def sample(self, generator: torch.Generator | None = None, repeats: int = 1) -> tuple[Tensor, Tensor]:
        """``repeats`` exact draws per row (row-major: ``(B * repeats, d)``) and their components."""
        w = self.weights.repeat_interleave(repeats, 0)
        labels = torch.multinomial(w, 1, generator=generator).squeeze(1)
        sym = 0.5 * (self.covs + self.covs.transpose(-1, -2))
        evals, evecs = torch.linalg.eigh(sym)  # a square root that tolerates the singular covariances
        root = evecs * evals.clamp_min(0).sqrt()[..., None, :]
        z = torch.randn(w.shape[0], self.covs.shape[-1], 1, generator=generator, dtype=torch.float64)
        rows = torch.arange(w.shape[0]) // repeats
        return self.means[rows, labels] + (root[labels] @ z).squeeze(-1), labels


def _random_mixture(num: int, dim: int, seed: int) -> GaussianMixture:
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(num, dim, generator=gen, dtype=torch.float64)
    stds = 0.3 + 0.4 * torch.rand(num, dim, generator=gen, dtype=torch.float64)
    weights = 0.5 + torch.rand(num, generator=gen, dtype=torch.float64)
    return GaussianMixture(weights, means, stds)


def _ring2d() -> GaussianMixture:
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(torch.arange(1, 9, dtype=torch.float64), means, torch.full((8, 2), 0.2))


_NAMED: dict[str, Callable[[], GaussianMixture]] = {
    "ring2d": _ring2d,
    "mix64": lambda: _random_mixture(10, 64, seed=64),
    "mix16": lambda: _random_mixture(4, 16, seed=16),
    "gauss2d": lambda: GaussianMixture(
        torch.ones(1), torch.tensor([[0.5, -0.3]]), torch.tensor([[0.8, 0.5]])
    ),
}
