"""Generation by seed: per-seed generators make sample k independent of batch size and resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde import data, generate

SHAPE = (3, 4, 4)


def _score_fn():
    """A tiny randomly initialised convolutional score (the per-row independence of a real network)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Conv2d(3, 3, 3, padding=1)
    net.requires_grad_(False)
    return lambda x, t: -x + 0.1 * torch.tanh(net(x)) * t.reshape(-1, 1, 1, 1)


def test_parse_seeds():
    assert generate.parse_seeds("0-3,7,5-6,2") == [0, 1, 2, 3, 7, 5, 6]
    for bad in ("3-1", "a", "-4", ""):
        with pytest.raises(ValueError, match="seed"):
            generate.parse_seeds(bad)


@pytest.mark.parametrize("method,options", [("ddim", {"eta": 1.0}), ("heun", {"churn": 10.0}),
                                            ("ancestral", {}), ("dpm-solver++", {})])
def test_sample_k_is_the_same_in_any_batch(method, options):
    sde, score = sd.VPSDE(), _score_fn()
    seeds = list(range(10, 17))

    def draw(group):
        x, _ = sd.sample(score, sde, (len(group),) + SHAPE, method=method, steps=6,
                         generator=generate.seed_generators(group), **options)
        return x

    together = draw(seeds)
    alone = torch.cat([draw([s]) for s in seeds])
    # a conv may round a row differently with the batch size (float32 eps 1.2e-7, a few steps)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together[0], together[1])  # distinct seeds, distinct samples


def _pngs(outdir, seeds):
    return np.stack([data.read_image(generate.png_path(outdir, s)).numpy() for s in seeds])


def test_png_files_identical_between_batch_1_and_7_and_across_resume(tmp_path):
    sde, score = sd.VPSDE(), _score_fn()
    seeds = list(range(995, 1010))  # crosses the 1000 sub-folder boundary
    common = {"method": "ddim", "steps": 5, "eta": 1.0, "progress": False}
    r1 = generate.generate(score, sde, SHAPE, seeds, tmp_path / "b1", batch=1, **common)
    r7 = generate.generate(score, sde, SHAPE, seeds, tmp_path / "b7", batch=7, **common)
    assert (r1.written, r7.written, r7.nfe) == (15, 15, 5)
    assert (tmp_path / "b7" / "001000" / "001009.png").is_file()
    np.testing.assert_array_equal(_pngs(tmp_path / "b1", seeds), _pngs(tmp_path / "b7", seeds))
    # resume: remove some seeds and run again with another batch size; only those are redone
    for s in (996, 1003, 1004):
        generate.png_path(tmp_path / "b7", s).unlink()
    again = generate.generate(score, sde, SHAPE, seeds, tmp_path / "b7", batch=2, **common)
    assert (again.written, again.skipped) == (3, 12)
    np.testing.assert_array_equal(_pngs(tmp_path / "b1", seeds), _pngs(tmp_path / "b7", seeds))
    with pytest.raises(ValueError, match="other settings \\(eta"):  # never mixes two samplers in one folder
        generate.generate(score, sde, SHAPE, seeds, tmp_path / "b7", batch=2, **{**common, "eta": 0.5})


def test_npz_shards_for_any_shape_and_resume(tmp_path):
    gmm = sd.GaussianMixture.named("ring2d")
    sde = sd.VPSDE()
    common = {"method": "euler-maruyama", "steps": 8, "fmt": "npz", "progress": False}
    generate.generate(gmm.score_fn(sde), sde, (2,), range(9), tmp_path / "a", batch=4, **common)
    generate.generate(gmm.score_fn(sde), sde, (2,), range(5), tmp_path / "b", batch=5, **common)
    generate.generate(gmm.score_fn(sde), sde, (2,), range(9), tmp_path / "b", batch=3, **common)  # resume

    def read(root):
        parts = [np.load(p) for p in sorted(root.glob("seeds_*.npz"))]
        seeds = np.concatenate([p["seeds"] for p in parts])
        x = np.concatenate([p["x"] for p in parts])
        return x[np.argsort(seeds)], np.sort(seeds)

    (xa, sa), (xb, sb) = read(tmp_path / "a"), read(tmp_path / "b")
    assert sa.tolist() == sb.tolist() == list(range(9))
    np.testing.assert_allclose(xa, xb, rtol=0, atol=1e-6)


def test_batch_coupled_methods_are_refused_in_batches(tmp_path):
    sde, score = sd.VPSDE(), _score_fn()
    assert generate.couples_batch("dpm-solver++", {}) is None  # an alias of the table
    assert generate.couples_batch("unipc", {}) is None  # its corrector is a switch, not Langevin
    assert "hmc" in generate.couples_batch("pc", {"corrector": "hmc"})
    with pytest.raises(ValueError, match="langevin corrector"):
        generate.generate(score, sde, SHAPE, range(3), tmp_path, batch=2, method="pc", steps=3, progress=False)
    with pytest.raises(ValueError, match="adaptive ODE"):
        generate.generate(score, sde, SHAPE, range(3), tmp_path, batch=2, method="ode", progress=False)
    with pytest.raises(ValueError, match="PNG output needs images"):
        generate.generate(score, sde, (2,), range(3), tmp_path, batch=2, method="ddim", progress=False)
    with pytest.raises(ValueError, match="per-sample generators"):
        sd.sample(score, sde, (3,) + SHAPE, method="ddim", steps=2, generator=generate.seed_generators([0, 1]))
