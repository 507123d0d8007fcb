"""Metrics against closed forms for Gaussians, FD-digits sanity, FID/IS loading path."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor, nn

from scoresde import data, metrics


def _gauss(n, d, mean, std, seed):
    return mean + std * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_sliced_wasserstein_of_a_shift():
    # y = x + delta: W2 along theta is |theta . delta| exactly, so SW2^2 = E (theta.delta)^2 = |delta|^2 / d
    x = _gauss(500, 2, 0.0, 1.0, 0)
    delta = torch.tensor([3.0, 4.0], dtype=torch.float64)
    sw = metrics.sliced_wasserstein(x, x + delta, n_projections=4000, generator=torch.Generator().manual_seed(1))
    # (theta.delta)^2 = 25 cos^2: mean 12.5, std 25 sqrt(1/8); 4000 draws -> s.e. 0.14; 4 s.e. = 0.56
    assert abs(sw**2 - 12.5) < 0.56
    assert metrics.sliced_wasserstein(x, x, generator=torch.Generator().manual_seed(1)) == 0.0


def test_sliced_wasserstein_of_gaussians_unequal_sizes():
    # N(0, I) vs N(0, 4 I) in 3-D: every projection is N(0,1) vs N(0,4), W2 = |1 - 2| = 1
    x, y = _gauss(4000, 3, 0.0, 1.0, 2), _gauss(3000, 3, 0.0, 2.0, 3)
    sw = metrics.sliced_wasserstein(x, y, n_projections=64, generator=torch.Generator().manual_seed(4))
    # finite-sample quantile error of the std estimate is ~ 2/sqrt(2 * 3000) = 0.026 per projection; 0.08 ~ 3x
    assert abs(sw - 1.0) < 0.08
    with pytest.raises(ValueError, match="same dimension"):
        metrics.sliced_wasserstein(x, y[:, :2])


def _gauss_kernel_mean(s1: float, s2: float, delta2: float, d: int, h: float) -> float:
    """E exp(-|a - b|^2 / 2h^2) for a ~ N(m1, s1^2 I), b ~ N(m2, s2^2 I), |m1 - m2|^2 = delta2."""
    v = h**2 + s1**2 + s2**2
    return (h**2 / v) ** (d / 2) * math.exp(-delta2 / (2 * v))


def test_mmd_matches_closed_form():
    d, h = 2, 1.5
    x, y = _gauss(1500, d, 0.0, 1.0, 5), _gauss(1500, d, 1.0, 1.0, 6)  # delta2 = d
    exact = 2 * _gauss_kernel_mean(1, 1, 0, d, h) - 2 * _gauss_kernel_mean(1, 1, d, d, h)
    est = metrics.mmd2(x, y, bandwidth=h)
    # the unbiased estimator's s.e. at n = 1500 is below 0.01 for kernels bounded by 1; 0.02 is 2x that
    assert abs(est - exact) < 0.02
    same = metrics.mmd2(x, _gauss(1500, d, 0.0, 1.0, 7), bandwidth=h)
    assert abs(same) < 0.01 and est > 10 * abs(same)
    with pytest.raises(ValueError, match="bandwidth"):
        metrics.mmd2(x, y, bandwidth=-1.0)


def test_frechet_from_stats_closed_form_and_sqrtm():
    # diagonal covariances: sum (sqrt a - sqrt b)^2 + |mu1 - mu2|^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    expected = 9.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # full-rank random covariances: same value as the scipy.linalg.sqrtm formula
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = m1 @ m1.T + np.eye(5), m2 @ m2.T + np.eye(5)
    ref = np.trace(c1 + c2 - 2 * np.real(scipy.linalg.sqrtm(c1 @ c2)))
    assert metrics.frechet_from_stats(mu1[:1].repeat(5), c1, mu1[:1].repeat(5), c2) == pytest.approx(ref, rel=1e-8)


def test_frechet_distance_of_samples():
    x, y = _gauss(20000, 2, 0.0, 1.0, 8), _gauss(20000, 2, 1.0, 2.0, 9)
    # exact: |mu|^2 = 2 plus 2 (2 - 1)^2 = 2: 4; s.e. of the estimate at n = 2e4 is about 0.03
    assert metrics.frechet_distance(x, y) == pytest.approx(4.0, abs=0.12)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    # one FD-digits classifier per test session (tests/test_cli.py uses the same directory)
    return tmp_path_factory.getbasetemp() / "scoresde-cache"


@pytest.fixture(scope="module")
def classifier(cache):
    return metrics.digits_classifier(cache)


def test_fd_digits_separates_real_from_noise_and_shuffled(classifier):
    train, test = data.load_digits("train"), data.load_digits("test")
    acc = (classifier(test.x).argmax(1) == test.labels).float().mean()
    assert acc > 0.94
    g = torch.Generator().manual_seed(0)
    real = metrics.fd_digits(test.x, train.x, classifier)
    noise = metrics.fd_digits(torch.rand(360, 1, 8, 8, generator=g) * 2 - 1, train.x, classifier)
    perm = torch.randperm(64, generator=g)
    shuffled = metrics.fd_digits(test.x.flatten(1)[:, perm], train.x, classifier)
    assert noise > 20 * real and shuffled > 20 * real


def test_digits_classifier_cache_round_trip(classifier, cache):
    assert (cache / "digits_classifier.safetensors").is_file()
    again = metrics.digits_classifier(cache)
    x = data.load_digits("test").x[:10]
    assert torch.equal(metrics.digits_features(x, again), metrics.digits_features(x, classifier))


class _StandIn(nn.Module):
    """An Inception stand-in with NVIDIA's calling convention: class k of 4 is the image whose
    mean intensity is k/3 of 255; logits are -200 (mean/255 - k/3)^2."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 6)

    def forward(self, x: Tensor, return_features: bool = False, no_output_bias: bool = False) -> Tensor:
        m = x.mean(dim=(2, 3)) / 255.0
        if return_features:
            return self.proj(m)
        centers = torch.arange(4, dtype=x.dtype) / 3
        logits = -200.0 * (m.mean(1, keepdim=True) - centers) ** 2
        return torch.softmax(logits, dim=1)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "standin.pt"
    with warnings.catch_warnings():  # torch.jit.script is deprecated but is how such files are made
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_StandIn()).save(str(path))
    return metrics.InceptionNet(path)


def test_inception_score_closed_form(inception):
    # constant images at levels k/3 in [0, 1], i.e. 2 k / 3 - 1 in the model range
    levels = torch.arange(4).repeat(25).float() / 3 * 2 - 1
    x = levels[:, None, None, None].expand(100, 1, 5, 5)
    mean, _ = inception.probabilities(x).max(1)
    assert (mean > 0.99).all()
    # 4 equally frequent, near-certain classes: IS = exp(log 4) = 4 (up to the 1% leftover mass)
    score, _ = metrics.inception_score(inception, x, splits=1)
    assert score == pytest.approx(4.0, rel=0.05)
    single, _ = metrics.inception_score(inception, x[::4], splits=5)  # one class only: IS = 1
    assert single == pytest.approx(1.0, abs=1e-6)


def test_fid_with_stand_in(inception):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 6, 6, generator=g) * 2 - 1
    assert inception.features(x).shape == (64, 6)
    assert metrics.fid(inception, x, x) == pytest.approx(0.0, abs=1e-6)
    assert metrics.fid(inception, x, x * 0.5) > 1e-3


def test_inception_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        metrics.InceptionNet(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pt"):
        metrics.InceptionNet(tmp_path / "bad.pt")
