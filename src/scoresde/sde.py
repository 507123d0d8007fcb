"""Forward SDEs ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, T]`` and their reverse-time views.

Two levels:

* :class:`SDE` -- any drift ``f(x, t)`` and scalar diffusion ``g(t)``.  Gives prior sampling and
  log-density, Euler--Maruyama forward simulation, the reverse-time drift (Anderson 1982)
  ``f - g^2 s`` and the probability-flow drift ``f - g^2 s / 2`` for any score ``s``, and the
  paper's generic discretisation ``x_{i+1} = x_i + f_i + G_i z``.
* :class:`LinearSDE` -- defined by its perturbation kernel ``x_t = alpha(t) x_0 + sigma(t) eps``.
  The drift coefficient and diffusion follow from the kernel (Song et al. 2021, eq. 5 and App. B; Kingma et al. 2021, VDM App. A)::

      f(t)   = d log alpha / dt
      g(t)^2 = d sigma^2 / dt - 2 f(t) sigma(t)^2

  so a new SDE is two functions.  Derivatives are taken by autograd when not supplied.  The
  built-in SDEs also state ``f`` and ``g^2`` in closed form (a few operations per call instead of
  the chain through the kernel; a test holds each to the derivation).

VE convention: ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` is the *total* standard
deviation of the kernel from clean data, so ``x(0)`` is the data smoothed by ``sigma_min`` (as in
the paper).  Kernel, drift and diffusion are mutually consistent: the transition from ``s`` to
``t`` has variance ``sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2 = int_s^t g^2 (alpha_t/alpha_r)^2 dr``.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from typing import Callable

import torch
from torch import Tensor

from ._tensor import append_dims, as_batch_time, check_positive, check_time, gaussian_logp

Schedule = Callable[[Tensor], Tensor]
# A user schedule warns when alpha(T)/sigma(T) exceeds this: the prior N(0, sigma_T^2) then misses the
# mean alpha_T x_0 of p_T by more than 0.1 std for data of unit scale (KL alpha_T^2 |x0|^2 / (2 sigma_T^2),
# 0.005 nats per dimension); VP (0.0067), VE(0.01, 50) (0.02), cosine (0.008) and RF (0) lie well below.
PRIOR_SNR_MAX = 0.1
ScoreLike = Tensor


def _as_time(t: Tensor | float) -> Tensor:
    """A time argument as a floating tensor (Python floats take the default dtype)."""
    t = torch.as_tensor(t)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def _autograd_derivative(fn: Schedule, t: Tensor) -> Tensor:
    """Elementwise derivative ``d fn(t) / dt`` by autograd (works inside ``inference_mode``)."""
    with torch.inference_mode(False), torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        out = fn(tt)
        if not out.requires_grad:  # a schedule that does not depend on t (e.g. alpha = 1)
            return torch.zeros_like(t)
        (d,) = torch.autograd.grad(out.sum(), tt)
    return d.detach()


class SDE(ABC):
    """A forward SDE ``dx = f(x, t) dt + g(t) dw`` with a Gaussian prior ``N(0, prior_std^2 I)`` at ``T``."""

    def __init__(self, T: float = 1.0, eps: float = 1e-5) -> None:
        self.T = check_positive(T, "T")
        self.eps = check_positive(eps, "eps")
        if self.eps >= self.T:
            raise ValueError(f"eps must be smaller than T, got eps={eps}, T={T}")

    # -- the process --------------------------------------------------------------------------
    @abstractmethod
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """The forward drift ``f(x, t)``, same shape as ``x``; ``t`` has shape ``(B,)``."""

    @abstractmethod
    def g(self, t: Tensor | float) -> Tensor:
        """The scalar diffusion coefficient ``g(t)``, shaped like ``t``."""

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior used at ``T``."""

    def g2(self, t: Tensor | float) -> Tensor:
        """``g(t)^2`` (subclasses with a cheaper closed form override it)."""
        return self.g(t) ** 2

    # -- prior --------------------------------------------------------------------------------
    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``x_T ~ N(0, prior_std^2 I)`` of the given shape."""
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return self.prior_std * z

    def prior_logp(self, z: Tensor) -> Tensor:
        """``log N(z; 0, prior_std^2 I)`` per sample."""
        return gaussian_logp(z, self.prior_std)

    # -- forward simulation -------------------------------------------------------------------
    def simulate(
        self,
        x0: Tensor,
        t0: float,
        t1: float,
        steps: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Euler--Maruyama from ``x(t0) = x0`` to ``t1``: ``x += f(x, t) dt + g(t) sqrt(dt) z``."""
        check_time(torch.tensor([t0, t1]), self.T, "t0/t1")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        ts = torch.linspace(t0, t1, steps + 1, dtype=x0.dtype, device=x0.device)
        x = x0
        for i in range(steps):
            t, dt = ts[i], ts[i + 1] - ts[i]
            tb = as_batch_time(t, x)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + self.drift(x, tb) * dt + self.g(t) * dt.abs().sqrt() * z
        return x

    # -- reverse time -------------------------------------------------------------------------
    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor, eta: float = 1.0) -> Tensor:
        """Drift of the marginal-preserving reverse family (``dt < 0``)::

            dx = [f(x, t) - (1 + eta^2) / 2 g(t)^2 s(x, t)] dt + eta g(t) dw_bar

        ``eta = 1`` is Anderson's reverse-time SDE, ``eta = 0`` the probability-flow ODE; every
        ``eta >= 0`` has the same marginals ``p_t``.
        """
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        g2 = append_dims(self.g2(t), x.ndim)
        return self.drift(x, t) - 0.5 * (1.0 + eta**2) * g2 * score

    def probability_flow_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the probability-flow ODE ``dx/dt = f(x, t) - g(t)^2 s(x, t) / 2``."""
        return self.reverse_drift(x, t, score, eta=0.0)

    def discretize(self, x: Tensor, t: Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
        """The paper's discretisation ``x_t = x_{t-dt} + f_i + G_i z`` with ``f_i = f(x, t) dt`` and
        ``G_i = g(t) sqrt(dt)``; returns ``(f_i, G_i)`` with ``G_i`` shaped like ``t``."""
        return self.drift(x, t) * dt, self.g(t) * math.sqrt(float(dt))


class LinearSDE(SDE):
    """The SDE of the Gaussian kernel ``p_0t(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I)``.

    ``f(t) = alpha'/alpha`` and ``g(t)^2 = (sigma^2)' - 2 f sigma^2`` (Kingma et al. 2021, VDM App. A).  Give ``alpha``
    and ``sigma`` as callables of a time tensor (and optionally their derivatives; autograd
    otherwise), or subclass and override the four schedule methods.
    """

    def __init__(
        self,
        alpha: Schedule | None = None,
        sigma: Schedule | None = None,
        dalpha: Schedule | None = None,
        dsigma: Schedule | None = None,
        T: float = 1.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__(T=T, eps=eps)
        if type(self) is LinearSDE and (alpha is None or sigma is None):
            raise ValueError("LinearSDE needs both alpha and sigma callables")
        self._alpha_fn, self._sigma_fn = alpha, sigma
        self._dalpha_fn, self._dsigma_fn = dalpha, dsigma
        if type(self) is LinearSDE:
            self._validate_schedule()

    def _validate_schedule(self) -> None:
        """Check a user schedule on a grid: ``alpha > 0`` and ``sigma > 0`` on ``[eps, T]``."""
        ts = torch.linspace(self.eps, self.T, 257, dtype=torch.float64)
        if not (self.alpha(ts) > 0).all():
            raise ValueError("alpha must be positive on [eps, T]")
        if not (self.sigma(ts) > 0).all():
            raise ValueError("sigma must be positive on [eps, T]")
        ratio = float(self.alpha(ts[-1]) / self.sigma(ts[-1]))
        if ratio > PRIOR_SNR_MAX:
            warnings.warn(f"LinearSDE: alpha(T)/sigma(T) = {ratio:.3g} at T={self.T}: the prior N(0, sigma(T)^2) "
                          "neglects alpha(T) x_0, so samples start off p_T; choose a schedule with alpha(T) << sigma(T)",
                          UserWarning, stacklevel=3)

    # -- the kernel (override these four in subclasses) ---------------------------------------
    def alpha(self, t: Tensor | float) -> Tensor:
        """Mean coefficient ``alpha(t)`` of the kernel."""
        return self._alpha_fn(_as_time(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        """Standard deviation ``sigma(t)`` of the kernel."""
        return self._sigma_fn(_as_time(t))

    def dalpha(self, t: Tensor | float) -> Tensor:
        """``d alpha / dt``."""
        t = _as_time(t)
        return self._dalpha_fn(t) if self._dalpha_fn else _autograd_derivative(self.alpha, t)

    def dsigma(self, t: Tensor | float) -> Tensor:
        """``d sigma / dt``."""
        t = _as_time(t)
        return self._dsigma_fn(t) if self._dsigma_fn else _autograd_derivative(self.sigma, t)

    def dvar(self, t: Tensor | float) -> Tensor:
        """``d sigma^2 / dt = 2 sigma sigma'``; subclasses override where ``sigma(0) = 0`` makes
        the product ``0 * inf``."""
        t = _as_time(t)
        return 2 * self.sigma(t) * self.dsigma(t)

    # -- derived coefficients -----------------------------------------------------------------
    def f(self, t: Tensor | float) -> Tensor:
        """Drift coefficient ``f(t) = alpha'(t) / alpha(t)`` (the drift is ``f(t) x``)."""
        t = _as_time(t)
        return self.dalpha(t) / self.alpha(t)

    def g2(self, t: Tensor | float) -> Tensor:
        """Squared diffusion ``g(t)^2 = d sigma^2/dt - 2 f(t) sigma(t)^2`` (rounding below zero clamped)."""
        t = _as_time(t)
        return (self.dvar(t) - 2 * self.f(t) * self.sigma(t) ** 2).clamp_min(0)

    def g(self, t: Tensor | float) -> Tensor:
        """Diffusion ``g(t) = sqrt(g(t)^2)``."""
        return self.g2(t).sqrt()

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """``f(x, t) = f(t) x``."""
        return append_dims(self.f(t), x.ndim) * x

    @property
    def prior_std(self) -> float:
        """``sigma(T)``: the prior is ``N(0, sigma(T)^2 I)`` (``alpha(T) x_0`` is neglected)."""
        return float(self.sigma(torch.tensor(self.T, dtype=torch.float64)))

    # -- kernel helpers -----------------------------------------------------------------------
    def marginal(self, x0: Tensor, t: Tensor | float, noise: Tensor) -> Tensor:
        """Sample of the kernel: ``x_t = alpha(t) x_0 + sigma(t) noise``."""
        t = as_batch_time(t, x0)
        check_time(t, self.T)
        return append_dims(self.alpha(t), x0.ndim) * x0 + append_dims(self.sigma(t), x0.ndim) * noise

    def transition(self, s: Tensor | float, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """The kernel from time ``s`` to ``t >= s``: ``x_t = a x_s + b z`` with
        ``a = alpha_t / alpha_s`` and ``b = sqrt(sigma_t^2 - a^2 sigma_s^2)``; returns ``(a, b)``."""
        s, t = _as_time(s), _as_time(t)
        check_time(s, self.T, "s")
        check_time(t, self.T, "t")
        a = self.alpha(t) / self.alpha(s)
        b2 = self.sigma(t) ** 2 - (a * self.sigma(s)) ** 2
        return a, b2.clamp_min(0).sqrt()

    def discretize(self, x: Tensor, t: Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
        """The paper's reverse-diffusion discretisation with the exact kernel between ``t - dt`` and ``t``:
        ``f_i = (alpha_t / alpha_{t-dt} - 1) x`` and ``G_i = sqrt(sigma_t^2 - (alpha_t/alpha_{t-dt})^2
        sigma_{t-dt}^2)``.  For VE this is ``G_i^2 = sigma_i^2 - sigma_{i-1}^2`` and for VP it is
        the DDPM chain ``sqrt(1 - beta_i)``, ``sqrt(beta_i)`` up to ``O(beta_i^2)``."""
        a, b = self.transition((t - dt).clamp_min(0), t)
        return append_dims(a - 1, x.ndim) * x, b

    # -- log-SNR ------------------------------------------------------------------------------
    def log_snr(self, t: Tensor | float) -> Tensor:
        """``lambda(t) = log(alpha(t) / sigma(t))``, decreasing in ``t``."""
        t = _as_time(t)
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def t_of_log_snr(self, lam: Tensor | float) -> Tensor:
        """Inverse of :meth:`log_snr` by bisection in float64 on ``[0, T]`` (60 halvings: the
        bracket shrinks below ``T 2^-60``).  Subclasses with a closed form override this."""
        lam = _as_time(lam)
        target = lam.to(torch.float64)
        lo = torch.zeros_like(target)
        hi = torch.full_like(target, self.T)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > target  # lambda decreases: the root lies to the right
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype)


class VESDE(LinearSDE):
    """Variance exploding (SMLD/NCSN): ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``,
    ``f = 0``, ``g^2 = d sigma^2/dt = 2 sigma^2 log(sigma_max/sigma_min)``."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, eps: float = 1e-5):
        self.sigma_min = check_positive(sigma_min, "sigma_min")
        self.sigma_max = check_positive(sigma_max, "sigma_max")
        if sigma_max <= sigma_min:
            raise ValueError(f"sigma_max must exceed sigma_min, got {sigma_max} <= {sigma_min}")
        self._log_ratio = math.log(sigma_max / sigma_min)
        super().__init__(T=T, eps=eps)

    def alpha(self, t):
        return torch.ones_like(_as_time(t))

    def dalpha(self, t):
        return torch.zeros_like(_as_time(t))

    def sigma(self, t):
        return self.sigma_min * torch.exp(self._log_ratio * _as_time(t) / self.T)

    def dsigma(self, t):
        return self.sigma(t) * self._log_ratio / self.T

    def f(self, t):
        return torch.zeros_like(_as_time(t))

    def g2(self, t):
        return 2 * self._log_ratio / self.T * self.sigma(t) ** 2

    def t_of_log_snr(self, lam):
        """Closed form: ``t = T (-lambda - log sigma_min) / log(sigma_max / sigma_min)``."""
        return self.T * (-_as_time(lam) - math.log(self.sigma_min)) / self._log_ratio


class VPSDE(LinearSDE):
    """Variance preserving (DDPM): ``beta(t) = beta_min + t (beta_max - beta_min)``,
    ``B(t) = int_0^t beta``, ``alpha = exp(-B/2)``, ``sigma = sqrt(1 - exp(-B))``; hence
    ``f = -beta/2`` and ``g^2 = beta``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, eps: float = 1e-3):
        self.beta_min = check_positive(beta_min, "beta_min")
        self.beta_max = check_positive(beta_max, "beta_max")
        if beta_max < beta_min:
            raise ValueError(f"beta_max must be >= beta_min, got {beta_max} < {beta_min}")
        super().__init__(T=T, eps=eps)

    def beta(self, t: Tensor | float) -> Tensor:
        """``beta(t) = beta_min + t (beta_max - beta_min)`` (``t`` in units of ``T``)."""
        return (self.beta_min + _as_time(t) / self.T * (self.beta_max - self.beta_min)) / self.T

    def int_beta(self, t: Tensor | float) -> Tensor:
        """``B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2`` (with ``t / T``)."""
        u = _as_time(t) / self.T
        return self.beta_min * u + 0.5 * (self.beta_max - self.beta_min) * u**2

    def alpha(self, t):
        return torch.exp(-0.5 * self.int_beta(t))

    def dalpha(self, t):
        return -0.5 * self.beta(t) * self.alpha(t)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self.int_beta(t)))

    def dsigma(self, t):
        return self.dvar(t) / (2 * self.sigma(t))

    def dvar(self, t):
        return self.beta(t) * torch.exp(-self.int_beta(t))

    def f(self, t):
        return -0.5 * self.beta(t)

    def g2(self, t):
        return self.beta(t)

    def log_snr(self, t):
        """``lambda = -log(expm1(B(t))) / 2`` (stable form of ``log(alpha / sigma)``)."""
        return -0.5 * torch.log(torch.expm1(self.int_beta(t)))

    def t_of_log_snr(self, lam):
        """Closed form: ``B = log(1 + exp(-2 lambda))``, then the root of
        ``beta_min u + (beta_max - beta_min) u^2 / 2 = B`` with ``t = T u``."""
        big_b = torch.nn.functional.softplus(-2 * _as_time(lam))
        d = self.beta_max - self.beta_min
        if d == 0:
            return self.T * big_b / self.beta_min
        u = 2 * big_b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * big_b))
        return self.T * u


class SubVPSDE(VPSDE):
    """Sub-VP: the VP mean ``alpha = exp(-B/2)`` with ``sigma = 1 - exp(-B)``; hence
    ``f = -beta/2`` and ``g^2 = beta (1 - exp(-2 B))``, never above VP's."""

    def sigma(self, t):
        return -torch.expm1(-self.int_beta(t))

    def dsigma(self, t):
        return self.beta(t) * torch.exp(-self.int_beta(t))

    def dvar(self, t):
        return 2 * self.sigma(t) * self.dsigma(t)

    def g2(self, t):
        return self.beta(t) * -torch.expm1(-2 * self.int_beta(t))

    def log_snr(self, t):
        return LinearSDE.log_snr(self, t)

    def t_of_log_snr(self, lam):
        return LinearSDE.t_of_log_snr(self, lam)


class CosineVPSDE(LinearSDE):
    """Cosine VP schedule (improved DDPM): ``alpha(t) = cos(pi/2 (t+s)/(1+s)) / cos(pi/2 s/(1+s))``,
    ``sigma = sqrt(1 - alpha^2)``.  ``alpha`` reaches 0 at ``t = 1``, so ``T`` stops short
    (0.9946, where ``lambda ~ -4.8``)."""

    def __init__(self, s: float = 0.008, T: float = 0.9946, eps: float = 1e-3):
        self.s = check_positive(s, "s")
        if T >= 1.0:
            raise ValueError(f"T must be < 1 for the cosine schedule (alpha(1) = 0), got {T}")
        self._c0 = math.cos(0.5 * math.pi * s / (1 + s))
        super().__init__(T=T, eps=eps)

    def _phase(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * (_as_time(t) + self.s) / (1 + self.s)

    def alpha(self, t):
        return torch.cos(self._phase(t)) / self._c0

    def dalpha(self, t):
        return -torch.sin(self._phase(t)) / self._c0 * 0.5 * math.pi / (1 + self.s)

    def sigma(self, t):
        return torch.sqrt((1 - self.alpha(t) ** 2).clamp_min(0))

    def dsigma(self, t):
        return -self.alpha(t) * self.dalpha(t) / self.sigma(t)

    def dvar(self, t):
        return -2 * self.alpha(t) * self.dalpha(t)

    def f(self, t):
        return -0.5 * math.pi / (1 + self.s) * torch.tan(self._phase(t))

    def g2(self, t):
        return -2 * self.f(t)

    def t_of_log_snr(self, lam):
        """Closed form: ``alpha^2 = sigmoid(2 lambda)``, ``t = (2/pi)(1+s) arccos(alpha c0) - s``."""
        a = torch.sigmoid(2 * _as_time(lam)).sqrt()
        return 2 / math.pi * (1 + self.s) * torch.arccos((a * self._c0).clamp(-1, 1)) - self.s


class RectifiedFlow(LinearSDE):
    """The straight path of flow matching / rectified flow: ``alpha = 1 - t``, ``sigma = t`` on
    ``[0, 1]``.  ``f = -1/(1-t)`` and ``g^2 = 2t/(1-t)`` diverge at ``t = 1`` while the velocity
    ``u = -x_0 + eps`` stays finite; the prior ``N(0, I)`` is exact at ``t = 1``."""

    def __init__(self, T: float = 1.0, eps: float = 1e-3):
        if T > 1.0:
            raise ValueError(f"T must be <= 1 for the rectified flow, got {T}")
        super().__init__(T=T, eps=eps)

    def alpha(self, t):
        return 1 - _as_time(t)

    def dalpha(self, t):
        return -torch.ones_like(_as_time(t))

    def sigma(self, t):
        return _as_time(t).clone()

    def dsigma(self, t):
        return torch.ones_like(_as_time(t))

    def f(self, t):
        return -1 / (1 - _as_time(t))

    def g2(self, t):
        t = _as_time(t)
        return 2 * t / (1 - t)

    def t_of_log_snr(self, lam):
        """Closed form: ``t = 1 / (1 + exp(lambda)) = sigmoid(-lambda)``."""
        return torch.sigmoid(-_as_time(lam))


SDES: dict[str, type[LinearSDE]] = {
    "ve": VESDE,
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "cosine": CosineVPSDE,
    "rf": RectifiedFlow,
}


def sde_from_name(name: str, **kwargs) -> LinearSDE:
    """Build an SDE from its short name (``ve``, ``vp``, ``subvp``, ``cosine``, ``rf``)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in SDES:
        raise ValueError(f"unknown sde {name!r}; choose one of {', '.join(SDES)}")
    return SDES[key](**kwargs)


# -- discrete chains of the seeds ---------------------------------------------------------------
def ddpm_betas(N: int, beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    """DDPM betas for ``N`` steps as the paper discretises the VP SDE:
    ``beta_i = beta_min / N + (i / (N - 1)) (beta_max - beta_min) / N`` for ``i = 0..N-1``.
    The chain ``x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z`` has marginal
    ``N(sqrt(abar_i) x_0, (1 - abar_i) I)`` with ``abar_i = prod_{j<=i} (1 - beta_j)``."""
    if N < 2:
        raise ValueError(f"N must be >= 2, got {N}")
    check_positive(beta_min, "beta_min")
    check_positive(beta_max, "beta_max")
    return torch.linspace(beta_min / N, beta_max / N, N, dtype=torch.float64)


def ddpm_alphas_cumprod(betas: Tensor) -> Tensor:
    """``abar_i = prod_{j<=i} (1 - beta_j)``."""
    return torch.cumprod(1 - betas, dim=0)


def smld_sigmas(N: int, sigma_min: float = 0.01, sigma_max: float = 50.0) -> Tensor:
    """SMLD/NCSN noise levels, geometric and ascending with the index (the time direction):
    ``sigma_i = sigma_min (sigma_max / sigma_min)^{i / (N - 1)}``, ``i = 0..N-1``.  The chain
    ``x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z`` started at ``x_0 + sigma_0 z`` has
    marginal ``N(x_0, sigma_i^2 I)``."""
    if N < 2:
        raise ValueError(f"N must be >= 2, got {N}")
    check_positive(sigma_min, "sigma_min")
    check_positive(sigma_max, "sigma_max")
    return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), N, dtype=torch.float64))
