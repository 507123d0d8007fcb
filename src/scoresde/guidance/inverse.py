"""Linear inverse problems ``y = A x (+ noise)``: inpainting (:class:`Mask`), super-resolution
(:class:`AveragePool`), deblurring (:class:`CircularBlur`), colorization (:func:`colorize`), or
any user operator given as ``LinearOperator(forward, pinv)``.

**Projection (the paper's replacement method, generalized).** Let ``A^+`` be the Moore--Penrose
pseudo-inverse, so ``P = A^+ A`` is the orthogonal projection onto the row space of ``A``.  After
every sampler step at time ``t`` the row-space part of the state is replaced by a forward-diffused
copy of the measurement:

    x <- (I - A^+ A) x + A^+ y_t,      y_t = alpha(t) y + sigma(t) A z,   z ~ N(0, I)

(``A y_t`` is distributed exactly as ``A x_t`` given ``A x_0 = y``).  For a mask ``A = diag(m)``
this is Song et al. (2021)'s imputation: observed coordinates are overwritten by
``alpha(t) x_obs + sigma(t) z``; for a gray-scale row it is their colorization in the decoupled
space (:func:`colorize`).  It hooks into every sampler through the ``callback(step, t, x)``
contract.  ``noise="fresh"`` draws a new ``z`` per step (stochastic samplers, the paper);
``noise="fixed"`` keeps one ``z`` (a deterministic path for ODE / fast solvers).

*Approximation.* The missing part is sampled from the model's conditional given the diffused
*noisy* measurement ``y_t``, not given ``y``: ``p_t(x_miss | y_t)`` differs from the
``p_t(x_miss | y)`` the exact conditional reverse SDE needs, so mode weights are distorted
when the posterior over modes stays ambiguous (measured on the 2-D ring in BENCHMARKS.md;
:func:`~scoresde.guidance.smc.inpaint_smc` corrects it).  Measurement noise is ignored: ``y``
is treated as exact. For noisy ``y`` use :func:`reconstruction_guided_score` (DPS-style).

**Reconstruction guidance.** ``s(x, t) + w grad_x log N(y; A x0_hat(x, t), (sigma_y^2 + r_t^2) I)``
with Tweedie's ``x0_hat = (x + sigma^2 s) / alpha`` differentiated through the score and
``r_t^2 = c^2 sigma^2 / (alpha^2 c^2 + sigma^2)`` the posterior variance of ``x_0`` for data of
scale ``c`` (the Gaussian approximation of ``p(x_0 | x_t)``; exact for Gaussian data, biased for
multi-modal posteriors).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .._tensor import append_dims, as_batch_time
from ..score import ScoreFn
from ..sde import LinearSDE
from ._random import randn_like
from .conditional import check_scale

Callback = Callable[[int, Tensor, Tensor], Tensor]
NOISE_MODES = ("fresh", "fixed")


# -- operators ------------------------------------------------------------------------------------
class LinearOperator:
    """A linear measurement ``y = A x`` given by two callables: ``forward(x) = A x`` and
    ``pinv(y) = A^+ y`` (the Moore--Penrose pseudo-inverse, so that ``A^+ A`` is an orthogonal
    projection; the projection method relies on it). Subclasses give masks and pooling."""

    def __init__(self, forward: Callable[[Tensor], Tensor], pinv: Callable[[Tensor], Tensor]) -> None:
        self._forward, self._pinv = forward, pinv

    def __call__(self, x: Tensor) -> Tensor:
        return self._forward(x)

    def pinv(self, y: Tensor) -> Tensor:
        return self._pinv(y)

    def check(self, x: Tensor) -> None:
        """Raise ``ValueError`` if ``x`` is not a valid input (shape) of the operator."""

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """``(I - A^+ A) x + A^+ y``: keep ``x`` off the row space, take the row space from ``y``."""
        return x + self.pinv(y - self(x))


def as_mask(mask: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """A boolean mask (``True`` = observed) of shape ``shape`` or ``shape[1:]`` (shared by the
    batch), from booleans or 0/1 values; ``ValueError`` otherwise."""
    mask = torch.as_tensor(mask)
    shape = tuple(shape)
    if tuple(mask.shape) not in (shape, shape[1:]):
        raise ValueError(f"mask must have shape {shape} or {shape[1:]}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must hold booleans or 0/1 values")
        mask = mask != 0
    return mask


class Mask(LinearOperator):
    """Inpainting: ``A x = m * x`` keeping ``x``'s shape (unobserved entries read as 0);
    ``A^+ = A``. ``mask`` is ``True``/1 where observed, shaped like a sample or like the batch."""

    def __init__(self, mask: Tensor) -> None:
        self.mask = torch.as_tensor(mask)
        super().__init__(self._apply, self._apply)

    def _apply(self, x: Tensor) -> Tensor:
        return x * self.mask.to(device=x.device, dtype=x.dtype)

    def check(self, x: Tensor) -> None:
        self.mask = as_mask(self.mask, x.shape)

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """``(I - A^+ A) x + A^+ y`` for a mask: observed entries from ``y``, exactly."""
        return torch.where(self.mask.to(device=x.device, dtype=torch.bool), y, x)


class AveragePool(LinearOperator):
    """Down-sampling by ``factor x factor`` block means over the last two axes (any leading axes);
    ``A^+`` is nearest-neighbour up-sampling (``A A^T = I / factor^2``, so ``A^+ = factor^2 A^T``)."""

    def __init__(self, factor: int) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
        self.factor = factor
        super().__init__(self._pool, self._upsample)

    def _pool(self, x: Tensor) -> Tensor:
        f, (h, w) = self.factor, x.shape[-2:]
        return x.reshape(*x.shape[:-2], h // f, f, w // f, f).mean(dim=(-3, -1))

    def _upsample(self, y: Tensor) -> Tensor:
        return y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)

    def check(self, x: Tensor) -> None:
        if x.ndim < 3 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"x must end in two axes divisible by factor={self.factor}, got {tuple(x.shape)}")


class CircularBlur(LinearOperator):
    """Blur by circular convolution with a 2-D ``kernel`` over the last two axes:
    ``A = F^-1 diag(K) F`` with ``K`` the kernel's DFT on the image grid, and the pseudo-inverse
    ``A^+ = F^-1 diag(K^+) F`` with ``K^+ = 1/K`` where ``|K| > tol * max|K|`` and 0 elsewhere.
    ``A^+ A`` is then the orthogonal projection onto the kept frequencies (``F`` is unitary);
    frequencies below the threshold are treated as unobserved."""

    def __init__(self, kernel: Tensor, tol: float = 1e-3) -> None:
        self.kernel = torch.as_tensor(kernel)
        if self.kernel.ndim != 2:
            raise ValueError(f"kernel must be 2-D, got shape {tuple(self.kernel.shape)}")
        self.tol = float(tol)
        super().__init__(lambda x: self._filter(x, False), lambda y: self._filter(y, True))

    def _spectrum(self, x: Tensor) -> Tensor:
        """The kernel's DFT on ``x``'s grid, its centre tap at pixel (0, 0)."""
        kh, kw = self.kernel.shape
        padded = torch.zeros(x.shape[-2:], dtype=torch.float64)
        padded[:kh, :kw] = self.kernel.to(torch.float64)
        return torch.fft.fft2(padded.roll((-(kh // 2), -(kw // 2)), dims=(0, 1))).to(x.device)

    def _filter(self, x: Tensor, inverse: bool) -> Tensor:
        k = self._spectrum(x)
        if inverse:
            keep = k.abs() > self.tol * k.abs().max()
            k = torch.where(keep, 1 / torch.where(keep, k, torch.ones_like(k)), torch.zeros_like(k))
        return torch.fft.ifft2(torch.fft.fft2(x.to(torch.float64)) * k).real.to(x.dtype)

    def check(self, x: Tensor) -> None:
        if x.ndim < 3 or x.shape[-2] < self.kernel.shape[0] or x.shape[-1] < self.kernel.shape[1]:
            raise ValueError(f"x must be images (B, ..., H, W) at least as large as the kernel, got {tuple(x.shape)}")


# -- the projection (replacement) method ----------------------------------------------------------
def projection_callback(
    sde: LinearSDE,
    y: Tensor,
    op: LinearOperator,
    generator: torch.Generator | None = None,
    noise: str = "fresh",
) -> Callback:
    """The sampler callback ``x <- (I - A^+ A) x + A^+ (alpha(t) y + sigma(t) A z)`` (module doc).

    ``noise="fresh"``: a new ``z`` at each call; ``"fixed"``: one ``z`` drawn at the first call.
    """
    if noise not in NOISE_MODES:
        raise ValueError(f"unknown noise {noise!r}; choose one of {', '.join(map(repr, NOISE_MODES))}")
    fixed: list[Tensor] = []

    def callback(step: int, t: Tensor, x: Tensor) -> Tensor:
        if noise == "fresh" or not fixed:
            fixed[:] = [randn_like(x, generator)]
        t = as_batch_time(t, x)
        a = append_dims(sde.alpha(t), y.ndim)
        s = append_dims(sde.sigma(t), y.ndim)
        return op.project(x, a * y + s * op(fixed[0]))

    return callback


def solve_inverse_problem(
    score_fn: ScoreFn,
    sde: LinearSDE,
    y: Tensor,
    op: LinearOperator,
    shape: tuple[int, ...],
    *,
    method: str = "pc",
    steps: int | None = None,
    noise: str = "fresh",
    generator: torch.Generator | None = None,
    **sample_options,
):
    """Sample ``x`` of ``shape`` with ``A x = y`` by the projection method through ``sd.sample``.

    The prior draw is projected at ``T``, every step is followed by :func:`projection_callback`,
    and the result is projected onto ``{A x = y}`` exactly. Returns ``(x, info)`` of the sampler
    (``info.nfe``). ``sample_options`` go to :func:`scoresde.sample` (a caller's ``callback``
    runs after the projection).
    """
    from ..sampling import sample

    if sample_options.get("batch_size") is not None:
        raise ValueError("batch_size is not supported: the projection needs the whole batch; split y yourself")
    probe = torch.zeros(shape, dtype=y.dtype, device=y.device)
    op.check(probe)
    if tuple(op(probe).shape) != tuple(y.shape):
        raise ValueError(f"y must have shape {tuple(op(probe).shape)} (A applied to {tuple(shape)}), got {tuple(y.shape)}")
    project = projection_callback(sde, y, op, generator, noise)
    user_callback = sample_options.pop("callback", None)

    def callback(step: int, t: Tensor, x: Tensor) -> Tensor:
        x = project(step, t, x)
        out = user_callback(step, t, x) if user_callback is not None else None
        return x if out is None else out

    x_T = sde.prior_sample(tuple(shape), generator=generator, device=y.device, dtype=y.dtype)
    x_T = project(-1, torch.tensor(sde.T), x_T)
    x, info = sample(score_fn, sde, x_T=x_T, method=method, steps=steps, generator=generator,
                     callback=callback, **sample_options)
    return op.project(x, y), info


def inpaint(
    score_fn: ScoreFn,
    sde: LinearSDE,
    x_obs: Tensor,
    mask: Tensor,
    **options,
):
    """Impute the unobserved entries of ``x_obs`` (``mask`` ``True``/1 where observed, shaped like
    ``x_obs`` or like one sample: any shape) by the replacement method through the sampler
    ``method`` (``options`` as in :func:`solve_inverse_problem`), or with ``method="smc"`` by
    :func:`~scoresde.guidance.smc.inpaint_smc` (``options``: ``particles``, ``steps``, ...).
    Returns ``(x, info)`` with ``x[mask] == x_obs[mask]``."""
    if options.get("method") == "smc":
        from .smc import inpaint_smc

        options.pop("method")
        return inpaint_smc(score_fn, sde, x_obs, mask, **options)
    op = Mask(mask)
    op.check(x_obs)
    return solve_inverse_problem(score_fn, sde, op(x_obs), op, x_obs.shape, **options)


# -- reconstruction guidance ----------------------------------------------------------------------
def reconstruction_guided_score(
    score_fn: ScoreFn,
    sde: LinearSDE,
    y: Tensor,
    op: LinearOperator,
    scale: float = 1.0,
    sigma_y: float = 0.0,
    data_std: float = 1.0,
) -> ScoreFn:
    """``s(x, t) + w grad_x log N(y; A x0_hat(x, t), (sigma_y^2 + r_t^2) I)`` (module doc), the
    gradient through ``score_fn`` by autograd; one score evaluation (with its backward) per call."""
    scale = check_scale(scale)
    sigma_y = check_scale(sigma_y, "sigma_y")
    c2 = float(data_std) ** 2
    if not c2 > 0:
        raise ValueError(f"data_std must be > 0, got {data_std}")

    def guided(x: Tensor, t: Tensor) -> Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            tg = as_batch_time(t, x).detach().clone()
            a, s = append_dims(sde.alpha(tg), x.ndim), append_dims(sde.sigma(tg), x.ndim)
            score = score_fn(xg, tg)
            x0 = (xg + s**2 * score) / a
            var = sigma_y**2 + c2 * s**2 / (a**2 * c2 + s**2)
            log_lik = -0.5 * ((y.detach().clone() - op(x0)) ** 2 / var).sum()
            (grad,) = torch.autograd.grad(log_lik, xg)
        return score.detach() + scale * grad

    return guided


# -- colorization ---------------------------------------------------------------------------------
def decoupling_matrix(channels: int = 3, dtype: torch.dtype = torch.float64) -> Tensor:
    """An orthogonal ``C x C`` matrix whose first row is the gray direction ``(1, ..., 1)/sqrt(C)``:
    the Householder reflection ``M = I - 2 v v^T / |v|^2`` with ``v = e_1 - 1/sqrt(C)`` (symmetric,
    ``M e_1 = 1/sqrt(C)``). ``u = M x`` per pixel puts ``sqrt(C) * gray`` in channel 0."""
    if channels < 2:
        raise ValueError(f"channels must be >= 2, got {channels}")
    v = -torch.full((channels,), 1.0 / math.sqrt(channels), dtype=dtype)
    v[0] += 1.0
    return torch.eye(channels, dtype=dtype) - 2.0 * torch.outer(v, v) / (v @ v)


def mix_channels(matrix: Tensor, x: Tensor) -> Tensor:
    """Apply a ``C x C`` matrix to the channel axis 1 of ``x`` ``(B, C, ...)``."""
    return torch.einsum("ij,bj...->bi...", matrix.to(x), x)


def to_gray(x: Tensor) -> Tensor:
    """The gray-scale image ``mean_c x_c``: ``(B, C, ...) -> (B, 1, ...)``."""
    return x.mean(dim=1, keepdim=True)


def colorize(score_fn: ScoreFn, sde: LinearSDE, gray: Tensor, channels: int = 3, **options):
    """The paper's colorization: map to the decoupled space ``u = M x`` (:func:`decoupling_matrix`),
    where channel 0 is the observed ``sqrt(C) * gray`` and the score is ``M s(M^T u, t)`` (an
    orthogonal change of variables), impute the other ``C - 1`` channels with :func:`inpaint`, and
    map back ``x = M^T u``. ``gray`` is ``(B, 1, ...)``, e.g. :func:`to_gray` of an image.
    Returns ``(x, info)`` with ``to_gray(x) == gray``."""
    if gray.ndim < 2 or gray.shape[1] != 1:
        raise ValueError(f"gray must have shape (B, 1, ...), got {tuple(gray.shape)}")
    M = decoupling_matrix(channels).to(gray)

    def decoupled_score(u: Tensor, t: Tensor) -> Tensor:
        return mix_channels(M, score_fn(mix_channels(M.T, u), t))

    shape = (gray.shape[0], channels, *gray.shape[2:])
    u_obs = torch.zeros(shape, dtype=gray.dtype, device=gray.device)
    u_obs[:, :1] = math.sqrt(channels) * gray
    mask = torch.zeros(shape[1:], dtype=torch.bool)
    mask[0] = True
    u, info = inpaint(decoupled_score, sde, u_obs, mask, **options)
    return mix_channels(M.T, u), info
