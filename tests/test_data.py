"""Loaders on fixture data made here, scaling, dequantization and the resumable iterator."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde import data


def test_digits_split_sizes_and_scaling():
    train, test = data.load_digits("train"), data.load_digits("test")
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    # stratified split: every class present in test with 35 or 36 images (1797 * 0.2 / 10)
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # values are exactly 2 k / 16 - 1 on the 17-level grid
    k = (train.x + 1) * 8
    assert torch.equal(k, k.round()) and k.min() == 0 and k.max() == 16
    raw = data.load_digits("all", centered=False)
    assert raw.x.shape[0] == 1797 and raw.x.min() == 0 and raw.x.max() == 1


@pytest.mark.parametrize("name", sorted(data.TOY_SETS))
def test_toy_sets_are_seeded_and_bounded(name):
    a = data.toy_2d(name, 500, generator=torch.Generator().manual_seed(3))
    b = data.toy_2d(name, 500, generator=torch.Generator().manual_seed(3))
    c = data.toy_2d(name, 500, generator=torch.Generator().manual_seed(4))
    assert a.shape == (500, 2) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() < 4.5
    assert not torch.equal(data.load_toy(name, "train", 50).x, data.load_toy(name, "test", 50).x)


def test_toy_structure():
    g = torch.Generator().manual_seed(0)
    rings = data.toy_2d("rings", 4000, generator=g)
    radius = rings.norm(dim=1)
    # every point lies within 4 noise stds (0.05) of one of the radii 0.5, 1, 1.5, 2
    gap = (radius[:, None] - torch.tensor([0.5, 1.0, 1.5, 2.0])).abs().min(dim=1).values
    assert gap.max() < 0.2
    board = data.toy_2d("checkerboard", 4000, generator=g)
    # black squares only: floor(x) + floor(y) is even
    assert ((torch.floor(board[:, 0]) + torch.floor(board[:, 1])) % 2 == 0).all()


def test_image_folder_labels_resize_crop(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            arr = rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    ds = data.load_image_folder(tmp_path, size=8, channels=3)
    assert ds.x.shape == (6, 3, 8, 8) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.x.min() >= -1 and ds.x.max() <= 1
    gray = data.load_image_folder(tmp_path, size=4, channels=1, centered=False)
    assert gray.x.shape == (6, 1, 4, 4) and gray.x.min() >= 0


def test_image_folder_exact_pixels_and_no_labels(tmp_path):
    arr = np.arange(16, dtype=np.uint8).reshape(4, 4) * 17
    Image.fromarray(arr, mode="L").save(tmp_path / "a.png")
    ds = data.load_image_folder(tmp_path, size=4, channels=1)
    assert ds.labels is None
    expected = torch.as_tensor(arr / 255.0 * 2 - 1, dtype=torch.float32)
    assert torch.allclose(ds.x[0, 0], expected, atol=1e-6)  # float32 rounding of k / 255


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        data.load_image_folder(tmp_path / "missing", size=8)
    with pytest.raises(ValueError, match="no images found"):
        data.load_image_folder(tmp_path, size=8)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        data.load_image_folder(tmp_path, size=8)


def test_npz_integer_float_and_layout(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(5))
    ds = data.load_npz(tmp_path / "a.npz")
    assert ds.x.shape == (5, 3, 6, 6) and ds.labels.tolist() == [0, 1, 2, 3, 4]
    expected = torch.as_tensor(imgs.transpose(0, 3, 1, 2) / 255 * 2 - 1, dtype=torch.float32)
    assert torch.allclose(ds.x, expected, atol=1e-6)  # float32 rounding of k / 255 (ulp ~ 6e-8)
    vec = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float32)
    np.savez(tmp_path / "b.npz", vec)
    assert torch.equal(data.load_npz(tmp_path / "b.npz").x, torch.as_tensor(vec))


def test_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        data.load_npz(tmp_path / "nope.npz")
    np.savez(tmp_path / "a.npz", other=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="holds \\['other'\\]"):
        data.load_npz(tmp_path / "a.npz")
    (tmp_path / "c.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="c.npz"):
        data.load_npz(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", x=np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="non-finite"):
        data.load_npz(tmp_path / "d.npz")


def _write_cifar(root, n_per_batch=4):
    rng = np.random.default_rng(0)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, size=n_per_batch).tolist(),
        }
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)


def test_cifar_pickle_directory(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar(root)
    train, test = data.load_cifar10(root, "train"), data.load_cifar10(root, "test")
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    with open(root / "test_batch", "rb") as fh:
        raw = pickle.load(fh)
    first = raw[b"data"][0].reshape(3, 32, 32) / 255 * 2 - 1
    assert torch.allclose(test.x[0], torch.as_tensor(first, dtype=torch.float32), atol=1e-6)  # float32 ulp
    assert test.labels.tolist() == raw[b"labels"]


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_refuses_code_and_reports_missing(tmp_path):
    root = tmp_path / "cifar"
    _write_cifar(root)
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": []}, fh)
    with pytest.raises(ValueError, match="refusing to load global builtins.print"):
        data.load_cifar10(root, "test")
    (root / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load_cifar10(root, "train")


def test_dequantize_stays_in_its_cell():
    k = torch.randint(0, 17, (2000,), generator=torch.Generator().manual_seed(0))
    x = 2 * k / 16 - 1
    y = data.dequantize(x, 17, generator=torch.Generator().manual_seed(1))
    v = (y + 1) / 2 * 17  # lies in [k, k + 1)
    assert ((v >= k) & (v < k + 1 + 1e-5)).all()
    # u ~ U[0, 1): mean 0.5, standard error sqrt(1/12/2000) = 0.0065; 4 standard errors
    assert abs(float((v - k).mean()) - 0.5) < 0.026


def test_quantize_inverts_dequantize_on_both_ranges():
    k = torch.randint(0, 17, (2000,), generator=torch.Generator().manual_seed(2))
    for lo, hi in ((-1.0, 1.0), (0.0, 1.0)):
        x = lo + (hi - lo) * k / 16
        y = data.dequantize(x, 17, (lo, hi), generator=torch.Generator().manual_seed(3))
        assert not torch.equal(y, x)
        torch.testing.assert_close(data.quantize(y, 17, (lo, hi)), x, rtol=0, atol=1e-6)
    # values outside the range go to the end levels
    assert data.quantize(torch.tensor([-3.0, 3.0]), 17).tolist() == [-1.0, 1.0]


def test_batch_iterator_dequantizes_each_batch_reproducibly():
    k = torch.randint(0, 17, (40, 1, 2, 2), generator=torch.Generator().manual_seed(4))
    ds = data.ArrayDataset(2 * k / 16 - 1)
    it = data.BatchIterator(ds, 8, seed=1, dequantize=(17, (-1.0, 1.0)))
    plain = data.BatchIterator(ds, 8, seed=1)
    batches = [next(it)[0] for _ in range(6)]
    for b in batches:  # off the lattice, each value inside the cell of its item's level
        assert (b - data.quantize(b, 17)).abs().min() > 0
        torch.testing.assert_close(data.quantize(b, 17), next(plain)[0], rtol=0, atol=1e-6)
    again = data.BatchIterator(ds, 8, seed=1, dequantize=(17, (-1.0, 1.0)))
    again.load_state_dict({"seed": 1, "epoch": 0, "position": 16})
    assert torch.equal(next(again)[0], batches[2])


def test_random_hflip_flips_whole_images():
    x = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 1, 2, 3).repeat(50, 1, 1, 1)
    y = data.random_hflip(x, generator=torch.Generator().manual_seed(0))
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    kept = (y == x).flatten(1).all(1)
    assert (flipped | kept).all() and 20 < int(flipped.sum()) < 80
    with pytest.raises(ValueError, match="images"):
        data.random_hflip(torch.zeros(4, 2))


def test_batch_iterator_covers_epochs_and_resumes_exactly():
    ds = data.ArrayDataset(torch.arange(10.0)[:, None], torch.arange(10))
    it = data.BatchIterator(ds, 3, seed=5)
    first_epoch = torch.cat([next(it)[1] for _ in range(3)])
    assert len(set(first_epoch.tolist())) == 9  # 3 full batches, no repeats, tail dropped
    state = it.state_dict()
    ahead = [next(it)[0] for _ in range(7)]
    resumed = data.BatchIterator(ds, 3, seed=0)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, next(resumed)[0]) for a in ahead)
    with pytest.raises(ValueError, match="position"):
        resumed.load_state_dict({"seed": 0, "epoch": 0})


def test_batch_iterator_ranks_partition_the_global_batch():
    ds = data.ArrayDataset(torch.randn(40, 1, 2, 2))
    whole = data.BatchIterator(ds, 8, seed=1, hflip=True)
    ranks = [data.BatchIterator(ds, 4, seed=1, hflip=True, rank=r, world_size=2) for r in range(2)]
    for _ in range(12):  # crosses epoch boundaries
        full = next(whole)[0]
        parts = [next(r)[0] for r in ranks]
        assert torch.equal(full[0::2], parts[0]) and torch.equal(full[1::2], parts[1])
    with pytest.raises(ValueError, match="exceeds"):
        data.BatchIterator(ds, 41)


def test_load_dataset_dispatch_errors():
    assert data.load_dataset("toy", name="two-moons", n=10).x.shape == (10, 2)
    with pytest.raises(ValueError, match="data source"):
        data.load_dataset("mnist")
    with pytest.raises(ValueError, match="needs a name"):
        data.load_dataset("toy")
    with pytest.raises(ValueError, match="needs a path"):
        data.load_dataset("npz")


def test_levels_per_source(tmp_path):
    from scoresde import config

    assert data.load_digits("test").levels == 17
    assert data.load_toy("rings", n=10).levels is None
    np.savez(tmp_path / "i.npz", x=np.arange(8, dtype=np.uint8).reshape(2, 4))
    np.savez(tmp_path / "f.npz", x=np.array([[-3.5, 0.25], [7.0, 1.0]], dtype=np.float32))
    assert data.load_npz(tmp_path / "i.npz").levels == 256
    assert data.load_npz(tmp_path / "i.npz", levels=8).levels == 8
    floats = data.load_npz(tmp_path / "f.npz")
    assert floats.levels is None and floats.x.min() == -3.5 and floats.x.max() == 7.0  # not clamped
    cfg = config.load_config("toy-2d", ["data.source=npz", f"data.path={tmp_path / 'f.npz'}"])
    assert cfg.data.quantisation_levels(config.build_dataset(cfg)) is None  # continuous: nats/dim
    cfg = config.load_config("toy-2d", ["data.source=npz", f"data.path={tmp_path / 'i.npz'}", "data.levels=8"])
    assert cfg.data.quantisation_levels(config.build_dataset(cfg)) == 8
    assert config.load_config("digits-vp", ["data.levels=continuous"]).data.quantisation_levels() is None
    with pytest.raises(ValueError, match="data.levels"):
        config.load_config("digits-vp", ["data.levels=1"])
    with pytest.raises(ValueError, match="data.levels"):
        config.load_config("digits-vp", ["data.levels=bits"])


def test_image_source_cifar_npz_shards_and_folders(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    _write_cifar(root)
    src = data.image_source(root, "test")
    with open(root / "test_batch", "rb") as fh:
        raw = pickle.load(fh)
    got = torch.cat(list(src.batches(3)))
    assert src.kind == "cifar10" and got.dtype == torch.uint8
    assert np.array_equal(got.numpy(), raw[b"data"].reshape(-1, 3, 32, 32))  # exact 8-bit pixels
    imgs = np.random.default_rng(2).integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "u.npz", images=imgs)
    assert np.array_equal(next(data.image_source(tmp_path / "u.npz").batches(10)).numpy(), imgs.transpose(0, 3, 1, 2))
    floats = np.array([-1.0, -0.2, 0.5, 1.0, 2.0], dtype=np.float32).reshape(5, 1, 1, 1) * np.ones((1, 1, 2, 2))
    np.savez(tmp_path / "f.npz", x=floats)
    # (x + 1) / 2 * 255 rounded and clipped, as a saved PNG: 0, 102, 191, 255, 255
    assert next(data.image_source(tmp_path / "f.npz").batches(5))[:, 0, 0, 0].tolist() == [0, 102, 191, 255, 255]
    folder = tmp_path / "pngs" / "000000"
    folder.mkdir(parents=True)
    for k in range(3):
        Image.fromarray(imgs[k]).save(folder / f"{k:06d}.png")
    src = data.image_source(tmp_path / "pngs")
    assert src.kind == "folder" and src.count == 3
    assert [b.shape[0] for b in src.batches(2)] == [2, 1]
    assert np.array_equal(torch.cat(list(src.batches(2))).numpy(), imgs[:3].transpose(0, 3, 1, 2))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "000009.png")
    with pytest.raises(ValueError, match="000009.png"):
        list(data.image_source(tmp_path / "pngs").batches(10))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.image_source(tmp_path / "nowhere")
