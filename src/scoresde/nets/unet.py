"""NCSN++ and DDPM++ U-Nets (Song et al. 2021, Sec. 4.2 and App. H) in plain PyTorch.

Both architectures are one class, :class:`NCSNpp`, differing in configuration: DDPM++ uses
BigGAN residual blocks, skip rescaling and a positional time embedding; NCSN++ adds FIR
resampling, a Gaussian-Fourier embedding and a progressive (residual) input path. With
``resblock="ddpm", skip_rescale=False, norm_groups=32`` it is the DDPM U-Net of Ho et al.
(2020). Every option of the official ``models/ncsnpp.py`` and ``models/ddpm.py`` has its
counterpart here and the official tensors map one to one onto ours
(:mod:`scoresde.interop.score_sde`).

The network is called ``model(x, t, labels=None)`` with ``x`` of shape ``(B, C, H, W)`` (``H``
and ``W`` multiples of ``2^(levels - 1)``), continuous time ``t`` of shape ``(B,)`` in
``[0, T]`` and optional class labels ``(B,)``; it returns a tensor shaped like ``x``. The paper's
"output divided by sigma" for VE models is exactly the ``eps`` parameterization
(``score = -eps / sigma``) applied outside the network by ``scoresde.Parameterization``, so the
network itself never knows the SDE.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._tensor import as_batch_time, check_choice
from .embeddings import TimeEmbedding
from .layers import AttnBlock, Resample, ResBlock, conv, fir_kernel, group_norm, resample2x, scaled_init_

RESBLOCKS = ("ddpm", "biggan")
INITS = ("pytorch", "ddpm")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_OUTPUT = ("none", "output_skip", "residual")


class _BlockFactory:
    """Builds residual, attention and resampling blocks with the shared options of one U-Net."""

    def __init__(self, *, temb_dim: int, dropout: float, resblock: str, fir: tuple[float, ...] | None,
                 skip_rescale: bool, resamp_with_conv: bool, norm_groups: int | None, init_scale: float):
        self.resblock = resblock
        self.temb_dim, self.dropout, self.fir = temb_dim, dropout, fir
        self.skip_rescale, self.resamp_with_conv = skip_rescale, resamp_with_conv
        self.norm_groups, self.init_scale = norm_groups, init_scale

    def res(self, in_ch: int, out_ch: int | None = None, resample: str | None = None) -> ResBlock:
        return ResBlock(in_ch, out_ch, temb_dim=self.temb_dim, dropout=self.dropout,
                        skip_rescale=self.skip_rescale, resample=resample, fir=self.fir,
                        norm_groups=self.norm_groups, init_scale=self.init_scale)

    def attn(self, ch: int) -> AttnBlock:
        return AttnBlock(ch, skip_rescale=self.skip_rescale, norm_groups=self.norm_groups,
                         init_scale=self.init_scale)

    def norm(self, ch: int) -> nn.GroupNorm:
        return group_norm(ch, self.norm_groups)

    def resampler(self, direction: str, ch: int) -> nn.Module:
        """BigGAN: a resampling residual block; DDPM: a (conv) resampling layer."""
        if self.resblock == "biggan":
            return self.res(ch, ch, resample=direction)
        return Resample(direction, ch, with_conv=self.resamp_with_conv, fir=self.fir)


class _InputSkip(nn.Module):
    """Progressive input ``input_skip``: the image pyramid is down-sampled without weights and
    added to the features through a 1x1 convolution, ``h <- h + W x_l``."""

    def __init__(self, image_ch: int, ch: int, fir: tuple[float, ...] | None):
        super().__init__()
        self.register_buffer("kernel", fir_kernel(fir) if fir else None, persistent=False)
        self.proj = conv(image_ch, ch, 1)

    def forward(self, pyr: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        pyr = resample2x(pyr, "down", self.kernel)
        return pyr, h + self.proj(pyr)


class _InputResidual(nn.Module):
    """Progressive input ``residual``: ``p_l = (Down(p_{l-1}) + h) / sqrt(2)`` replaces ``h``."""

    def __init__(self, in_ch: int, ch: int, fir: tuple[float, ...] | None, skip_rescale: bool):
        super().__init__()
        self.down = Resample("down", in_ch, ch, with_conv=True, fir=fir)
        self.scale = 1 / math.sqrt(2) if skip_rescale else 1.0

    def forward(self, pyr: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        pyr = (self.down(pyr) + h) * self.scale
        return pyr, pyr


class _OutputSkip(nn.Module):
    """Progressive output ``output_skip``: ``p_l = Up(p_{l+1}) + Conv(act(GN(h)))`` (image channels)."""

    def __init__(self, ch: int, out_ch: int, factory: _BlockFactory):
        super().__init__()
        self.register_buffer("kernel", fir_kernel(factory.fir) if factory.fir else None, persistent=False)
        self.norm = factory.norm(ch)
        self.conv = conv(ch, out_ch, init_scale=factory.init_scale)

    def forward(self, pyr: Tensor | None, h: Tensor) -> tuple[Tensor, Tensor]:
        out = self.conv(F.silu(self.norm(h)))
        return (out if pyr is None else resample2x(pyr, "up", self.kernel) + out), h


class _OutputResidual(nn.Module):
    """Progressive output ``residual``: at the coarsest level ``p = Conv(act(GN(h)))``, then
    ``p_l = (Up(p_{l+1}) + h) / sqrt(2)`` replaces ``h``."""

    def __init__(self, pyr_ch: int | None, ch: int, factory: _BlockFactory):
        super().__init__()
        self.first = pyr_ch is None
        if self.first:
            self.norm, self.conv = factory.norm(ch), conv(ch, ch)
        else:
            self.up = Resample("up", pyr_ch, ch, with_conv=True, fir=factory.fir)
        self.scale = 1 / math.sqrt(2) if factory.skip_rescale else 1.0

    def forward(self, pyr: Tensor | None, h: Tensor) -> tuple[Tensor, Tensor]:
        if self.first:
            return self.conv(F.silu(self.norm(h))), h
        pyr = (self.up(pyr) + h) * self.scale
        return pyr, pyr


class _EncoderLevel(nn.Module):
    """``num_res_blocks`` residual blocks (each followed by attention at attention levels), then
    an optional down-sampling and progressive-input step. Every output is kept as a skip."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], down: nn.Module | None,
                 pyramid: nn.Module | None):
        super().__init__()
        self.blocks, self.attns = nn.ModuleList(blocks), nn.ModuleList(attns)
        self.down, self.pyramid = down, pyramid

    def forward(self, hs: list[Tensor], pyr: Tensor, temb: Tensor | None) -> Tensor:
        for i, block in enumerate(self.blocks):
            h = block(hs[-1], temb)
            hs.append(self.attns[i](h) if self.attns else h)
        if self.down is not None:
            h = self.down(hs[-1], temb)
            if self.pyramid is not None:
                pyr, h = self.pyramid(pyr, h)
            hs.append(h)
        return pyr


class _DecoderLevel(nn.Module):
    """``num_res_blocks + 1`` residual blocks each consuming one skip, optional attention,
    the progressive-output step and an optional up-sampling."""

    def __init__(self, blocks: list[nn.Module], attn: nn.Module | None, pyramid: nn.Module | None,
                 up: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attn, self.pyramid, self.up = attn, pyramid, up

    def forward(self, h: Tensor, hs: list[Tensor], pyr: Tensor | None, temb: Tensor | None):
        for block in self.blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), temb)
        if self.attn is not None:
            h = self.attn(h)
        if self.pyramid is not None:
            pyr, h = self.pyramid(pyr, h)
        if self.up is not None:
            h = self.up(h, temb)
        return h, pyr


class UNetEncoder(nn.Module):
    """The down-sampling half of NCSN++ / DDPM++: input convolution and encoder levels.

    ``forward(x, temb)`` returns the list of skip activations; the last one is the coarsest
    feature map with ``out_channels`` channels. Shared by :class:`NCSNpp` and the
    noise-conditional classifier.
    """

    def __init__(self, factory: _BlockFactory, *, in_channels: int, nf: int, ch_mult: tuple[int, ...],
                 num_res_blocks: int, attn_levels: set[int], progressive_input: str):
        super().__init__()
        self.conv_in = conv(in_channels, nf)
        self.skip_channels = [nf]
        ch, pyr_ch, levels = nf, in_channels, []
        for i, mult in enumerate(ch_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(factory.res(ch, nf * mult))
                ch = nf * mult
                if i in attn_levels:
                    attns.append(factory.attn(ch))
                self.skip_channels.append(ch)
            down = pyramid = None
            if i < len(ch_mult) - 1:
                down = factory.resampler("down", ch)
                if progressive_input == "input_skip":
                    pyramid = _InputSkip(in_channels, ch, factory.fir)
                elif progressive_input == "residual":
                    pyramid = _InputResidual(pyr_ch, ch, factory.fir, factory.skip_rescale)
                    pyr_ch = ch
                self.skip_channels.append(ch)
            levels.append(_EncoderLevel(blocks, attns, down, pyramid))
        self.levels = nn.ModuleList(levels)
        self.out_channels = ch

    def forward(self, x: Tensor, temb: Tensor | None) -> list[Tensor]:
        hs, pyr = [self.conv_in(x)], x
        for level in self.levels:
            pyr = level(hs, pyr, temb)
        return hs


def ddpm_init_(net: nn.Module, nin_shortcuts: bool) -> None:
    """The official initialisation (``layers.default_init``: variance scaling, ``fan_avg``,
    uniform) of every convolution and Linear layer of ``net`` with scale 1 and zero biases,
    except: attention ``q``, ``k``, ``v`` and DDPM blocks' 1x1 shortcuts (the official ``NIN``
    layers) with scale 0.1, and the last layer of each residual branch and of the output, which
    keep their ``init_scale`` initialisation."""
    last = {id(m.conv1) for m in net.modules() if isinstance(m, ResBlock)}
    last |= {id(m.out) for m in net.modules() if isinstance(m, AttnBlock)}
    last |= {id(m.conv) for m in net.modules() if isinstance(m, _OutputSkip)}
    last |= {id(getattr(net, "conv_out", None))}
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in last:
            scaled_init_(m.weight, 1.0)
            nn.init.zeros_(m.bias)
    for m in net.modules():  # after the pass above, which visits these layers after their blocks
        if isinstance(m, AttnBlock):
            for w in m.qkv.weight.data.chunk(3):
                scaled_init_(w, 0.1)
        if isinstance(m, ResBlock) and nin_shortcuts and m.skip is not None and m.resample is None:
            scaled_init_(m.skip.weight, 0.1)


def check_image(x: Tensor, in_channels: int, levels: int) -> None:
    """Raise ``ValueError`` naming ``x`` unless it is ``(B, in_channels, H, W)`` with ``H, W``
    multiples of ``2^(levels - 1)``."""
    m = 2 ** (levels - 1)
    if x.ndim != 4 or x.shape[1] != in_channels or x.shape[2] % m or x.shape[3] % m:
        raise ValueError(
            f"x must have shape (B, {in_channels}, H, W) with H, W multiples of {m}, got {tuple(x.shape)}"
        )


@dataclass(frozen=True)
class UNetConfig:
    """Options of NCSN++ / DDPM++ (and of the encoder of :class:`UNetClassifier`).

    Attributes:
        in_channels: image channels (the U-Net output has the same number).
        image_size: the resolution ``attn_resolutions`` refer to; at run time any ``H, W`` that
            are multiples of ``2^(len(ch_mult) - 1)`` are accepted (attention stays at the
            same levels).
        nf: base channel count; level ``i`` has ``nf * ch_mult[i]`` channels.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: resolutions with self-attention.
        dropout: dropout rate inside residual blocks.
        resblock: ``"ddpm"`` (resampling by separate layers) or ``"biggan"`` (inside blocks).
        embedding, time_scale, freq_shift, fourier_scale: see :mod:`scoresde.nets.embeddings`
            (``freq_shift=1``: the official sinusoidal spacing).
        progressive_input: ``"none" | "input_skip" | "residual"`` image pyramid into the encoder.
        progressive: output path ``"none" | "output_skip" | "residual"``.
        skip_rescale: divide every residual sum by ``sqrt(2)``.
        fir, fir_kernel: FIR resampling with these taps; otherwise nearest / average pooling.
        resamp_with_conv: DDPM blocks only, resampling layers carry a 3x3 convolution.
        num_classes, null_class: class conditioning (see ``TimeEmbedding``).
        norm_groups: groups of every GroupNorm (None: ``min(channels // 4, 32)``; DDPM: 32).
        conditional: False drops the time embedding (the official unconditional DDPM; its
            blocks keep their unused time projections so that the weights still map).
        init_scale: initial scale of the last layer of every residual branch (0: zeros).
        init: ``"pytorch"`` (PyTorch's default initialisation elsewhere) or ``"ddpm"`` (the
            official ``default_init`` everywhere, see :func:`ddpm_init_`).
    """

    in_channels: int = 3
    image_size: int = 32
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resblock: str = "biggan"
    embedding: str = "positional"
    time_scale: float | None = None
    freq_shift: int = 0
    fourier_scale: float = 16.0
    progressive_input: str = "none"
    progressive: str = "none"
    skip_rescale: bool = True
    fir: bool = False
    fir_kernel: tuple[float, ...] = (1, 3, 3, 1)
    resamp_with_conv: bool = True
    num_classes: int | None = None
    null_class: bool = False
    norm_groups: int | None = None
    conditional: bool = True
    init_scale: float = 0.0
    init: str = "pytorch"

    def __post_init__(self):
        check_choice(self.resblock, RESBLOCKS, "resblock")
        check_choice(self.init, INITS, "init")
        check_choice(self.progressive_input, PROGRESSIVE_INPUT, "progressive_input")
        check_choice(self.progressive, PROGRESSIVE_OUTPUT, "progressive")
        for name in ("in_channels", "image_size", "nf", "num_res_blocks"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.ch_mult:
            raise ValueError("ch_mult must name at least one level")

    @property
    def levels(self) -> int:
        return len(self.ch_mult)

    @property
    def taps(self) -> tuple[float, ...] | None:
        return tuple(self.fir_kernel) if self.fir else None

    def time_embedding(self, with_labels: bool = True) -> TimeEmbedding:
        """``TimeEmbedding`` of width ``nf`` (positional) or ``2 nf`` (Fourier) into ``4 nf``."""
        return TimeEmbedding(2 * self.nf if self.embedding == "fourier" else self.nf, 4 * self.nf,
                             embedding=self.embedding, time_scale=self.time_scale,
                             freq_shift=self.freq_shift, fourier_scale=self.fourier_scale,
                             num_classes=self.num_classes if with_labels else None,
                             null_class=self.null_class)

    def factory(self) -> _BlockFactory:
        return _BlockFactory(temb_dim=4 * self.nf, dropout=self.dropout, resblock=self.resblock,
                             fir=self.taps, skip_rescale=self.skip_rescale,
                             resamp_with_conv=self.resamp_with_conv, norm_groups=self.norm_groups,
                             init_scale=self.init_scale)

    def attn_levels(self) -> set[int]:
        """Indices of the levels whose resolution ``image_size / 2^i`` is in ``attn_resolutions``."""
        return {i for i in range(self.levels) if self.image_size // 2**i in set(self.attn_resolutions)}

    def encoder(self, factory: _BlockFactory) -> UNetEncoder:
        return UNetEncoder(factory, in_channels=self.in_channels, nf=self.nf, ch_mult=self.ch_mult,
                           num_res_blocks=self.num_res_blocks, attn_levels=self.attn_levels(),
                           progressive_input=self.progressive_input)


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ score network ``model(x, t, labels=None) -> (B, C, H, W)``.

    Keyword arguments are the fields of :class:`UNetConfig`; ``model.config`` holds them as a
    JSON-safe dict (saved in checkpoints, enough to rebuild the network).
    """

    def __init__(self, **options: Any):
        super().__init__()
        cfg = UNetConfig(**options)
        self.config: dict[str, Any] = asdict(cfg)
        self.in_channels, self.levels = cfg.in_channels, cfg.levels
        if not cfg.conditional and cfg.num_classes is not None:
            raise ValueError("num_classes needs conditional=True (labels enter through the time embedding)")
        self.embed = cfg.time_embedding() if cfg.conditional else None
        factory = cfg.factory()
        self.encoder = cfg.encoder(factory)
        ch = self.encoder.out_channels
        self.mid = nn.ModuleList([factory.res(ch), factory.attn(ch), factory.res(ch)])
        skips, attn_levels = list(self.encoder.skip_channels), cfg.attn_levels()
        levels, pyr_ch = [], None
        for i in reversed(range(self.levels)):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(factory.res(ch + skips.pop(), cfg.nf * cfg.ch_mult[i]))
                ch = cfg.nf * cfg.ch_mult[i]
            pyramid = None
            if cfg.progressive == "output_skip":
                pyramid = _OutputSkip(ch, cfg.in_channels, factory)
            elif cfg.progressive == "residual":
                pyramid, pyr_ch = _OutputResidual(pyr_ch, ch, factory), ch
            levels.append(_DecoderLevel(blocks, factory.attn(ch) if i in attn_levels else None,
                                        pyramid, factory.resampler("up", ch) if i > 0 else None))
        self.decoder = nn.ModuleList(levels)
        self.output_skip = cfg.progressive == "output_skip"
        if not self.output_skip:
            self.norm_out = factory.norm(ch)
            self.conv_out = conv(ch, cfg.in_channels, init_scale=cfg.init_scale)
        if cfg.init == "ddpm":
            ddpm_init_(self, nin_shortcuts=cfg.resblock == "ddpm")

    @property
    def null_label(self) -> int | None:
        """The label index meaning "no class" (classifier-free guidance), or None."""
        return self.embed.null_label if self.embed is not None else None

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Tensor:
        check_image(x, self.in_channels, self.levels)
        if self.embed is None:
            if labels is not None:
                raise ValueError("labels were given but the network is unconditional (conditional=False)")
            temb = None
        else:
            temb = self.embed(as_batch_time(t, x), labels)
        hs = self.encoder(x, temb)
        h = hs[-1]
        for block in self.mid:
            h = block(h, temb)
        pyr = None
        for level in self.decoder:
            h, pyr = level(h, hs, pyr, temb)
        if self.output_skip:
            return pyr
        return self.conv_out(F.silu(self.norm_out(h)))


_DDPMPP = dict(in_channels=3, image_size=32, nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4,
               attn_resolutions=(16,), dropout=0.1, resblock="biggan", embedding="positional",
               skip_rescale=True)
# NCSN++ embeds log sigma; for the VE SDE (sigma 0.01 -> 50) that is t times log(50 / 0.01).
_NCSNPP = dict(_DDPMPP, embedding="fourier", time_scale=math.log(50 / 0.01), fourier_scale=16.0,
               fir=True, progressive_input="residual")

#: Named configurations (keyword arguments of :class:`NCSNpp`), the paper's Table 3 / App. H.
PRESETS: dict[str, dict[str, Any]] = {
    "ddpmpp_cifar10": _DDPMPP,
    "ddpmpp_deep_cifar10": dict(_DDPMPP, num_res_blocks=8),
    "ncsnpp_cifar10": _NCSNPP,
    "ncsnpp_deep_cifar10": dict(_NCSNPP, num_res_blocks=8),
    # A small DDPM++ for 8x8 scikit-learn digits (no FIR, no progressive paths; BENCHMARKS.md, training).
    "ddpmpp_digits": dict(_DDPMPP, in_channels=1, image_size=8, nf=32, ch_mult=(1, 2, 2),
                          num_res_blocks=2, attn_resolutions=(4,)),
}


def build_preset(name: str, **overrides: Any) -> NCSNpp:
    """Build the U-Net ``PRESETS[name]`` with keyword ``overrides`` (e.g. ``num_classes=10``)."""
    check_choice(name, tuple(PRESETS), "preset")
    return NCSNpp(**{**PRESETS[name], **overrides})


def ddpmpp_cifar10(**overrides: Any) -> NCSNpp:
    """DDPM++ (continuous) for 32x32 RGB: nf 128, ch_mult (1, 2, 2, 2), 4 blocks, 61.8 M parameters."""
    return build_preset("ddpmpp_cifar10", **overrides)


def ddpmpp_deep_cifar10(**overrides: Any) -> NCSNpp:
    """DDPM++ deep: as :func:`ddpmpp_cifar10` with 8 residual blocks per level."""
    return build_preset("ddpmpp_deep_cifar10", **overrides)


def ncsnpp_cifar10(**overrides: Any) -> NCSNpp:
    """NCSN++ (continuous, VE): FIR, Fourier embedding, residual input pyramid, 62.8 M parameters."""
    return build_preset("ncsnpp_cifar10", **overrides)


def ncsnpp_deep_cifar10(**overrides: Any) -> NCSNpp:
    """NCSN++ deep: as :func:`ncsnpp_cifar10` with 8 residual blocks per level."""
    return build_preset("ncsnpp_deep_cifar10", **overrides)


def ddpmpp_digits(**overrides: Any) -> NCSNpp:
    """The small DDPM++ for 8x8 one-channel digits (nf 32, ch_mult (1, 2, 2), 2 blocks, attention at 4)."""
    return build_preset("ddpmpp_digits", **overrides)
