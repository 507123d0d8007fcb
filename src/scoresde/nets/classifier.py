"""Noise-conditional classifiers ``p_t(y | x_t)`` for classifier guidance.

``classifier(x, t) -> logits (B, num_classes)``: the time-conditioned encoder half of the
NCSN++ / DDPM++ U-Net (images) or the residual MLP trunk (vectors), followed by global
average pooling and a linear head. The gradient ``grad_x log softmax(logits)[y]`` is the
guidance term of Song et al. (2021), Eq. (14).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .._tensor import as_batch_time
from .layers import group_norm
from .mlp import MLPTrunk
from .unet import UNetConfig, check_image


def _check_classes(num_classes: int) -> int:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return num_classes


class UNetClassifier(nn.Module):
    """Encoder of :class:`~scoresde.nets.unet.NCSNpp` + ``GN -> SiLU -> mean pool -> Linear``.

    Keyword arguments are the encoder fields of :class:`~scoresde.nets.unet.UNetConfig`
    (``progressive`` and class conditioning do not apply).
    """

    def __init__(self, num_classes: int, **options: Any):
        super().__init__()
        for name in ("progressive", "num_classes", "null_class"):
            if name in options:
                raise ValueError(f"{name} does not apply to a classifier")
        cfg = UNetConfig(**options)
        self.config: dict[str, Any] = {"num_classes": num_classes, **options}
        self.in_channels, self.levels = cfg.in_channels, cfg.levels
        self.embed = cfg.time_embedding(with_labels=False)
        self.encoder = cfg.encoder(cfg.factory())
        ch = self.encoder.out_channels
        self.norm = group_norm(ch, cfg.norm_groups)
        self.head = nn.Linear(ch, _check_classes(num_classes))

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        check_image(x, self.in_channels, self.levels)
        h = self.encoder(x, self.embed(as_batch_time(t, x)))[-1]
        return self.head(F.silu(self.norm(h)).mean(dim=(2, 3)))


class MLPClassifier(nn.Module):
    """Residual MLP trunk on ``(B, d)`` with a linear head; options are those of ``MLPTrunk``."""

    def __init__(self, dim: int, num_classes: int, **options: Any):
        super().__init__()
        if "num_classes" in options or "null_class" in options:
            raise ValueError("class conditioning does not apply to a classifier")
        self.config: dict[str, Any] = {"dim": dim, "num_classes": num_classes, **options}
        self.trunk = MLPTrunk(dim, **options)
        self.head = nn.Linear(self.trunk.inp.out_features, _check_classes(num_classes))

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        return self.head(self.trunk(x, t))
