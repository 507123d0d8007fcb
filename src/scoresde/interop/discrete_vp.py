"""The variance-preserving SDE through a discrete DDPM chain: :class:`DiscreteVPSDE`.

A chain of ``N`` steps with ``alphas_cumprod`` ``abar_n`` (DDPM's ``q(x_n | x_0) =
N(sqrt(abar_n) x_0, (1 - abar_n) I)``) becomes a continuous :class:`~scoresde.sde.LinearSDE` on
``[0, 1]`` whose kernel passes through every step at ``t = n / (N - 1)`` (the official score_sde
convention for discrete models), so every scoresde sampler, the likelihood and guidance run on a
model trained on the chain.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..sde import LinearSDE, _as_time

SDE_NAME = "discrete-vp"  # its name in a config's sde section


def _pchip_slopes(y: Tensor) -> Tensor:
    """Node slopes (per unit step) of the monotone cubic Hermite interpolant through ``y`` on a
    uniform grid (Fritsch--Carlson): the harmonic mean of the neighbouring secants inside, the
    one-sided secant at the ends.  For strictly monotone ``y`` each slope is at most twice either
    secant, inside the monotonicity region (three times), so the interpolant is monotone."""
    d = y[1:] - y[:-1]
    inner = 2 * d[:-1] * d[1:] / (d[:-1] + d[1:])
    return torch.cat([d[:1], inner, d[-1:]])


class DiscreteVPSDE(LinearSDE):
    """The variance-preserving SDE through a discrete chain's ``alphas_cumprod``
    ``abar_0 > abar_1 > ... > abar_{N-1}`` (DDPM, Ho et al. 2020, eq. 4: ``q(x_n | x_0) =
    N(sqrt(abar_n) x_0, (1 - abar_n) I)``).

    Step ``n`` sits at ``t_n = n / (N - 1)`` on ``[0, T = 1]``.  The log-SNR
    ``lambda_n = log(abar_n / (1 - abar_n)) / 2`` is interpolated in ``t`` by the monotone cubic
    Hermite interpolant (:func:`_pchip_slopes`; C^1, so the drift and diffusion are continuous) and
    ``alpha = sqrt(sigmoid(2 lambda))``, ``sigma = sqrt(sigmoid(-2 lambda))``: ``alpha^2 + sigma^2 = 1``
    and ``alpha(t_n)^2 = abar_n`` at every step (to rounding).  With ``lambda' = d lambda / dt < 0``::

        alpha' = alpha sigma^2 lambda',  sigma' = -sigma alpha^2 lambda',
        f = sigma^2 lambda',             g^2 = -2 sigma^2 lambda'.

    Values are computed in float64 (float32 on MPS) and returned in ``t``'s dtype.
    """

    def __init__(self, alphas_cumprod: Sequence[float] | Tensor, eps: float = 1e-5) -> None:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().flatten()
        if abar.numel() < 2:
            raise ValueError(f"alphas_cumprod must hold at least 2 steps, got {abar.numel()}")
        if not (torch.isfinite(abar).all() and (abar > 0).all() and (abar < 1).all()):
            bad = abar[~((abar > 0) & (abar < 1))]
            raise ValueError(f"alphas_cumprod must lie in (0, 1) (a zero terminal SNR has an infinite "
                             f"log-SNR), got {bad[:3].tolist()}")
        if not (abar[1:] < abar[:-1]).all():
            raise ValueError("alphas_cumprod must strictly decrease with the step")
        self.alphas_cumprod = abar
        self.steps = abar.numel()
        self._lam = 0.5 * (torch.log(abar) - torch.log1p(-abar))
        self._slope = _pchip_slopes(self._lam)
        super().__init__(T=1.0, eps=eps)

    def _work(self, x: Tensor) -> tuple[Tensor, Tensor, torch.dtype]:
        """The node values and slopes on ``x``'s device in the working dtype."""
        work = torch.float32 if x.device.type == "mps" else torch.float64
        return self._lam.to(x.device, work), self._slope.to(x.device, work), work

    def _interval(self, k: Tensor, lam: Tensor, slope: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(lam_k, lam_{k+1}, m_k, m_{k+1})`` of interval ``k``."""
        return lam[k], lam[k + 1], slope[k], slope[k + 1]

    def _nodes(self, t: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], Tensor, Tensor]:
        """The interval ``k`` holding each time (:meth:`_interval`), the offset ``s`` in it (in
        steps) and ``t`` as a tensor."""
        t = _as_time(t)
        lam, slope, work = self._work(t)
        u = t.to(work) * (self.steps - 1) / self.T
        k = u.floor().clamp(0, self.steps - 2).long()
        return self._interval(k, lam, slope), u - k, t

    @staticmethod
    def _hermite(c: tuple[Tensor, Tensor, Tensor, Tensor], s: Tensor) -> Tensor:
        """The cubic Hermite ``h00 lam_k + h10 m_k + h01 lam_{k+1} + h11 m_{k+1}`` at offset ``s``."""
        l0, l1, m0, m1 = c
        return (1 + 2 * s) * (1 - s) ** 2 * l0 + s * (1 - s) ** 2 * m0 + s**2 * (3 - 2 * s) * l1 + s**2 * (s - 1) * m1

    @staticmethod
    def _dhermite(c: tuple[Tensor, Tensor, Tensor, Tensor], s: Tensor) -> Tensor:
        """``d/ds`` of :meth:`_hermite`."""
        l0, l1, m0, m1 = c
        return 6 * s * (s - 1) * (l0 - l1) + (3 * s**2 - 4 * s + 1) * m0 + (3 * s**2 - 2 * s) * m1

    def log_snr(self, t: Tensor | float) -> Tensor:
        """``lambda(t)``, the monotone cubic through the steps' log-SNRs."""
        c, s, t = self._nodes(t)
        return self._hermite(c, s).to(t.dtype)

    def dlog_snr(self, t: Tensor | float) -> Tensor:
        """``d lambda / dt`` (the derivative of the Hermite basis, times ``(N - 1) / T``)."""
        c, s, t = self._nodes(t)
        return (self._dhermite(c, s) * (self.steps - 1) / self.T).to(t.dtype)

    def t_of_log_snr(self, lam: Tensor | float) -> Tensor:
        """Inverse of :meth:`log_snr` on ``[0, T]``: the interval by binary search over the steps'
        log-SNRs, then the cubic's root by Newton's method from the secant's guess, safeguarded by
        bisection of the bracket (8 iterations; Newton converges quadratically, 4 reach float64
        rounding on the diffusers schedules)."""
        lam = _as_time(lam)
        nodes, slope, work = self._work(lam)
        target = lam.to(work)
        k = (torch.searchsorted(-nodes, -target.contiguous()) - 1).clamp(0, self.steps - 2)
        c = self._interval(k, nodes, slope)
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        s = ((target - c[0]) / (c[1] - c[0])).clamp(0, 1)
        for _ in range(8):
            f = self._hermite(c, s) - target
            right = f > 0  # lambda decreases: the root lies beyond s
            lo, hi = torch.where(right, s, lo), torch.where(right, hi, s)
            newton = s - f / self._dhermite(c, s)
            s = torch.where((newton >= lo) & (newton <= hi), newton, 0.5 * (lo + hi))
        return ((k + s) * self.T / (self.steps - 1)).to(lam.dtype)

    def alpha(self, t):
        return torch.sigmoid(2 * self.log_snr(t)).sqrt()

    def sigma(self, t):
        return torch.sigmoid(-2 * self.log_snr(t)).sqrt()

    def dalpha(self, t):
        return self.alpha(t) * self.sigma(t) ** 2 * self.dlog_snr(t)

    def dsigma(self, t):
        return -self.sigma(t) * self.alpha(t) ** 2 * self.dlog_snr(t)

    def step_time(self, n: int | Tensor) -> Tensor:
        """The time ``t = n / (N - 1)`` of discrete step ``n`` (float64)."""
        return torch.as_tensor(n, dtype=torch.float64) * self.T / (self.steps - 1)


