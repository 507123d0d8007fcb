"""Building blocks of NCSN++ / DDPM++ in plain PyTorch (no compiled ops).

- FIR resampling (Zhang 2019, "Making convolutional networks shift-invariant again"; the
  paper's ``fir_kernel = [1, 3, 3, 1]``): the separable kernel ``k k^T / (sum k)^2`` applied
  as a depthwise convolution, strided for down-sampling and transposed for up-sampling.
- Residual blocks ``y = (x' + F(x, temb)) / sqrt(2)`` (skip rescale) or ``x' + F``, with
  ``F = Conv(Drop(act(GN(Conv(resample(act(GN(x)))) + Dense(act(temb))))))`` and ``x'`` the input
  through an optional resampling and 1x1 projection. DDPM++ blocks never resample; BigGAN
  blocks resample inside the block (``resample="up" | "down"``).
- Single-head self-attention over pixels through ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._tensor import check_choice


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with ``min(channels // 4, 32)`` groups and eps 1e-6, as in NCSN++."""
    return nn.GroupNorm(max(1, min(channels // 4, 32)), channels, eps=1e-6)


def conv(in_ch: int, out_ch: int, kernel: int = 3, *, stride: int = 1, zero: bool = False) -> nn.Conv2d:
    """A 'same'-padded convolution; ``zero=True`` zero-initialises it (the paper's init_scale=0)."""
    layer = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)
    if zero:
        nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def fir_kernel(taps: tuple[float, ...]) -> Tensor:
    """The separable 2-D FIR kernel ``k k^T / (sum k)^2`` (unit DC gain)."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum()


def _depthwise(kernel: Tensor, x: Tensor) -> Tensor:
    return kernel.to(dtype=x.dtype, device=x.device).expand(x.shape[1], 1, *kernel.shape).contiguous()


def fir_downsample(x: Tensor, kernel: Tensor) -> Tensor:
    """Low-pass filter with ``kernel`` then keep every second pixel: ``(H, W) -> (H/2, W/2)``.

    Padding ``(K - 2 + 1) // 2`` before and ``(K - 2) // 2`` after centres the filter."""
    k = kernel.shape[-1]
    p = k - 2
    x = F.pad(x, ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
    return F.conv2d(x, _depthwise(kernel, x), stride=2, groups=x.shape[1])


def fir_upsample(x: Tensor, kernel: Tensor) -> Tensor:
    """Zero-insertion up-sampling by 2 followed by the FIR filter with gain 4 (DC preserved):
    a depthwise transposed convolution, ``(H, W) -> (2H, 2W)`` for a kernel of even length."""
    k = kernel.shape[-1]
    w = _depthwise(kernel.flip(-1, -2) * 4, x)
    return F.conv_transpose2d(x, w, stride=2, padding=(k - 1) // 2, groups=x.shape[1])


def naive_downsample(x: Tensor) -> Tensor:
    """2x2 average pooling."""
    return F.avg_pool2d(x, 2)


def naive_upsample(x: Tensor) -> Tensor:
    """Nearest-neighbour up-sampling by 2."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def resample2x(x: Tensor, direction: str | None, kernel: Tensor | None) -> Tensor:
    """Resample by 2 in ``direction`` ("up", "down" or None for identity), FIR when ``kernel``
    is given, else nearest-neighbour / average pooling."""
    if direction == "up":
        return fir_upsample(x, kernel) if kernel is not None else naive_upsample(x)
    if direction == "down":
        return fir_downsample(x, kernel) if kernel is not None else naive_downsample(x)
    return x


class Resample(nn.Module):
    """Up- or down-sample by 2 (FIR or naive), optionally followed (up) or fused (down) with a
    3x3 convolution ``in_ch -> out_ch``. The ``temb`` argument is accepted and ignored so that
    a resampler and a resampling residual block are called alike."""

    def __init__(self, direction: str, in_ch: int, out_ch: int | None = None, *, with_conv: bool = True,
                 fir: tuple[float, ...] | None = None):
        super().__init__()
        self.direction = check_choice(direction, ("up", "down"), "direction")
        out_ch = out_ch or in_ch
        if not with_conv and out_ch != in_ch:
            raise ValueError("out_ch must equal in_ch when with_conv=False")
        self.register_buffer("kernel", fir_kernel(fir) if fir else None, persistent=False)
        self.conv = conv(in_ch, out_ch) if with_conv else None

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        if self.direction == "down" and self.conv is not None and self.kernel is None:
            return _strided_conv(self.conv, x)
        x = resample2x(x, self.direction, self.kernel)
        return self.conv(x) if self.conv is not None else x


def _strided_conv(layer: nn.Conv2d, x: Tensor) -> Tensor:
    """A 3x3 convolution with stride 2 and asymmetric (0, 1) padding, DDPM's learned down-sampling."""
    return F.conv2d(F.pad(x, (0, 1, 0, 1)), layer.weight, layer.bias, stride=2)


class ResBlock(nn.Module):
    """Residual block with time conditioning (see the module docstring for the equation)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, temb_dim: int | None = None,
                 dropout: float = 0.0, skip_rescale: bool = True, resample: str | None = None,
                 fir: tuple[float, ...] | None = None):
        super().__init__()
        out_ch = out_ch or in_ch
        if resample is not None:
            check_choice(resample, ("up", "down"), "resample")
        self.resample = resample
        self.register_buffer("kernel", fir_kernel(fir) if fir else None, persistent=False)
        self.norm0 = group_norm(in_ch)
        self.conv0 = conv(in_ch, out_ch)
        self.dense = nn.Linear(temb_dim, out_ch) if temb_dim else None
        if self.dense is not None:
            nn.init.zeros_(self.dense.bias)
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv(out_ch, out_ch, zero=True)
        self.skip = conv(in_ch, out_ch, 1) if (in_ch != out_ch or resample) else None
        self.scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv0(resample2x(F.silu(self.norm0(x)), self.resample, self.kernel))
        if self.dense is not None:
            h = h + self.dense(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        x = resample2x(x, self.resample, self.kernel)
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) * self.scale


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H W`` pixels, ``y = (x + W_o A(GN(x))) / sqrt(2)``
    with ``A = softmax(q k^T / sqrt(C)) v``; the output projection starts at zero."""

    def __init__(self, channels: int, *, skip_rescale: bool = True):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).unsqueeze(1).chunk(3, dim=-1)  # each (B, 1, HW, C)
        a = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        a = self.out(a).transpose(1, 2).reshape(b, c, h, w)
        return (x + a) * self.scale
