"""Exponential moving average (EMA) of network weights.

After every optimizer step ``theta_ema <- d theta_ema + (1 - d) theta`` with
``d = decay``, or with warm-up ``d_n = min(decay, (1 + n) / (10 + n))`` at the ``n``-th update
(so early averages are not dominated by the random initialisation). Buffers are copied.
Sampling and evaluation use the averaged copy, :attr:`EMA.model`.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import Tensor, nn


class EMA:
    """An averaged copy of ``model``.

    Args:
        model: the network being trained (its parameters are copied now).
        decay: ``d`` in ``[0, 1)`` per update.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` as the ``n``-th decay.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, *, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), warmup
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if self.warmup:
            return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``theta_ema <- d theta_ema + (1 - d) theta`` for every parameter; copy buffers."""
        d = self.current_decay()
        ema_params, params = list(self.model.parameters()), list(model.parameters())
        if len(params) != len(ema_params):
            raise ValueError("model does not match the averaged model's parameters")
        params = [p.detach().to(e.dtype) for p, e in zip(params, ema_params)]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights (``model.state_dict()`` keys) as tensors; see :meth:`meta`."""
        return self.model.state_dict()

    def meta(self) -> dict[str, float | int | bool]:
        """The JSON-safe scalars of the state: decay, warm-up flag, number of updates."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}

    def load_state_dict(self, tensors: dict[str, Tensor], meta: dict | None = None) -> None:
        """Restore the averaged weights and, when given, the scalars of :meth:`meta`."""
        self.model.load_state_dict(tensors)
        if meta is not None:
            self.decay, self.warmup = float(meta["decay"]), bool(meta["warmup"])
            self.num_updates = int(meta["num_updates"])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the averaged ones."""
        model.load_state_dict(self.model.state_dict())

    @contextlib.contextmanager
    def swap(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``model`` holds the averaged weights; its own come back afterwards::

            with ema.swap(model):
                evaluate(model)
        """
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            model.load_state_dict(saved)
