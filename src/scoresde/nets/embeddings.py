"""Time and class-label embeddings shared by every score network.

Networks receive the continuous diffusion time ``t`` of shape ``(B,)`` in ``[0, T]`` and embed
``s = time_scale * t``:

- ``"positional"``: the sinusoidal embedding of the Transformer / DDPM,
  ``e_i = sin(s w_i)``, ``e_{i + d/2} = cos(s w_i)``, ``w_i = max_period^{-i / (d/2 - shift)}``
  with ``freq_shift`` 0 (the Transformer's spacing, this library's default) or 1 (DDPM's and the
  official score_sde spacing, diffusers' ``downscale_freq_shift=1``: the lowest frequency is
  exactly ``1/max_period``; :class:`~scoresde.nets.OfficialScoreModel` uses it), whose frequencies were designed for integer step indices in ``[0, 1000]``; hence the
  documented default ``time_scale = 1000`` resolves ``t`` in ``[0, 1]``.
- ``"fourier"``: random Gaussian-Fourier features ``[sin(2 pi s W), cos(2 pi s W)]`` with fixed
  ``W ~ N(0, fourier_scale^2)``. NCSN++ embeds ``log sigma``; for the VE SDE
  ``log sigma(t) = log sigma_min + t log(sigma_max / sigma_min)`` is affine in ``t``, so features
  of ``t`` with ``time_scale = log(sigma_max / sigma_min)`` are the same features up to a phase.

The raw embedding goes through ``Linear -> SiLU -> Linear`` (the paper's ``Dense_0``,
``Dense_1``); a class-label embedding is added before that MLP.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._tensor import check_choice, check_positive

EMBEDDINGS = ("positional", "fourier")


def sinusoidal_embedding(s: Tensor, dim: int, max_period: float = 10000.0, freq_shift: int = 0) -> Tensor:
    """Sinusoidal embedding ``[sin(s w), cos(s w)]`` with ``w_i = max_period^{-i/(dim/2 - freq_shift)}``,
    ``i = 0 .. dim/2 - 1`` (``freq_shift=1``: the official ``get_timestep_embedding``).

    ``s`` has shape ``(B,)``; the result has shape ``(B, dim)`` (``dim`` even, at least 4).
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"dim must be even and >= 4, got {dim}")
    if freq_shift not in (0, 1):
        raise ValueError(f"freq_shift must be 0 or 1, got {freq_shift}")
    half = dim // 2
    # The official operation order, so that imported networks agree to float32 rounding.
    freqs = torch.exp(torch.arange(half, device=s.device, dtype=torch.float32)
                      * -(math.log(max_period) / (half - freq_shift)))
    args = s.float()[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=1)


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features ``[sin(2 pi s W), cos(2 pi s W)]``, ``W ~ N(0, scale^2)`` fixed.

    ``W`` (``dim / 2`` frequencies) is a buffer: saved with the model, never trained.
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}")
        check_positive(scale, "fourier_scale")
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, s: Tensor) -> Tensor:
        args = s.float()[:, None] * self.W[None, :] * 2 * math.pi  # the official operation order
        return torch.cat([args.sin(), args.cos()], dim=1)


class TimeEmbedding(nn.Module):
    """Embed ``(t, labels)`` into a vector of size ``out_dim`` for the residual blocks.

    ``temb = Dense_1(SiLU(Dense_0(e(time_scale * t) + E[label])))`` where ``e`` is the positional
    (frequency spacing ``freq_shift``) or Gaussian-Fourier embedding of width ``dim`` and ``E`` a
    learned class table. With
    ``null_class=True`` the table has one extra row, the null label ``num_classes``, used when
    ``labels is None`` (classifier-free guidance trains it by label dropout).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int,
        *,
        embedding: str = "positional",
        time_scale: float | None = None,
        freq_shift: int = 0,
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
        null_class: bool = False,
    ):
        super().__init__()
        check_choice(embedding, EMBEDDINGS, "embedding")
        self.embedding = embedding
        self.dim, self.freq_shift = dim, freq_shift
        default_scale = 1000.0 if embedding == "positional" else 1.0
        self.time_scale = check_positive(default_scale if time_scale is None else time_scale, "time_scale")
        self.fourier = GaussianFourierEmbedding(dim, fourier_scale) if embedding == "fourier" else None
        self.num_classes = num_classes
        self.null_label = num_classes if (num_classes and null_class) else None
        if num_classes is not None:
            if num_classes < 1:
                raise ValueError(f"num_classes must be >= 1, got {num_classes}")
            self.label_embed = nn.Embedding(num_classes + int(null_class), dim)
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def raw(self, t: Tensor) -> Tensor:
        """The un-projected embedding ``e(time_scale * t)`` of shape ``(B, dim)``."""
        s = t * self.time_scale
        if self.fourier is not None:
            return self.fourier(s)
        return sinusoidal_embedding(s, self.dim, freq_shift=self.freq_shift)

    def forward(self, t: Tensor, labels: Tensor | None = None) -> Tensor:
        e = self.raw(t)
        if self.num_classes is not None:
            e = e + self.label_embed(self._labels(labels, t))
        elif labels is not None:
            raise ValueError("labels were given but the network has no class embedding (num_classes=None)")
        return self.mlp(e.to(self.mlp[0].weight.dtype))

    def _labels(self, labels: Tensor | None, t: Tensor) -> Tensor:
        if labels is None:
            if self.null_label is None:
                raise ValueError("labels is None but the network is class-conditional without a null label")
            return torch.full(t.shape, self.null_label, dtype=torch.long, device=t.device)
        if labels.shape != t.shape:
            raise ValueError(f"labels must have shape {tuple(t.shape)}, got {tuple(labels.shape)}")
        return labels.long()
