"""Score functions and network-output parameterizations.

A score function is any callable ``score_fn(x, t) -> grad_x log p_t(x)`` with ``x`` of shape
``(B, ...)`` and ``t`` of shape ``(B,)``.

:class:`Parameterization` turns what a network predicts into the score, the Tweedie denoiser
and the noise, for any :class:`~scoresde.sde.LinearSDE` (``x_t = alpha x_0 + sigma eps``).

The Gaussian-mixture oracle lives in :mod:`scoresde.mixture`.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from ._tensor import append_dims, as_batch_time, check_choice
from .sde import LinearSDE


class ScoreFn(Protocol):
    """``(x: (B, ...), t: (B,)) -> score`` of the same shape as ``x``."""

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


PARAMETERIZATIONS = ("eps", "score", "x0", "v", "flow")


class Parameterization:
    """What a network predicts, and the exact conversions to score, ``x0`` and ``eps``.

    With ``x = alpha x0 + sigma eps`` (coefficients at ``t``):

    * ``eps``:   ``eps_hat = out``
    * ``score``: ``eps_hat = -sigma out``                       (``s = -eps / sigma``)
    * ``x0``:    ``x0_hat = out``                               (``s = (alpha x0 - x) / sigma^2``)
    * ``v``:     ``out = alpha eps - sigma x0`` (Salimans--Ho); ``x0 = (alpha x - sigma v)/(alpha^2+sigma^2)``,
      ``eps = (sigma x + alpha v)/(alpha^2+sigma^2)``
    * ``flow``:  ``out = alpha' x0 + sigma' eps`` (the flow-matching velocity); with
      ``det = alpha sigma' - sigma alpha'``: ``x0 = (sigma' x - sigma u)/det``, ``eps = (alpha u - alpha' x)/det``

    Every conversion goes through the pair ``(x0_hat, eps_hat)``, which satisfies
    ``x = alpha x0_hat + sigma eps_hat`` exactly; the denoiser is Tweedie's
    ``E[x0 | x_t] = (x + sigma^2 s) / alpha``.
    """

    def __init__(self, kind: str, sde: LinearSDE) -> None:
        self.kind = check_choice(kind, PARAMETERIZATIONS, "parameterization")
        if not isinstance(sde, LinearSDE):
            raise ValueError("sde must be a LinearSDE (a Gaussian kernel) to convert network outputs")
        self.sde = sde
        if kind == "flow":
            self._check_flow_determinant()

    def __repr__(self) -> str:
        return f"Parameterization({self.kind!r}, {type(self.sde).__name__})"

    def _check_flow_determinant(self) -> None:
        """Reject schedules where ``alpha sigma' - sigma alpha'`` vanishes on ``[eps, T]``."""
        ts = torch.linspace(self.sde.eps, self.sde.T, 1001, dtype=torch.float64)
        det = self._det(ts)
        if not torch.isfinite(det).all() or det.abs().min() < 1e-10:
            raise ValueError("sde: the flow parameterization needs alpha*sigma' - sigma*alpha' != 0 on [eps, T]")

    def _coeffs(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = as_batch_time(t, x)
        return append_dims(self.sde.alpha(t), x.ndim), append_dims(self.sde.sigma(t), x.ndim)

    def _dcoeffs(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        t = as_batch_time(t, x)
        return append_dims(self.sde.dalpha(t), x.ndim), append_dims(self.sde.dsigma(t), x.ndim)

    def _det(self, t: Tensor) -> Tensor:
        sde = self.sde
        return sde.alpha(t) * sde.dsigma(t) - sde.sigma(t) * sde.dalpha(t)

    def x0_eps(self, out: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The pair ``(x0_hat, eps_hat)`` implied by the network output ``out`` at ``(x, t)``."""
        a, s = self._coeffs(x, t)
        if self.kind in ("eps", "score"):
            eps = out if self.kind == "eps" else -s * out
            return (x - s * eps) / a, eps
        if self.kind == "x0":
            return out, (x - a * out) / s
        if self.kind == "v":
            norm = a**2 + s**2
            return (a * x - s * out) / norm, (s * x + a * out) / norm
        da, ds = self._dcoeffs(x, t)
        det = a * ds - s * da
        return (ds * x - s * out) / det, (a * out - da * x) / det

    def output(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The network output that corresponds to ``(x0, eps)``: the inverse of :meth:`x0_eps`."""
        a, s = self._coeffs(x0, t)
        if self.kind == "eps":
            return eps
        if self.kind == "score":
            return -eps / s
        if self.kind == "x0":
            return x0
        if self.kind == "v":
            return a * eps - s * x0
        da, ds = self._dcoeffs(x0, t)
        return da * x0 + ds * eps

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Regression target for ``x_t = alpha x0 + sigma noise`` (same as :meth:`output`)."""
        return self.output(x0, noise, t)

    def score(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``s = -eps_hat / sigma``."""
        _, s = self._coeffs(x, t)
        return -self.eps(out, x, t) / s

    def denoise(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Tweedie's ``E[x0 | x_t] = (x + sigma^2 s) / alpha``."""
        return self.x0_eps(out, x, t)[0]

    def eps(self, out: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Predicted noise ``eps_hat = (x - alpha x0_hat) / sigma``."""
        return self.x0_eps(out, x, t)[1]

    def from_score(self, score: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The network output equivalent to the score ``score`` at ``(x, t)``."""
        a, s = self._coeffs(x, t)
        eps = -s * score
        return self.output((x - s * eps) / a, eps, t)


def tweedie(x: Tensor, score: Tensor, alpha: float | Tensor, sigma: float | Tensor) -> Tensor:
    """Tweedie's formula ``x0_hat = E[x_0 | x_t] = (x + sigma^2 s) / alpha`` from a score value ``s``
    (Efron 2011; the denoiser of every sampler and guidance method). ``alpha``/``sigma`` are numbers
    (two fused passes over the state) or tensors broadcastable to ``x``; neither input is modified."""
    if isinstance(alpha, Tensor) or isinstance(sigma, Tensor):
        return (x + sigma * sigma * score) / alpha
    return torch.add(x, score, alpha=sigma * sigma).div_(alpha)


def clip_denoised(score_fn: ScoreFn, sde: LinearSDE, data_range: tuple[float, float]) -> ScoreFn:
    """The score whose Tweedie estimate is clipped to ``data_range`` ("thresholding"):
    ``s' = (alpha clip(x0_hat) - x) / sigma^2``, the score of the kernel ``N(alpha x0, sigma^2)``.

    Unchanged wherever the estimate already lies in the range; it keeps every sampler that
    works through ``x0_hat`` from extrapolating out of the data's bounded support.
    """
    lo, hi = data_range

    def clipped(x: Tensor, t: Tensor) -> Tensor:
        tt = as_batch_time(t, x)
        a, s = append_dims(sde.alpha(tt), x.ndim), append_dims(sde.sigma(tt), x.ndim)
        x0 = tweedie(x, score_fn(x, t), a, s).clamp(lo, hi)
        return (a * x0 - x) / (s * s)

    return clipped


def score_fn_from_model(
    model: Callable[..., Tensor],
    sde: LinearSDE,
    parameterization: str | Parameterization = "eps",
    **model_kwargs,
) -> ScoreFn:
    """Wrap ``model(x, t, **model_kwargs) -> output`` into ``score_fn(x, t)`` through a parameterization."""
    param = parameterization if isinstance(parameterization, Parameterization) else Parameterization(parameterization, sde)

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        t = as_batch_time(t, x)
        return param.score(model(x, t, **model_kwargs), x, t)

    return score_fn
