"""Evaluation from the command line: sample by seed, fid-stats, eval with FID/IS (a TorchScript
stand-in of the Inception interface), and nats/dim of continuous data against the oracle."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_metrics import save_stand_in
from torch import nn

import scoresde as sd
from scoresde import cli, config, data, metrics
from scoresde.cli.runs import likelihood_over_split
from scoresde.generate import png_path
from scoresde.images import to_uint8, write_png
from scoresde.runs import Run

TINY_DIGITS = ["training.steps=2", "training.batch_size=8", "training.log_every=1", "model.nf=8",
               "model.ch_mult=[1]", "model.num_res_blocks=1", "model.attn_resolutions=[]", "sampling.steps=3",
               "evaluation.n_samples=40"]


def run_cli(*argv: str) -> int:
    return cli.main(["--quiet", *argv])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    assert run_cli("train", "digits-vp", *TINY_DIGITS, "--out", str(out)) == 0
    return out


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    return save_stand_in(tmp_path_factory.mktemp("net") / "standin.pt", 1)


def test_sample_by_seed_cli_batch_1_7_and_resume(digits_run, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    opts = ["--method", "ddim", "--eta", "1", "--steps", "3"]
    assert run_cli("sample", str(digits_run), "--seeds", "0-9", "--batch", "1", "--outdir", str(a), *opts) == 0
    assert run_cli("sample", str(digits_run), "--seeds", "0-4", "--batch", "7", "--outdir", str(b), *opts) == 0
    assert run_cli("sample", str(digits_run), "--seeds", "0-9", "--batch", "7", "--outdir", str(b), *opts) == 0
    assert "5 samples written, 5 already there" in capsys.readouterr().out
    for k in range(10):
        assert png_path(a, k).read_bytes() == png_path(b, k).read_bytes()
    assert run_cli("sample", str(digits_run), "--seeds", "0-1", "--outdir", str(tmp_path / "c"), "--method", "ddim",
                   "--order", "2") == 2  # DDIM takes no order: refused by the method table
    assert "takes no option 'order'" in capsys.readouterr().err
    assert run_cli("sample", str(digits_run), "--seeds", "0-1", "--outdir", str(tmp_path / "d"),
                   "--method", "unipc", "--corrector", "maybe") == 2
    assert "--corrector takes true or false" in capsys.readouterr().err


def test_fid_stats_and_eval_fid_is_fd_digits(digits_run, stand_in, tmp_path, capsys):
    folder = tmp_path / "digits_png"
    for k, img in enumerate(to_uint8(data.load_digits("test").x[:60])):
        png_path(folder, k).parent.mkdir(parents=True, exist_ok=True)
        write_png(img.permute(1, 2, 0).numpy(), png_path(folder, k))
    ref = tmp_path / "ref.npz"
    assert run_cli("fid-stats", str(folder), "--inception", str(stand_in), "--out", str(ref), "--batch", "16") == 0
    stats = metrics.InceptionStats.load(ref)
    assert stats.n == 60 and stats.network["name"] == "standin.pt"
    out = tmp_path / "eval"
    assert run_cli("eval", str(digits_run), "--metrics", "fd-digits", "fid", "is", "--ref", str(ref),
                   "--inception", str(stand_in), "--n", "24", "--batch", "10", "--steps", "3", "--out", str(out)) == 0
    res = json.loads((out / "metrics.json").read_text())
    inc = res["inception_metrics"]
    assert inc["n"] == 24 and inc["inception"] == stats.network and inc["ref"]["n"] == 60
    assert inc["fid"] > 0 and 1 <= inc["is"] <= 10 and res["fd-digits"] > 0
    # the same figures from the generated PNGs, read back with --samples
    assert run_cli("eval", str(digits_run), "--metrics", "fid", "--ref", str(ref), "--inception", str(stand_in),
                   "--samples", inc["samples"], "--out", str(tmp_path / "again")) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["inception_metrics"]
    assert again["fid"] == pytest.approx(inc["fid"], rel=1e-12)
    capsys.readouterr()
    assert run_cli("eval", str(digits_run), "--metrics", "fid", "--inception", str(stand_in)) == 2
    assert "fid-stats" in capsys.readouterr().err  # no reference: says how to make one


def test_nats_per_dim_of_float_npz_matches_the_oracle(tmp_path):
    gmm = sd.GaussianMixture.named("ring2d")
    x, _ = gmm.sample(32, generator=torch.Generator().manual_seed(0))  # (points, components)
    np.savez(tmp_path / "points.npz", x=x.numpy().astype(np.float32))
    cfg = config.load_config("toy-2d", ["data.source=npz", f"data.path={tmp_path / 'points.npz'}"])
    sde = config.build_sde(cfg)
    run = Run(tmp_path, cfg, sde, None, None, gmm.score_fn(sde), 0, torch.device("cpu"))
    res = likelihood_over_split(run, "test", 32, 32, tmp_path / "partial.json", divergence="exact",
                                rtol=1e-4, atol=1e-4)
    exact = float(-gmm.log_prob(x.double()).mean() / 2)
    assert res["unit"] == "nats/dim" and res["levels"] is None
    # the probability-flow ODE at 1e-4 with the exact score: the likelihood module's error is
    # ~1e-4 nats per sample on ring2d at 1e-3 already (BENCHMARKS, likelihood); p_eps vs p_0 adds
    # ~1e-5; the old bits/dim path (a float set read as 256 levels) was off by ~10
    assert res["mean"] == pytest.approx(exact, abs=1e-3)


class _GaussianEps(nn.Module):
    """The exact noise prediction for data N(0, s0^2 I) under a linear SDE:
    ``eps_hat = sigma x / (alpha^2 s0^2 + sigma^2)``."""

    def __init__(self, sde, s0: float) -> None:
        super().__init__()
        self.sde, self.s0 = sde, s0
        self.unused = nn.Parameter(torch.zeros(()))  # a device and a train/eval mode, like a network

    def forward(self, x, t, labels=None):
        a, s = self.sde.alpha(t).reshape(-1, *[1] * (x.ndim - 1)), self.sde.sigma(t).reshape(-1, *[1] * (x.ndim - 1))
        return s * x / (a**2 * self.s0**2 + s**2)


def test_training_monitor_fid_matches_files_and_nll_matches_closed_form(stand_in, tmp_path):
    from scoresde.generate import generate
    from scoresde.monitor import TrainingMonitor
    from scoresde.score import score_fn_from_model

    sde, s0, shape = sd.VPSDE(), 0.5, (3, 4, 4)
    model = _GaussianEps(sde, s0).train()
    net = metrics.InceptionNet(stand_in)
    ref_x = s0 * torch.randn(64, *shape, generator=torch.Generator().manual_seed(5))
    reference, _ = metrics.inception_stats(net, [ref_x])
    held_out = s0 * torch.randn(32, *shape, generator=torch.Generator().manual_seed(6))
    options = {"method": "ddim", "steps": 4}
    monitor = TrainingMonitor(sde, "eps", shape, inception=net, reference=reference, n=20, batch=8,
                              held_out=held_out, levels=None, sample_options=options,
                              likelihood_options={"divergence": "exact", "rtol": 1e-6, "atol": 1e-6})
    figures = monitor(model, step=10)
    assert model.training  # restored after the evaluation
    # the same seeds written as PNGs and read back give the same FID: one rounding to uint8
    generate(score_fn_from_model(model.eval(), sde, "eps"), sde, shape, range(20), tmp_path, batch=20,
             progress=False, **options)
    stats, _ = metrics.inception_stats(net, data.image_source(tmp_path).batches(7))
    assert figures["fid"] == pytest.approx(stats.fid(reference), rel=1e-9, abs=1e-12)
    exact = float(0.5 * math.log(2 * math.pi * s0**2) + (held_out.double() ** 2).mean() / (2 * s0**2))
    # exact score, ODE at 1e-6: the likelihood module's error is far below 1e-3 nats/dim
    assert figures["nll"] == pytest.approx(exact, abs=1e-3)
    with pytest.raises(ValueError, match="both"):
        TrainingMonitor(sde, "eps", shape, inception=net)


def test_training_monitor_of_a_config(stand_in, tmp_path):
    from scoresde.cli.runs import training_monitor

    cfg = config.load_config("digits-vp", [f"evaluation.inception={stand_in}", "evaluation.likelihood_batch=3"])
    with pytest.raises(FileNotFoundError, match="ref.npz"):  # an inception without reference stats file
        training_monitor(config.load_config("digits-vp", [f"evaluation.inception={stand_in}",
                                                          f"evaluation.fid_ref={tmp_path / 'ref.npz'}"]),
                         sd.VPSDE(), "eps", (1, 8, 8), torch.device("cpu"))
    monitor = training_monitor(cfg, sd.VPSDE(), "eps", (1, 8, 8), torch.device("cpu"))
    assert monitor.inception is None and monitor.levels == 17 and monitor.held_out.shape == (3, 1, 8, 8)


def test_fid_stats_of_a_float_npz_in_its_range(stand_in, tmp_path):
    x = torch.rand(30, 3, 5, 5, generator=torch.Generator().manual_seed(7))  # images in [0, 1]
    np.savez(tmp_path / "floats.npz", x=x.numpy())
    out = tmp_path / "s.npz"
    assert run_cli("fid-stats", str(tmp_path / "floats.npz"), "--inception", str(stand_in), "--out", str(out),
                   "--data-range", "0", "1") == 0
    expected, _ = metrics.inception_stats(metrics.InceptionNet(stand_in), [to_uint8(x, (0.0, 1.0))])
    assert np.array_equal(metrics.InceptionStats.load(out).mu, expected.mu)
