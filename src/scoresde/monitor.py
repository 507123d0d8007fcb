"""Sample quality and likelihood of a model while it trains: FID and bits/dim at a fixed budget.

:class:`TrainingMonitor` is a callable ``monitor(model, step) -> {"fid": ..., "bpd" | "nll": ...}``
for the Trainer's evaluation period (``training.eval_every``): the FID of ``n`` samples drawn from
seeds ``0 .. n-1`` (the same seeds at every evaluation, so the curve follows the model and not the
draw; :mod:`scoresde.generate`'s per-seed generators) against reference statistics
(:class:`~scoresde.metrics.InceptionStats`, ``scoresde fid-stats``), and the likelihood of a fixed
held-out batch: bits/dim with uniform dequantization for quantised data (fixed dequantization
noise), nats/dim for continuous data (``levels=None``). Nothing is written to disk; the caller
logs the returned figures.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .data import dequantize
from .generate import seed_generators
from .likelihood import bits_per_dim, log_likelihood
from .metrics import FeatureStats, InceptionNet, InceptionStats
from .sampling import sample
from .score import score_fn_from_model


class TrainingMonitor:
    """FID of ``n`` per-seed samples and the likelihood of ``held_out`` for a model being trained.

    Args:
        sde, parameterization: how the network's output becomes a score
            (:func:`~scoresde.score.score_fn_from_model`).
        sample_shape: the shape of one sample.
        inception, reference: the feature network and the reference statistics (both or neither).
        n, batch: samples for FID and samples per sampler call.
        held_out: a fixed batch of data for the likelihood (None: no likelihood).
        levels: quantisation levels of the data (bits/dim) or None (continuous: nats/dim).
        data_range: the data's range (for the uint8 rounding of samples and dequantization).
        sample_options: :func:`scoresde.sample` keywords (``method``, ``steps``, options).
        likelihood_options: :func:`scoresde.likelihood.log_likelihood` keywords.
        seed: of the dequantization noise and the likelihood's probes.
    """

    def __init__(self, sde: Any, parameterization: str, sample_shape: tuple[int, ...], *,
                 inception: InceptionNet | None = None, reference: InceptionStats | None = None,
                 n: int = 1000, batch: int = 250, held_out: Tensor | None = None, levels: int | None = 256,
                 data_range: tuple[float, float] = (-1.0, 1.0), sample_options: dict | None = None,
                 likelihood_options: dict | None = None, seed: int = 0) -> None:
        if (inception is None) != (reference is None):
            raise ValueError("FID during training needs both an Inception network and reference statistics")
        if inception is None and held_out is None:
            raise ValueError("nothing to monitor: give an Inception network with reference statistics, or held_out data")
        if n < 2 or batch < 1:
            raise ValueError(f"n must be >= 2 and batch >= 1, got n={n}, batch={batch}")
        self.sde, self.parameterization, self.sample_shape = sde, parameterization, tuple(sample_shape)
        self.inception, self.reference, self.n, self.batch = inception, reference, n, batch
        self.held_out, self.levels, self.data_range, self.seed = held_out, levels, data_range, seed
        self.sample_options = dict(sample_options or {})
        self.likelihood_options = dict(likelihood_options or {})

    def fid(self, score_fn: Any, device: torch.device) -> float:
        """FID of the samples of seeds ``0 .. n-1`` against the reference statistics."""
        acc = FeatureStats()
        for start in range(0, self.n, self.batch):
            seeds = list(range(start, min(start + self.batch, self.n)))
            x, _ = sample(score_fn, self.sde, (len(seeds),) + self.sample_shape, device=device,
                          generator=seed_generators(seeds, device), **self.sample_options)
            acc.add(self.inception.features(x, self.data_range, batch_size=len(seeds)))
        mu, sigma = acc.mean_cov()
        return InceptionStats(mu, sigma, acc.n, dict(self.inception.identity)).fid(self.reference)

    def likelihood(self, score_fn: Any, device: torch.device) -> float:
        """Mean bits/dim (``levels`` given) or nats/dim (continuous) of the held-out batch."""
        g = torch.Generator(device=device).manual_seed(self.seed)
        x = self.held_out.to(device)
        if self.levels is not None:
            x = dequantize(x, self.levels, self.data_range, generator=g)
        logp, _ = log_likelihood(score_fn, self.sde, x, generator=g, **self.likelihood_options)
        if self.levels is not None:
            return float(bits_per_dim(logp, x, self.data_range, self.levels).mean())
        return float((-logp / x[0].numel()).mean())

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        """The figures of ``model`` (put in eval mode for the evaluation, then restored)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        score_fn = score_fn_from_model(model, self.sde, self.parameterization)
        out: dict[str, float] = {}
        try:
            if self.inception is not None:
                out["fid"] = self.fid(score_fn, device)
            if self.held_out is not None:
                out["bpd" if self.levels is not None else "nll"] = self.likelihood(score_fn, device)
        finally:
            model.train(was_training)
        return out
