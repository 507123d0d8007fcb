"""A residual MLP score network for vector data ``(B, d)``.

``h_0 = W_in x``; each block ``h <- h + W_2 Drop(act(W_1 act(LN(h)) + D temb))``; with the
features ``phi = act(LN(h))`` the output is ``W_out phi + (W_gain phi) * x`` (both heads
zero-initialised), with ``temb`` the time (and label) embedding of
:class:`~scoresde.nets.embeddings.TimeEmbedding`.  The gated input path lets the output grow
linearly with ``x`` where the normalised features saturate: far in the tails, as for prior draws,
the noise prediction is ``eps ~ c(t) x``, which a bounded head alone cannot follow.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .._tensor import as_batch_time
from .dropout import Dropout
from .embeddings import TimeEmbedding


class MLPBlock(nn.Module):
    """Pre-norm residual block ``h + W_2 Drop(act(W_1 act(LN(h)) + D act(temb)))``."""

    def __init__(self, width: int, temb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.dense = nn.Linear(temb_dim, width)
        self.dropout = Dropout(dropout)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        z = self.fc1(F.silu(self.norm(h))) + self.dense(F.silu(temb))
        return h + self.fc2(self.dropout(F.silu(z)))


class MLPTrunk(nn.Module):
    """Input projection, time embedding and residual blocks; ``forward`` returns the features
    ``act(LN(h))`` of width ``width`` (shared by :class:`MLP` and the vector classifier)."""

    def __init__(self, dim: int, *, width: int = 256, depth: int = 3, emb_dim: int = 64,
                 embedding: str = "positional", time_scale: float | None = None,
                 fourier_scale: float = 16.0, num_classes: int | None = None, null_class: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        for name, v in (("dim", dim), ("width", width), ("depth", depth), ("emb_dim", emb_dim)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.dim = dim
        self.embed = TimeEmbedding(emb_dim, width, embedding=embedding, time_scale=time_scale,
                                   fourier_scale=fourier_scale, num_classes=num_classes, null_class=null_class)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(MLPBlock(width, width, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        temb = self.embed(as_batch_time(t, x), labels)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, temb)
        return F.silu(self.norm(h))


class MLP(nn.Module):
    """Score network ``model(x, t, labels=None) -> (B, d)`` for vectors ``x`` of shape ``(B, d)``.

    Keyword arguments are those of :class:`MLPTrunk`; ``model.config`` records them.
    """

    def __init__(self, dim: int, **options: Any):
        super().__init__()
        self.config: dict[str, Any] = {"dim": dim, **options}
        self.trunk = MLPTrunk(dim, **options)
        width = self.trunk.inp.out_features
        self.out = nn.Linear(width, dim)
        self.gain = nn.Linear(width, dim)
        for layer in (self.out, self.gain):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def null_label(self) -> int | None:
        """The label index meaning "no class" (classifier-free guidance), or None."""
        return self.trunk.embed.null_label

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Tensor:
        features = self.trunk(x, t, labels)
        return self.out(features) + self.gain(features) * x
