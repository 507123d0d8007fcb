"""Image grids, PNG round trips and .npz I/O (scoresde.images)."""

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde import images


def test_image_grid_layout():
    x = torch.linspace(-1, 1, 5).reshape(5, 1, 1, 1).expand(5, 1, 8, 8)
    grid = images.image_grid(x, min_cell=16)
    # 3 columns x 2 rows of 16-pixel cells with 1-pixel borders; values -1, -0.5, 0 -> 0, 64, 128
    assert grid.shape == (2 * 17 + 1, 3 * 17 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 1 + 17 * 2, 0] == 128 and grid[1 + 17, 1 + 17, 0] == 255
    assert grid[0, :, 0].min() == 255  # white border
    with pytest.raises(ValueError, match="images"):
        images.image_grid(torch.zeros(2, 4, 8, 8))


def test_grid_columns_and_png_round_trip(tmp_path):
    x = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    path = images.save_png(x, tmp_path / "g.png", nrow=2)
    arr = np.array(Image.open(path))
    assert arr.shape == (3 * 33 + 1, 2 * 33 + 1, 3)  # 4-pixel images upscaled x8 to 32, 3 rows of 2
    # the saved pixels are exactly the uint8 quantisation of the images
    first = images.to_uint8(x[0]).permute(1, 2, 0).numpy()
    assert np.array_equal(arr[1:33:8, 1:33:8], first)
    assert not list(tmp_path.glob("*.tmp"))  # the atomic writer leaves no temporary file


def test_samples_npz_round_trip(tmp_path):
    x = torch.randn(3, 2)
    npz = images.save_samples(x, tmp_path / "s.png", nfe=7)
    assert torch.equal(images.read_array(npz, "x"), x)
    with pytest.raises(ValueError, match="no array"):
        images.read_array(npz, "z")
    with pytest.raises(FileNotFoundError):
        images.read_array(tmp_path / "missing.npz", "x")


def test_side_by_side_cells():
    a, b = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    cell = images.side_by_side(a, b, fill=0.5, min_size=8)
    assert cell.shape == (2, 1, 8, 17)  # two 8x8 images and a 1-pixel column
    assert torch.all(cell[..., :8] == 0) and torch.all(cell[..., 8] == 0.5) and torch.all(cell[..., 9:] == 1)
