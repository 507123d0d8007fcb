"""Building blocks of NCSN++ / DDPM++ in plain PyTorch (no compiled ops), weight-compatible with
the official score_sde code (``models/layerspp.py``, ``layers.py``, ``up_or_down_sampling.py``).

- FIR resampling (Zhang 2019; StyleGAN2's ``upfirdn2d``; the paper's ``fir_kernel = [1, 3, 3, 1]``):
  the separable kernel ``k k^T / (sum k)^2`` applied by :func:`upfirdn2d` (zero insertion,
  padding, true convolution, striding). The progressive paths fuse it with a 3x3 convolution:
  down ``conv_stride2(FIR(x))`` with one padding, up ``FIR(conv_transpose_stride2(x)) + b``.
- Residual blocks ``y = (x' + F(x, temb)) / sqrt(2)`` (skip rescale) or ``x' + F``, with
  ``F = Conv(Drop(act(GN(Conv(resample(act(GN(x)))) + Dense(act(temb))))))`` and ``x'`` the input
  through an optional resampling and 1x1 projection (the official ``Conv_2`` / ``NIN_0``). DDPM++
  blocks never resample; BigGAN blocks resample inside the block (``resample="up" | "down"``).
- Single-head self-attention over pixels (:func:`attention`); the official four 1x1 maps
  ``NIN_0..3`` are our ``qkv`` (stacked q, k, v) and ``out`` layers.
- ``init_scale``: the last layer of every residual branch starts from DDPM's variance-scaling
  initialisation with that scale (``0``: zeros, as the official ``1e-10``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._tensor import check_choice
from .dropout import Dropout


class _Float32GroupNorm(torch.autograd.Function):
    """Group normalisation of a reduced-precision channels-last ``x`` computed in float32 and
    rounded once to ``x``'s dtype, each way; it saves ``x`` itself (not its float32 copy), so
    memory is as for ``F.group_norm``. (torch's kernels expect the output gradient in the input's
    layout.)"""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float) -> Tensor:
        n, c, pixels = x.shape[0], x.shape[1], math.prod(x.shape[2:])
        y, mean, rstd = torch.ops.aten.native_group_norm(x.float(), weight, bias, n, c, pixels, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, pixels = x.shape[0], x.shape[1], math.prod(x.shape[2:])
        grad = grad.to(torch.float32, memory_format=torch.channels_last)
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(
            grad, x.float(), mean, rstd, weight, n, c, pixels, ctx.groups, list(ctx.needs_input_grad[:3]))
        return (None if gx is None else gx.to(x.dtype)), gw, gb, None, None


class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` (same parameters and state); a reduced-precision channels-last CPU
    input is normalised in float32 (:class:`_Float32GroupNorm`): torch's CPU kernel for
    channels-last bf16 is 4-6x slower than for NCHW bf16, this path 1.6-2x (forward + backward
    with the SiLU after it at the digits DDPM++'s shapes, one thread; ``benchmarks/cpu_kernels.py``)."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and x.ndim == 4 and self.affine
                and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
            return _Float32GroupNorm.apply(x, self.weight, self.bias, self.num_groups, self.eps)
        return super().forward(x)


def group_norm(channels: int, groups: int | None = None) -> GroupNorm:
    """GroupNorm with eps 1e-6 and ``groups`` groups; None: ``min(channels // 4, 32)`` (NCSN++'s
    rule; the official DDPM uses 32 everywhere)."""
    groups = max(1, min(channels // 4, 32)) if groups is None else groups
    if groups < 1 or channels % groups:
        raise ValueError(f"norm_groups must divide the channel count {channels}, got {groups}")
    return GroupNorm(groups, channels, eps=1e-6)


def scaled_init_(weight: Tensor, scale: float) -> Tensor:
    """DDPM's ``variance_scaling(scale, 'fan_avg', 'uniform')`` in place; ``scale = 0`` gives zeros."""
    if scale == 0:
        return nn.init.zeros_(weight)
    receptive = weight[0, 0].numel() if weight.ndim > 2 else 1
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


#: images of at most this many pixels take :class:`_SmallImageConv`'s weight gradient
SMALL_IMAGE_PIXELS = 16


def conv_weight_grad(x: Tensor, grad: Tensor, padding: int) -> Tensor:
    """The weight gradient of a stride-1 'same' convolution (padding ``p``) as a convolution with
    the batch as the channel axis: ``dW[o, i] = sum_n x[n, i] (x) dy[n, o]`` (a cross-correlation
    over pixels), i.e. ``dW^T = conv2d(x^T, dy^T, padding=p)`` with ``x^T`` of shape ``(I, N, H, W)``
    and ``dy^T`` of shape ``(O, N, H, W)`` as the kernel; the output ``(I, O, k, k)`` transposed."""
    return F.conv2d(x.transpose(0, 1).contiguous(), grad.transpose(0, 1).contiguous(), padding=padding).transpose(0, 1)


class _SmallImageConv(torch.autograd.Function):
    """``y = conv2d(x, w, b)`` (stride 1, 'same' padding) with the weight gradient of
    :func:`conv_weight_grad`: on CPU in bf16, oneDNN's weight-gradient kernel took 1.2-3x as long
    on images of 2 x 2 and 4 x 4 pixels at batch 128 and 8 (``benchmarks/cpu_kernels.py``); the
    input gradient is torch's."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        pad = [ctx.padding] * 2
        gx = (torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], pad, [1, 1], False, [0, 0], 1,
                                                  [True, False, False])[0] if need_x else None)
        gw = conv_weight_grad(x, grad, ctx.padding) if need_w else None
        gb = grad.sum((0, 2, 3)) if need_b else None
        return gx, gw, gb, None


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` (same parameters and state); a 3x3 stride-1 'same' convolution of a small
    channels-last image (at most :data:`SMALL_IMAGE_PIXELS` pixels) in bf16 on CPU, the input bf16
    or cast by autocast, takes :class:`_SmallImageConv` (a 1x1 one is 3-4x faster with oneDNN's
    weight gradient, ``benchmarks/cpu_kernels.py``)."""

    def forward(self, x: Tensor) -> Tensor:
        if self._small_image(x):
            dtype = torch.bfloat16
            bias = None if self.bias is None else self.bias.to(dtype)
            return _SmallImageConv.apply(x.to(dtype), self.weight.to(dtype), bias, self.padding[0])
        return super().forward(x)

    def _small_image(self, x: Tensor) -> bool:
        low = x.dtype == torch.bfloat16 or (torch.is_autocast_enabled("cpu")
                                            and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return (x.device.type == "cpu" and low and x.ndim == 4 and x.shape[2] * x.shape[3] <= SMALL_IMAGE_PIXELS
                and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)
                and self.kernel_size == (3, 3) and self.padding == (1, 1) and self.stride == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros")


def conv(in_ch: int, out_ch: int, kernel: int = 3, *, stride: int = 1, init_scale: float | None = None) -> Conv2d:
    """A 'same'-padded convolution with zero bias; ``init_scale`` (0: zeros) re-initialises its
    weight as :func:`scaled_init_`."""
    layer = Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)
    if init_scale is not None:
        scaled_init_(layer.weight, init_scale)
    nn.init.zeros_(layer.bias)
    return layer


def fir_kernel(taps: tuple[float, ...]) -> Tensor:
    """The separable 2-D FIR kernel ``k k^T / (sum k)^2`` (unit DC gain)."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """StyleGAN2's ``upfirdn2d`` on both axes: insert ``up - 1`` zeros after every pixel, pad
    ``pad[0]`` before and ``pad[1]`` after, convolve (flipped kernel) each channel with ``kernel``,
    keep every ``down``-th pixel."""
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(b, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(-1, -2).to(dtype=x.dtype, device=x.device).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def fir_downsample(x: Tensor, kernel: Tensor) -> Tensor:
    """Low-pass filter with ``kernel`` then keep every second pixel, ``(H, W) -> (H/2, W/2)``
    (official ``downsample_2d``: padding ``((K - 1) // 2, (K - 2) // 2)``)."""
    p = kernel.shape[-1] - 2
    return upfirdn2d(x, kernel, down=2, pad=((p + 1) // 2, p // 2))


def fir_upsample(x: Tensor, kernel: Tensor) -> Tensor:
    """Zero-insertion up-sampling by 2, then the FIR filter with gain 4 (DC preserved),
    ``(H, W) -> (2H, 2W)`` (official ``upsample_2d``)."""
    p = kernel.shape[-1] - 2
    return upfirdn2d(x, kernel * 4, up=2, pad=((p + 1) // 2 + 1, p // 2))


def fir_conv_downsample(x: Tensor, layer: nn.Conv2d, kernel: Tensor) -> Tensor:
    """Fused FIR blur + strided convolution (official ``conv_downsample_2d``): pad once by
    ``K - 2 + k - 1`` in total, filter, then the ``k x k`` convolution with stride 2."""
    p = kernel.shape[-1] - 2 + layer.weight.shape[-1] - 1
    x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, layer.weight, layer.bias, stride=2)


def fir_upsample_conv(x: Tensor, layer: nn.Conv2d, kernel: Tensor) -> Tensor:
    """Fused transposed convolution + FIR blur (official ``upsample_conv_2d``): the stride-2
    transposed convolution with the spatially flipped kernel, the FIR filter with gain 4, then
    the bias."""
    p = kernel.shape[-1] - 2 - (layer.weight.shape[-1] - 1)
    x = F.conv_transpose2d(x, layer.weight.flip(-1, -2).transpose(0, 1), stride=2)
    x = upfirdn2d(x, kernel * 4, pad=((p + 1) // 2 + 1, p // 2 + 1))
    return x + layer.bias[:, None, None]


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
    """Up- or down-sample by 2 (FIR or naive), with an optional 3x3 convolution ``in_ch -> out_ch``:
    FIR fused with it (:func:`fir_conv_downsample`, :func:`fir_upsample_conv`), naive
    up-sampling followed by it, naive down-sampling as DDPM's stride-2 convolution. The ``temb``
    argument is accepted and ignored so that a resampler and a resampling residual block are
    called alike."""

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
        if self.conv is None:
            return resample2x(x, self.direction, self.kernel)
        if self.kernel is not None:
            fused = fir_conv_downsample if self.direction == "down" else fir_upsample_conv
            return fused(x, self.conv, self.kernel)
        if self.direction == "down":
            return _strided_conv(self.conv, x)
        return self.conv(naive_upsample(x))


def _strided_conv(layer: nn.Conv2d, x: Tensor) -> Tensor:
    """A 3x3 convolution with stride 2 and asymmetric (0, 1) padding, DDPM's learned down-sampling."""
    return F.conv2d(F.pad(x, (0, 1, 0, 1)), layer.weight, layer.bias, stride=2)


class ResBlock(nn.Module):
    """Residual block with time conditioning (see the module docstring for the equation). The
    time projection ``dense`` is skipped when ``temb`` is None (the official unconditional
    DDPM keeps the layer but never uses it)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, *, temb_dim: int | None = None,
                 dropout: float = 0.0, skip_rescale: bool = True, resample: str | None = None,
                 fir: tuple[float, ...] | None = None, norm_groups: int | None = None,
                 init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        if resample is not None:
            check_choice(resample, ("up", "down"), "resample")
        self.resample = resample
        self.register_buffer("kernel", fir_kernel(fir) if fir else None, persistent=False)
        self.norm0 = group_norm(in_ch, norm_groups)
        self.conv0 = conv(in_ch, out_ch)
        self.dense = nn.Linear(temb_dim, out_ch) if temb_dim else None
        if self.dense is not None:
            nn.init.zeros_(self.dense.bias)
        self.norm1 = group_norm(out_ch, norm_groups)
        self.dropout = Dropout(dropout)
        self.conv1 = conv(out_ch, out_ch, init_scale=init_scale)
        self.skip = conv(in_ch, out_ch, 1) if (in_ch != out_ch or resample) else None
        self.scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv0(resample2x(F.silu(self.norm0(x)), self.resample, self.kernel))
        if self.dense is not None and temb is not None:
            h = h + self.dense(F.silu(temb))[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        x = resample2x(x, self.resample, self.kernel)
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) * self.scale


#: On CPU, attention over at most this many pixels is computed as two matrix products around a
#: softmax instead of ``F.scaled_dot_product_attention``. Forward + backward of torch's CPU flash
#: kernel on the networks' sizes (1 thread, loaded 2-core CPU, 2026-12-02): batch 128 x 16 pixels x
#: 64 channels in bf16 55 ms against 10 ms; batch 8 x 256 pixels x 256 channels 207 / 131 ms (fp32 /
#: bf16) against 122 / 62 ms; the flash backward also has no vmap batching rule (the likelihood's
#: per-sample divergences fell back to a loop). The attention matrix costs ``B L^2`` floats, which
#: bounds ``L``; above it, and on every other device, the fused kernel runs.
CPU_MATMUL_ATTENTION_MAX_PIXELS = 1024


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(C)) v`` over the last two axes ``(..., L, C)``."""
    if q.device.type == "cpu" and q.shape[-2] <= CPU_MATMUL_ATTENTION_MAX_PIXELS:
        weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2), dim=-1)
        return weights @ v
    return F.scaled_dot_product_attention(q, k, v)


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H W`` pixels, ``y = (x + W_o A(GN(x))) / sqrt(2)``
    with ``A = softmax(q k^T / sqrt(C)) v``; the output projection starts at ``init_scale``."""

    def __init__(self, channels: int, *, skip_rescale: bool = True, norm_groups: int | None = None,
                 init_scale: float = 0.0):
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.qkv.bias)
        scaled_init_(self.out.weight, init_scale)
        nn.init.zeros_(self.out.bias)
        self.scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).unsqueeze(1).chunk(3, dim=-1)  # each (B, 1, HW, C)
        a = attention(q, k, v).squeeze(1)
        a = self.out(a).transpose(1, 2).reshape(b, c, h, w)
        return (x + a) * self.scale
