"""Linear measurement operators ``y = A x``: inpainting (:class:`Mask`), super-resolution
(:class:`AveragePool`), deblurring (:class:`CircularBlur`), colorization (:class:`Grayscale`), or
any user operator given as ``LinearOperator(forward, pinv)``.

Every operator gives two views of ``A``:

* ``forward`` and the Moore--Penrose pseudo-inverse ``pinv`` (so ``P = A^+ A`` is the orthogonal
  projection onto the row space): the replacement method and the noiseless constraint use them;
* :meth:`LinearOperator.svd`, a singular value decomposition ``A = U S V^T`` as a
  :class:`Spectrum` (``coef(x) = V^T x``, ``expand(c) = V c``, ``s`` and ``observe(y) = U^T y``):
  the particle sampler reads noisy measurements through it, direction by direction
  (:mod:`scoresde.guidance.smc`). The named operators give it in closed form (the identity for a
  mask, a Householder basis per pooling block or per pixel's channels, the unitary DFT for a
  circular blur); a user operator gets it from the dense matrix (``forward`` applied to the
  identity), which suits small ``x`` (a few thousand entries).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Spectrum:
    """``A = U S V^T`` read as maps: ``coef(x) = V^T x`` (a batch ``(N, *sample)`` to coefficients
    ``(N, *c)``, possibly complex), ``expand(c) = V c`` (back, real), ``s`` the singular values
    ``(1 or B, *c)`` (0: a direction ``A`` does not see) and ``observe(y) = U^T y`` (measurements
    ``(N, *out)`` to ``(N, *c)``). ``V`` has orthonormal columns, so white noise has white
    coefficients; it spans the whole space or (the dense fallback) at least ``A``'s row space."""

    coef: Callable[[Tensor], Tensor]
    expand: Callable[[Tensor], Tensor]
    s: Tensor
    observe: Callable[[Tensor], Tensor]


def decoupling_matrix(channels: int = 3, dtype: torch.dtype = torch.float64) -> Tensor:
    """An orthogonal ``C x C`` matrix whose first row is the uniform direction ``(1, ..., 1)/sqrt(C)``:
    the Householder reflection ``M = I - 2 v v^T / |v|^2`` with ``v = e_1 - 1/sqrt(C)`` (symmetric,
    ``M e_1 = 1/sqrt(C)``). ``u = M x`` puts ``sqrt(C) * mean(x)`` in entry 0 (per pixel over the
    channels: the paper's colorization space; per block over its pixels: average pooling)."""
    if channels < 2:
        raise ValueError(f"channels must be >= 2, got {channels}")
    v = -torch.full((channels,), 1.0 / math.sqrt(channels), dtype=dtype)
    v[0] += 1.0
    return torch.eye(channels, dtype=dtype) - 2.0 * torch.outer(v, v) / (v @ v)


def _first_entry(y: Tensor, size: int) -> Tensor:
    """``y (N, ...)`` as coefficients ``(N, ..., size)`` holding ``y`` in entry 0 and zeros elsewhere."""
    out = torch.zeros(*y.shape, size, dtype=y.dtype, device=y.device)
    out[..., 0] = y
    return out


def _uniform_spectrum(size: int, like: Tensor, coef, expand, gain: float, blocks=lambda y: y) -> Spectrum:
    """The spectrum of a block mean over ``size`` entries: one seen direction of singular value
    ``gain = 1/sqrt(size)`` per block (entry 0 of the Householder coefficients); ``blocks(y)``
    lays the measurements out like the coefficients' leading axes."""
    s = torch.zeros(size, dtype=like.dtype, device=like.device)
    s[0] = gain
    return Spectrum(coef, expand, s, lambda y: _first_entry(blocks(y), size))


class LinearOperator:
    """A linear measurement ``y = A x`` given by two callables: ``forward(x) = A x`` and
    ``pinv(y) = A^+ y`` (the Moore--Penrose pseudo-inverse, so that ``A^+ A`` is an orthogonal
    projection). Both act on batches ``(N, ...)`` sample by sample."""

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

    def matrix(self, like: Tensor) -> Tensor:
        """The dense matrix ``A`` ``(m, d)`` (float64) on flattened inputs shaped like ``like``
        ``(B, ...)``: ``forward`` applied in ``like``'s dtype to the ``d`` unit vectors of one sample."""
        shape = tuple(like.shape[1:])
        d = math.prod(shape)
        eye = torch.eye(d, dtype=torch.float64, device=like.device).reshape(d, *shape)
        return self(eye.to(like.dtype)).double().reshape(d, -1).T

    def svd(self, like: Tensor) -> Spectrum:
        """The SVD for inputs shaped like ``like`` ``(B, ...)``, here from the dense matrix
        (:meth:`matrix`) by ``torch.linalg.svd`` in float64; singular values below ``1e-9 max``
        count as 0."""
        shape = tuple(like.shape[1:])
        out_shape = tuple(self(like[:1]).shape[1:])
        U, s, Vh = torch.linalg.svd(self.matrix(like), full_matrices=False)
        s = torch.where(s > 1e-9 * s.max(), s, torch.zeros_like(s))
        V, U = Vh.T.to(like.dtype), U.to(like.dtype)
        return Spectrum(
            coef=lambda x: x.reshape(x.shape[0], -1) @ V,
            expand=lambda c: (c @ V.T).reshape(c.shape[0], *shape),
            s=s.to(like.dtype)[None],
            observe=lambda y: y.reshape(y.shape[0], -1) @ U if tuple(y.shape[1:]) == out_shape else _bad_y(y, out_shape),
        )


def _bad_y(y: Tensor, shape: tuple[int, ...]) -> Tensor:
    raise ValueError(f"y must have shape (B, {', '.join(map(str, shape))}), got {tuple(y.shape)}")


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
    ``A^+ = A``, and the SVD is the identity with ``s = m``. ``mask`` is ``True``/1 where
    observed, shaped like a sample or like the batch."""

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

    def svd(self, like: Tensor) -> Spectrum:
        self.check(like)
        s = self.mask.to(device=like.device, dtype=like.dtype)
        return Spectrum(lambda x: x, lambda c: c, s if s.ndim == like.ndim else s[None], lambda y: y)


class AveragePool(LinearOperator):
    """Down-sampling by ``factor x factor`` block means over the last two axes (any leading axes);
    ``A^+`` is nearest-neighbour up-sampling (``A A^T = I / factor^2``, so ``A^+ = factor^2 A^T``).
    SVD: per block the Householder basis of :func:`decoupling_matrix` (``factor^2`` entries), whose
    first direction is seen with singular value ``1 / factor``."""

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

    def svd(self, like: Tensor) -> Spectrum:
        self.check(like)
        f, size = self.factor, self.factor**2
        if f == 1:
            return Spectrum(lambda x: x[..., None], lambda c: c[..., 0], torch.ones(1, dtype=like.dtype, device=like.device),
                            lambda y: y[..., None])
        M = decoupling_matrix(size).to(like)

        def coef(x: Tensor) -> Tensor:  # (..., H, W) -> (..., H/f, W/f, f^2)
            *lead, h, w = x.shape
            blocks = x.reshape(*lead, h // f, f, w // f, f).transpose(-3, -2).reshape(*lead, h // f, w // f, size)
            return blocks @ M.T

        def expand(c: Tensor) -> Tensor:
            *lead, h, w, _ = c.shape
            return (c @ M).reshape(*lead, h, w, f, f).transpose(-3, -2).reshape(*lead, h * f, w * f)

        return _uniform_spectrum(size, like, coef, expand, 1.0 / f)


class Grayscale(LinearOperator):
    """Gray-scale projection ``A x = mean_c x_c`` over the channel axis 1: ``(B, C, ...) -> (B, 1, ...)``;
    ``A^+ y`` repeats ``y`` over the channels (``A A^T = I / C``). SVD: per pixel the Householder
    basis of :func:`decoupling_matrix` over the channels (the paper's decoupled colorization
    space), whose first direction is seen with singular value ``1 / sqrt(C)``."""

    def __init__(self, channels: int = 3) -> None:
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2:
            raise ValueError(f"channels must be an integer >= 2, got {channels!r}")
        self.channels = channels
        super().__init__(to_gray, lambda y: y.expand(y.shape[0], self.channels, *y.shape[2:]))

    def check(self, x: Tensor) -> None:
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(f"x must have shape (B, {self.channels}, ...), got {tuple(x.shape)}")

    def svd(self, like: Tensor) -> Spectrum:
        self.check(like)
        M = decoupling_matrix(self.channels).to(like)
        return _uniform_spectrum(self.channels, like, lambda x: mix_channels(M, x).movedim(1, -1),
                                 lambda c: mix_channels(M.T, c.movedim(-1, 1)), 1.0 / math.sqrt(self.channels),
                                 blocks=lambda y: y.squeeze(1))


class CircularBlur(LinearOperator):
    """Blur by circular convolution with a 2-D ``kernel`` over the last two axes:
    ``A = F^-1 diag(K) F`` with ``K`` the kernel's DFT on the image grid, and the pseudo-inverse
    ``A^+ = F^-1 diag(K^+) F`` with ``K^+ = 1/K`` where ``|K| > tol * max|K|`` and 0 elsewhere.
    ``A^+ A`` is then the orthogonal projection onto the kept frequencies (``F`` is unitary);
    frequencies below the threshold are treated as unobserved. SVD: the unitary DFT with
    ``s = |K|`` (0 below the threshold) and ``U^T y = conj(K)/|K| F y``."""

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

    def _kept(self, k: Tensor) -> Tensor:
        return k.abs() > self.tol * k.abs().max()

    def _filter(self, x: Tensor, inverse: bool) -> Tensor:
        k = self._spectrum(x)
        if inverse:
            keep = self._kept(k)
            k = torch.where(keep, 1 / torch.where(keep, k, torch.ones_like(k)), torch.zeros_like(k))
        return torch.fft.ifft2(torch.fft.fft2(x.to(torch.float64)) * k).real.to(x.dtype)

    def check(self, x: Tensor) -> None:
        if x.ndim < 3 or x.shape[-2] < self.kernel.shape[0] or x.shape[-1] < self.kernel.shape[1]:
            raise ValueError(f"x must be images (B, ..., H, W) at least as large as the kernel, got {tuple(x.shape)}")

    def svd(self, like: Tensor) -> Spectrum:
        self.check(like)
        k = self._spectrum(like)
        s = torch.where(self._kept(k), k.abs(), torch.zeros_like(k.abs()))
        phase = torch.where(s > 0, k.conj() / k.abs().clamp_min(1e-300), torch.zeros_like(k))
        return Spectrum(
            coef=lambda x: torch.fft.fft2(x.to(torch.float64), norm="ortho"),
            expand=lambda c: torch.fft.ifft2(c, norm="ortho").real.to(like.dtype),
            s=s[None],
            observe=lambda y: torch.fft.fft2(y.to(torch.float64), norm="ortho") * phase,
        )


def mix_channels(matrix: Tensor, x: Tensor) -> Tensor:
    """Apply a ``C x C`` matrix to the channel axis 1 of ``x`` ``(B, C, ...)``."""
    return torch.einsum("ij,bj...->bi...", matrix.to(x), x)


def to_gray(x: Tensor) -> Tensor:
    """The gray-scale image ``mean_c x_c``: ``(B, C, ...) -> (B, 1, ...)``."""
    return x.mean(dim=1, keepdim=True)
