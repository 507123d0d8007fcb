"""Shared test fixtures: a seeded generator and a sliced 2-Wasserstein distance."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator seeded with 0 (tests pass randomness explicitly, never globally)."""
    return torch.Generator().manual_seed(0)


def sliced_w2(x: Tensor, y: Tensor, n_projections: int = 64, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples ``(n, d)``:
    ``sqrt(mean_theta W2^2(theta^T x, theta^T y))`` over random unit directions, the 1-D ``W2``
    computed exactly by sorting."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"x and y must be (n, d) of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(x.shape[1], n_projections, generator=gen, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = torch.sort(x.double() @ theta, dim=0).values
    py = torch.sort(y.double() @ theta, dim=0).values
    return float(((px - py) ** 2).mean().sqrt())


@pytest.fixture(name="sliced_w2")
def sliced_w2_fixture():
    """The :func:`sliced_w2` function, as a fixture."""
    return sliced_w2
