"""Images and arrays on disk: one grid writer for every PNG the project makes, ``.npz`` I/O.

Every file goes through :mod:`scoresde._io`, so a kill mid-write never leaves a torn file.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._io import atomic_write, write_bytes


def to_uint8(x: Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """Images mapped linearly from ``data_range`` to ``[0, 255]``, clipped and rounded to uint8
    (what a saved PNG holds)."""
    lo, hi = data_range
    return ((x.detach().float() - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)


def image_grid(x: Tensor, data_range: tuple[float, float] = (-1.0, 1.0), *, nrow: int | None = None,
               min_cell: int = 32) -> np.ndarray:
    """Tile images ``(B, C, H, W)`` into one uint8 array ``(rows*H', cols*W', C)`` of ``nrow``
    columns (default: a square) with a 1-pixel white border, each image upscaled (nearest) to at
    least ``min_cell`` pixels."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
    scale = max(1, math.ceil(min_cell / x.shape[-1]))
    imgs = to_uint8(x.cpu(), data_range).repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    b, c, h, w = imgs.shape
    cols = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = torch.full((c, rows * (h + 1) + 1, cols * (w + 1) + 1), 255, dtype=torch.uint8)
    for i in range(b):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = imgs[i]
    return grid.permute(1, 2, 0).numpy()


def write_png(arr: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 array ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` as a PNG, atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def save_png(x: Tensor, path: str | Path, data_range: tuple[float, float] = (-1.0, 1.0),
             nrow: int | None = None) -> Path:
    """Images ``(B, C, H, W)`` as a PNG grid (first 256); vectors ``(B, 2)`` as a scatter plot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x.ndim == 4:
        return write_png(image_grid(x[:256], data_range, nrow=nrow), path)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"can draw images (B, C, H, W) or 2-D points (B, 2), got {tuple(x.shape)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(x[:, 0].cpu(), x[:, 1].cpu(), s=2, alpha=0.5)
    ax.set_aspect("equal")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def save_npz(path: str | Path, **arrays: Any) -> Path:
    """Write arrays to an ``.npz`` archive, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in arrays.items()})
    return write_bytes(path, buf.getvalue())


def save_samples(x: Tensor, png: str | Path, data_range: tuple[float, float] = (-1.0, 1.0),
                 **extra: Any) -> Path:
    """Write ``png`` (grid or scatter) and the raw array beside it as ``.npz`` (key ``x`` plus
    ``extra`` entries); returns the ``.npz`` path."""
    png = Path(png)
    save_png(x, png, data_range)
    return save_npz(png.with_suffix(".npz"), x=x, **extra)


def read_array(path: str | Path, key: str) -> Tensor:
    """Array ``key`` of an ``.npz`` file as a float tensor (clear errors for missing files/keys)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a .npz archive with array {key!r})")
    with np.load(path, allow_pickle=False) as arc:
        if key not in arc.files:
            raise ValueError(f"{path}: no array {key!r}; the archive holds {arc.files}")
        return torch.as_tensor(arc[key], dtype=torch.float32)


def side_by_side(*images: Tensor, fill: float = 1.0, min_size: int = 32) -> Tensor:
    """One cell per sample: image batches ``(B, C, H, W)`` upscaled (nearest) to at least
    ``min_size`` pixels high and joined along the width with a one-pixel ``fill`` column."""
    scale = max(1, -(-min_size // images[0].shape[-2]))
    big = [x.repeat_interleave(scale, -2).repeat_interleave(scale, -1) for x in images]
    gap = torch.full_like(big[0][..., :1], fill)
    return torch.cat([part for x in big for part in (x, gap)][:-1], dim=-1)
