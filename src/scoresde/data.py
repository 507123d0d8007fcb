"""Datasets as tensors, and a seeded, resumable batch iterator.

Every loader returns an :class:`ArrayDataset`: ``x`` a float tensor in the model's data range
(``[-1, 1]`` when ``centered``, else ``[0, 1]``) and optional integer ``labels``.

Quantised data with ``levels`` grey levels ``k = 0 .. levels - 1`` is scaled as
``v = k / (levels - 1)`` and, when centered, ``x = 2 v - 1``. For scikit-learn's digits
(``levels = 17``) this is the ``2 k / 16 - 1`` of the official recipe; for 8-bit images
(``levels = 256``) it is the paper's ``2 k / 255 - 1``.

Sources:

- toy 2-D sets drawn from a ``torch.Generator`` (:func:`toy_2d`, names in :data:`TOY_SETS`);
- scikit-learn's 8x8 digits (ships with scikit-learn, works offline) with the split
  ``train_test_split(test_size=0.2, random_state=0, stratify=labels)``: 1437 train / 360 test;
- a folder of PNG/JPEG images (Pillow; resize the short side, center-crop; RGB or grayscale;
  class labels from sub-folder names);
- ``.npz`` arrays;
- the CIFAR-10 "python version" directory (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).
  Those files are pickles; they are read with a restricted unpickler that can only rebuild
  dicts, lists, bytes and NumPy arrays, so a tampered file cannot run code. Never point it at
  files you do not trust anyway.
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from scoresde._tensor import check_choice

SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclass
class ArrayDataset:
    """In-memory dataset: ``x`` of shape ``(N, ...)``, optional ``labels`` of shape ``(N,)`` and
    ``levels``: the number of quantisation levels the values were scaled from (17 for digits, 256
    for 8-bit images), or None for continuous data (likelihoods are then densities in nats/dim,
    without dequantization)."""

    x: Tensor
    labels: Tensor | None = None
    levels: int | None = None

    def __post_init__(self) -> None:
        if self.x.ndim < 2 or self.x.shape[0] == 0:
            raise ValueError(f"x must have shape (N, ...) with N > 0, got {tuple(self.x.shape)}")
        if self.labels is not None and self.labels.shape != (self.x.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.x.shape[0]},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample, ``x.shape[1:]``."""
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int | None:
        """``max(label) + 1`` when labelled, else ``None``."""
        return None if self.labels is None else int(self.labels.max()) + 1


# --------------------------------------------------------------------------- scaling


def scale_levels(k: Tensor | np.ndarray, levels: int, centered: bool = True) -> Tensor:
    """Map integer levels ``k in {0, .., levels-1}`` to ``v = k/(levels-1)`` in [0, 1], or
    ``2 v - 1`` in [-1, 1] when ``centered``. Returns float32."""
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    v = torch.as_tensor(np.asarray(k), dtype=torch.float32) / (levels - 1)
    return 2.0 * v - 1.0 if centered else v


def data_range(centered: bool) -> tuple[float, float]:
    """The model's data range: ``(-1, 1)`` when centered, else ``(0, 1)``."""
    return (-1.0, 1.0) if centered else (0.0, 1.0)


def _checked_range(data_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = data_range
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range}")
    return lo, hi


def dequantize(
    x: Tensor,
    levels: int,
    data_range: tuple[float, float] = (-1.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform dequantization for likelihoods.

    ``x`` holds quantised values ``lo + (hi - lo) k/(levels-1)``; the level ``k`` is recovered
    and replaced by ``v = (k + u)/levels`` with ``u ~ U[0, 1)``, returned as ``lo + (hi - lo) v``.
    The density of ``v`` on the cell ``[k/levels, (k+1)/levels)`` lower-bounds the discrete
    probability of ``k`` (the paper's bits/dim convention).
    """
    lo, hi = _checked_range(data_range)
    k = torch.round((x - lo) / (hi - lo) * (levels - 1)).clamp_(0, levels - 1)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return lo + (hi - lo) * (k + u) / levels


def quantize(x: Tensor, levels: int, data_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """The inverse of :func:`dequantize`: each value goes to the level ``k = floor(levels v)`` of
    the cell ``[k/levels, (k+1)/levels)`` holding ``v = (x - lo)/(hi - lo)`` (clamped to
    ``0 .. levels-1``), returned on the data's lattice ``lo + (hi - lo) k/(levels-1)``. Samples of a
    model trained on dequantized data (``BatchIterator(dequantize=...)``) go back to the data's
    values this way."""
    lo, hi = _checked_range(data_range)
    k = torch.floor((x - lo) / (hi - lo) * levels).clamp_(0, levels - 1)
    return lo + (hi - lo) * k / (levels - 1)


def random_hflip(x: Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> Tensor:
    """Flip each image ``(B, ..., W)`` along its last (width) axis with probability ``p``."""
    if x.ndim < 3:
        raise ValueError(f"random_hflip needs images (B, ..., H, W), got shape {tuple(x.shape)}")
    flip = torch.rand(x.shape[0], generator=generator) < p
    flip = flip.to(x.device).reshape((-1,) + (1,) * (x.ndim - 1))
    return torch.where(flip, x.flip(-1), x)


# --------------------------------------------------------------------------- toy 2-D sets


def _swiss_roll(n: int, g: torch.Generator) -> Tensor:
    # angle t in [1.5 pi, 4.5 pi]; (t cos t, t sin t) / 5 lies within about [-3, 3]^2
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    return torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 5.0


def _two_moons(n: int, g: torch.Generator) -> Tensor:
    # upper arc (cos a, sin a), lower arc (1 - cos a, 1/2 - sin a), a ~ U[0, pi], centred
    a = math.pi * torch.rand(n, generator=g)
    lower = torch.rand(n, generator=g) < 0.5
    xs = torch.where(lower, 1 - torch.cos(a), torch.cos(a)) - 0.5
    ys = torch.where(lower, 0.5 - torch.sin(a), torch.sin(a)) - 0.25
    return torch.stack([xs, ys], dim=1) * 2.0


def _eight_gaussians(n: int, g: torch.Generator) -> Tensor:
    # 8 equal components on the circle of radius 2, std 0.1 (noise added in toy_2d)
    k = torch.randint(0, 8, (n,), generator=g).float()
    angle = 2 * math.pi * k / 8
    return 2.0 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


def _checkerboard(n: int, g: torch.Generator) -> Tensor:
    # uniform on the black squares of a 4x4 board over [-2, 2]^2
    x = 4 * torch.rand(n, generator=g) - 2
    y = torch.rand(n, generator=g) + 2 * torch.randint(0, 2, (n,), generator=g) - 2
    y = y + (torch.floor(x) % 2)
    return torch.stack([x, y], dim=1)


def _rings(n: int, g: torch.Generator) -> Tensor:
    # four concentric circles of radii 0.5, 1, 1.5, 2, each point picked uniformly
    r = 0.5 * torch.randint(1, 5, (n,), generator=g).float()
    angle = 2 * math.pi * torch.rand(n, generator=g)
    return torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)


TOY_SETS: dict[str, tuple[Callable[[int, torch.Generator], Tensor], float]] = {
    "swiss-roll": (_swiss_roll, 0.05),
    "two-moons": (_two_moons, 0.05),
    "8gaussians": (_eight_gaussians, 0.1),
    "checkerboard": (_checkerboard, 0.0),
    "rings": (_rings, 0.05),
}
"""Name -> (generator of noiseless points, std of the added isotropic Gaussian noise)."""


def toy_2d(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` points ``(n, 2)`` of the toy set ``name`` (see :data:`TOY_SETS`)."""
    check_choice(name, tuple(TOY_SETS), "toy set")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    make, noise = TOY_SETS[name]
    x = make(n, g)
    return x + noise * torch.randn(x.shape, generator=g) if noise > 0 else x


def load_toy(name: str, split: str = "train", n: int = 10_000, seed: int = 0) -> ArrayDataset:
    """A fixed draw of ``n`` toy points; the ``train`` and ``test`` splits use different seeds."""
    check_choice(split, SPLITS, "split")
    offset = {"train": 0, "test": 1, "all": 2}[split]
    g = torch.Generator().manual_seed(3 * seed + offset)
    return ArrayDataset(toy_2d(name, n, generator=g))


# --------------------------------------------------------------------------- digits


def load_digits(split: str = "train", centered: bool = True) -> ArrayDataset:
    """scikit-learn's 8x8 digits as ``(N, 1, 8, 8)`` float tensors with labels.

    Split: ``train_test_split(test_size=0.2, random_state=0, stratify=labels)`` of the 1797
    images: 1437 train, 360 test (``"all"``: the 1797 in their original order). Pixels
    ``k in 0..16`` are scaled by :func:`scale_levels` with 17 levels.
    """
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    check_choice(split, SPLITS, "split")
    bunch = _sk_digits()
    images, labels = bunch.images.astype(np.int64), bunch.target.astype(np.int64)
    if split != "all":
        tr_x, te_x, tr_y, te_y = train_test_split(
            images, labels, test_size=0.2, random_state=0, stratify=labels
        )
        images, labels = (tr_x, tr_y) if split == "train" else (te_x, te_y)
    x = scale_levels(images, 17, centered).unsqueeze(1)
    return ArrayDataset(x, torch.as_tensor(labels), levels=17)


# --------------------------------------------------------------------------- image folders


def _load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Open one image, resize its short side to ``size`` and center-crop ``size x size``;
    returns uint8 ``(channels, size, size)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            w, h = im.size
            scale = size / min(w, h)
            new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((new_w, new_h), Image.Resampling.BICUBIC)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def load_image_folder(
    path: str | Path, size: int, channels: int = 3, centered: bool = True
) -> ArrayDataset:
    """Every PNG/JPEG/BMP/GIF/WebP under ``path`` (recursively, sorted) as
    ``(N, channels, size, size)``.

    Labels: when every image lies in a sub-folder, the index of its top-level sub-folder name
    in sorted order (class folders); otherwise no labels.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected a folder of images)")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{root}: no images found (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    images = np.stack([_load_image(f, size, channels) for f in files])
    x = scale_levels(images, 256, centered)
    tops = [f.relative_to(root).parts for f in files]
    if all(len(parts) > 1 for parts in tops):
        classes = sorted({parts[0] for parts in tops})
        labels = torch.tensor([classes.index(parts[0]) for parts in tops])
        return ArrayDataset(x, labels, levels=256)
    return ArrayDataset(x, levels=256)


# --------------------------------------------------------------------------- .npz


def _to_nchw(arr: np.ndarray, layout: str) -> np.ndarray:
    if arr.ndim != 4 or layout == "nchw":
        return arr
    if layout == "nhwc" or (arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4)):
        return arr.transpose(0, 3, 1, 2)
    return arr


def load_npz(
    path: str | Path,
    key: str | None = None,
    label_key: str | None = None,
    layout: str = "auto",
    levels: int = 256,
    centered: bool = True,
) -> ArrayDataset:
    """Arrays from a ``.npz`` file.

    ``key`` defaults to the first of ``x``, ``images``, ``data``, ``arr_0`` present; labels are
    read from ``label_key`` (default: ``labels`` or ``y`` when present). Integer arrays are
    quantised levels and scaled with :func:`scale_levels` (``levels`` of them, 256 for 8-bit);
    float arrays are continuous data, used as they are (not clipped; the dataset's ``levels`` is
    None). 4-D arrays in ``NHWC`` are transposed to ``NCHW``
    (``layout="auto"`` guesses from a last axis of 1, 3 or 4 channels).
    """
    check_choice(layout, ("auto", "nchw", "nhwc"), "layout")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a .npz archive)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npz archive ({err})") from err
    with archive:
        names = list(archive.files)
        if key is None:
            key = next((k for k in ("x", "images", "data", "arr_0") if k in names), None)
        if key is None or key not in names:
            raise ValueError(f"{path}: no data array {key!r}; the archive holds {names}")
        if label_key is None:
            label_key = next((k for k in ("labels", "y") if k in names), None)
        elif label_key not in names:
            raise ValueError(f"{path}: no label array {label_key!r}; the archive holds {names}")
        arr = _to_nchw(archive[key], layout)
        labels = archive[label_key] if label_key is not None else None
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise ValueError(f"{path}: array {key!r} must have shape (N, ...) with N > 0, got {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        x = scale_levels(arr, levels, centered)
    elif np.issubdtype(arr.dtype, np.floating):
        x = torch.as_tensor(arr, dtype=torch.float32)
        if not torch.isfinite(x).all():
            raise ValueError(f"{path}: array {key!r} holds non-finite values")
    else:
        raise ValueError(f"{path}: array {key!r} has dtype {arr.dtype}; expected integers or floats")
    y = None if labels is None else torch.as_tensor(labels.astype(np.int64).reshape(-1))
    return ArrayDataset(x, y, levels=levels if np.issubdtype(arr.dtype, np.integer) else None)


# --------------------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only dicts, lists, bytes, str, numbers and NumPy arrays.

    Any other global (the way a malicious pickle runs code) is refused.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # NumPy 2 renamed the module
            module = module.replace("numpy.core.", "numpy._core.", 1)
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing (expected the CIFAR-10 python version: data_batch_1..5 and test_batch)"
        )
    try:
        with path.open("rb") as fh:
            batch = _ArrayUnpickler(io.BufferedReader(fh), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: not a valid CIFAR-10 batch ({type(err).__name__}: {err})") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ValueError(
            f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(path: str | Path, split: str = "train", centered: bool = True) -> ArrayDataset:
    """The CIFAR-10 python-version directory as ``(N, 3, 32, 32)`` with labels.

    ``train``: ``data_batch_1`` .. ``data_batch_5`` (50000 images); ``test``: ``test_batch``
    (10000); ``all``: both. 8-bit pixels are scaled with 256 levels.
    """
    check_choice(split, SPLITS, "split")
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory (expected cifar-10-batches-py)")
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    names["all"] = names["train"] + names["test"]
    parts = [_read_cifar_batch(root / name) for name in names[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset(scale_levels(images, 256, centered), torch.as_tensor(labels), levels=256)


# --------------------------------------------------------------------------- one entry point

SOURCES = ("digits", "toy", "image-folder", "npz", "cifar10")


def load_dataset(
    source: str,
    split: str = "train",
    *,
    path: str | None = None,
    name: str | None = None,
    size: int | None = None,
    channels: int = 3,
    centered: bool = True,
    n: int = 10_000,
    seed: int = 0,
    levels: int | None = None,
) -> ArrayDataset:
    """Load a dataset by ``source`` (one of :data:`SOURCES`).

    ``toy`` needs ``name`` (a key of :data:`TOY_SETS`) and draws ``n`` points; ``image-folder``
    needs ``path`` and ``size``; ``npz`` and ``cifar10`` need ``path``. A folder or ``.npz``
    has no split of its own: it is used whole. ``levels``: the levels of an integer ``.npz``
    (default 256).
    """
    check_choice(source, SOURCES, "data source")
    check_choice(split, SPLITS, "split")
    if source == "digits":
        return load_digits(split, centered)
    if source == "toy":
        if name is None:
            raise ValueError(f"the toy source needs a name: one of {', '.join(TOY_SETS)}")
        return load_toy(name, split, n, seed)
    if path is None:
        raise ValueError(f"the {source} source needs a path")
    if source == "cifar10":
        return load_cifar10(path, split, centered)
    if source == "npz":
        return load_npz(path, levels=levels or 256, centered=centered)
    if size is None:
        raise ValueError("the image-folder source needs an image size")
    return load_image_folder(path, size, channels, centered)


# --------------------------------------------------------------------------- 8-bit images


def read_image(path: str | Path) -> Tensor:
    """One image file as it is on disk: uint8 ``(1, H, W)`` for grayscale, else ``(3, H, W)``
    (palette and alpha images converted to RGB); no resizing."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im if im.mode in ("L", "RGB") else im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err
    return torch.tensor(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))  # a copy: PIL buffers are read-only


@dataclass
class ImageSource:
    """A set of 8-bit images read in batches, for feature networks (FID, IS): ``kind``
    (``cifar10``, ``npz``, ``npz-shards``, ``folder``), ``count`` and :meth:`batches` of uint8
    ``(B, C, H, W)`` tensors, in a fixed order."""

    path: Path
    kind: str
    count: int
    _read: Callable[[int, int], Tensor]

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[Tensor]:
        """Batches of at most ``batch_size`` images, the first ``limit`` (default all)."""
        n = self.count if limit is None else min(limit, self.count)
        for k in range(0, n, batch_size):
            yield self._read(k, min(k + batch_size, n))


def _uint8_of(arr: np.ndarray, where: str, data_range: tuple[float, float]) -> Tensor:
    """Integer arrays in 0..255 as they are; float arrays mapped from ``data_range`` and rounded as
    a saved PNG is (:func:`scoresde.images.to_uint8`)."""
    from scoresde.images import to_uint8

    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{where}: integer images must lie in 0..255, got {arr.min()}..{arr.max()}")
        return torch.from_numpy(arr.astype(np.uint8))
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{where}: images of dtype {arr.dtype}; expected integers or floats")
    return to_uint8(torch.from_numpy(arr), data_range)


def _images_4d(arr: np.ndarray, where: str) -> np.ndarray:
    arr = _to_nchw(arr, "auto")
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"{where}: expected images (N, C, H, W) or (N, H, W, C) with 1 or 3 channels, "
                         f"got shape {arr.shape}")
    return arr


def image_source(path: str | Path, split: str = "train", data_range: tuple[float, float] = (-1.0, 1.0)) -> ImageSource:
    """The images at ``path`` as an :class:`ImageSource`: a CIFAR-10 python directory (``split``),
    a ``.npz`` file (first of ``x``, ``images``, ``data``, ``arr_0``), a folder of ``seeds_*.npz``
    shards (``scoresde sample --format npz``), or a folder of images (recursively, sorted, all of
    one size; generated PNGs included). Float arrays are in ``data_range``."""
    root = Path(path)
    if root.is_dir() and (root / "data_batch_1").is_file():
        x = _uint8_of(load_cifar10(root, split, centered=False).x.numpy(), str(root), (0.0, 1.0))  # k/255 -> k
        return ImageSource(root, "cifar10", len(x), lambda a, b: x[a:b])
    if root.is_file() and root.suffix == ".npz":
        with np.load(root, allow_pickle=False) as arc:
            key = next((k for k in ("x", "images", "data", "arr_0") if k in arc.files), None)
            if key is None:
                raise ValueError(f"{root}: no image array (x, images, data or arr_0); the archive holds {arc.files}")
            x = _uint8_of(_images_4d(arc[key], str(root)), str(root), data_range)
        return ImageSource(root, "npz", len(x), lambda a, b: x[a:b])
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder (expected CIFAR-10 batches, a .npz or a folder of images)")
    shards = sorted(root.glob("seeds_*.npz"))
    if shards:
        parts = []
        for shard in shards:
            with np.load(shard, allow_pickle=False) as arc:
                parts.append((arc["seeds"], _images_4d(arc["x"], str(shard))))
        order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
        x = _uint8_of(np.concatenate([p[1] for p in parts])[order], str(root), data_range)
        return ImageSource(root, "npz-shards", len(x), lambda a, b: x[a:b])
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{root}: no images found (expected files ending in {', '.join(IMAGE_SUFFIXES)})")
    first = read_image(files[0]).shape

    def read(a: int, b: int) -> Tensor:
        imgs = [read_image(f) for f in files[a:b]]
        for f, img in zip(files[a:b], imgs):
            if img.shape != first:
                raise ValueError(f"{f}: image of shape {tuple(img.shape)}, the folder's first is {tuple(first)}")
        return torch.stack(imgs)

    return ImageSource(root, "folder", len(files), read)


# --------------------------------------------------------------------------- batches


def _seed_of(*parts: int) -> int:
    """A 63-bit seed mixing integers (deterministic, unlike ``hash`` of strings)."""
    seed = 0x9E3779B97F4A7C15
    for p in parts:
        seed = (seed ^ (p + 0x9E3779B9 + (seed << 6) + (seed >> 2))) & ((1 << 63) - 1)
    return seed


class BatchIterator:
    """An infinite, seeded iterator over shuffled mini-batches of an :class:`ArrayDataset`.

    Each epoch is a fresh permutation drawn from a generator seeded by ``(seed, epoch)``;
    flips and the dequantization noise of a batch (``dequantize=(levels, data_range)``: each batch
    through :func:`dequantize`, so the model fits the density that bits/dim evaluates, as in
    Song et al. 2021, "Maximum likelihood training of score-based diffusion models") use a
    generator seeded by ``(seed, epoch, position)``. The state is three
    integers (``state_dict()``), so a run resumed with ``load_state_dict`` yields exactly the
    batches an uninterrupted run would have.

    For data parallel training each of ``world_size`` ranks takes its slice ``rank::world_size``
    of a global batch of ``batch_size * world_size`` samples: together the ranks see what one
    process with the global batch sees. Incomplete tail batches are dropped.

    Yields ``(x, labels)`` (``labels`` is ``None`` for unlabelled data).
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        hflip: bool = False,
        dequantize: tuple[int, tuple[float, float]] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        if batch_size * world_size > len(dataset):
            raise ValueError(
                f"batch_size * world_size = {batch_size * world_size} exceeds the dataset size {len(dataset)}"
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.shuffle, self.hflip, self.rank, self.world_size = shuffle, hflip, rank, world_size
        self.dequantize = dequantize
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(_seed_of(self.seed, self.epoch)))

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        return self

    def __next__(self) -> tuple[Tensor, Tensor | None]:
        if self.position + self.global_batch > len(self.dataset):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.position : self.position + self.global_batch]
        g = torch.Generator().manual_seed(_seed_of(self.seed, self.epoch, self.position))
        self.position += self.global_batch
        x = self.dataset.x[idx]
        if self.hflip:
            x = random_hflip(x, generator=g)
        if self.dequantize is not None:
            x = dequantize(x, self.dequantize[0], self.dequantize[1], generator=g)
        labels = None if self.dataset.labels is None else self.dataset.labels[idx]
        rank_slice = slice(self.rank, None, self.world_size)
        return x[rank_slice], (None if labels is None else labels[rank_slice])

    def state_dict(self) -> dict[str, int]:
        """``{"seed", "epoch", "position"}``: all that is needed to resume exactly."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume from :meth:`state_dict`'s output."""
        missing = {"seed", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"iterator state lacks {sorted(missing)}")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._order = self._permutation()
