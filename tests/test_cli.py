"""Every sub-command end to end on tiny configurations (seconds), and the error contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde import cli, config, likelihood, load_run
from scoresde.cli.runs import sample_metrics, sample_run
from scoresde.score import clip_denoised

TINY_TOY = ["training.steps=30", "training.batch_size=64", "training.log_every=10", "training.checkpoint_every=20",
            "model.width=16", "model.depth=1", "data.n=400", "sampling.n=50", "evaluation.n_samples=200",
            "evaluation.likelihood_n=30", "evaluation.likelihood_batch=12"]
TINY_DIGITS = ["training.steps=4", "training.batch_size=16", "training.log_every=2", "model.nf=8",
               "model.ch_mult=[1]", "model.num_res_blocks=1", "model.attn_resolutions=[]", "sampling.steps=4",
               "evaluation.n_samples=40", "evaluation.likelihood_n=4", "evaluation.likelihood_batch=4",
               "evaluation.rtol=1e-3", "evaluation.atol=1e-3", "sampling.clip_denoised=true"]


def run_cli(*argv: str) -> int:
    return cli.main(["--quiet", *argv])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    assert run_cli("train", "toy-2d", *TINY_TOY, "--out", str(out)) == 0
    return out


def test_train_writes_a_run_and_refuses_to_overwrite(toy_run, capsys):
    assert {"config.yaml", "log.jsonl", "ckpt_00000030.json"} <= {p.name for p in toy_run.iterdir()}
    assert run_cli("train", "toy-2d", *TINY_TOY, "--out", str(toy_run)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scoresde: error:") and "--resume" in err and "\n" not in err


def test_resume_continues_to_more_steps(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "toy-2d", *TINY_TOY, "training.steps=10", "--out", str(out)) == 0
    assert run_cli("train", "toy-2d", *TINY_TOY, "training.steps=20", "--out", str(out), "--resume") == 0
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [10, 20]
    assert run_cli("train", "toy-2d", *TINY_TOY, "model.width=8", "--out", str(out), "--resume") == 2


def test_sample_with_nfe_budget(toy_run, tmp_path, capsys):
    png = tmp_path / "s.png"
    assert run_cli("sample", str(toy_run), "-n", "64", "--method", "heun", "--nfe", "10", "--out", str(png)) == 0
    arc = np.load(png.with_suffix(".npz"))
    assert arc["x"].shape == (64, 2) and 0 < int(arc["nfe"]) <= 10
    assert Image.open(png).size[0] > 100
    assert "NFE" in capsys.readouterr().out


def test_likelihood_toy_nats(toy_run, capsys):
    assert run_cli("likelihood", str(toy_run), "--limit", "20", "--batch", "10") == 0
    assert "nats/dim over 20 items" in capsys.readouterr().out
    assert run_cli("likelihood", str(toy_run), "--limit", "20", "--batch", "10", "--prior", "gaussian",
                   "--eps", "1e-3") == 0
    assert "nats/dim over 20 items" in capsys.readouterr().out


def test_encode_decode_round_trip(toy_run, tmp_path):
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    np.savez(tmp_path / "x.npz", x=x.numpy())
    assert run_cli("encode", str(toy_run), str(tmp_path / "x.npz"), "--out", str(tmp_path / "z.npz")) == 0
    assert run_cli("decode", str(toy_run), str(tmp_path / "z.npz"), "--out", str(tmp_path / "y.png")) == 0
    y = np.load(tmp_path / "y.npz")["x"]
    # adaptive solves at rtol = atol = 1e-5 both ways: the round trip error is a few 1e-4 at most
    assert np.abs(y - x.numpy()).max() < 5e-3


def test_eval_toy_metrics(toy_run, tmp_path):
    out = tmp_path / "ev"
    assert run_cli("eval", str(toy_run), "--metrics", "sliced-w2", "mmd", "nll", "--steps", "8", "--out", str(out)) == 0
    res = json.loads((out / "metrics.json").read_text())
    assert res["sampling"]["nfe"] == 8 and "mean" in res["likelihood"]
    assert (out / "samples.png").is_file()
    # the reported figures are those of the run's samples (same seed: the same draw) and data
    run = load_run(toy_run)
    x, _ = sample_run(run, run.config.evaluation.n_samples, steps=8, seed=0, progress=False)
    ref = config.build_dataset(run.config, run.config.evaluation.split).x
    again = sample_metrics(x, ref, ["sliced-w2", "mmd"], seed=0)
    assert res["sliced-w2"] == pytest.approx(again["sliced-w2"], rel=1e-6)
    assert res["mmd"] == pytest.approx(again["mmd"], rel=1e-6, abs=1e-9)


@pytest.fixture(scope="module")
def digits_job(tmp_path_factory):
    """The main job (`scoresde run digits-vp`) on a tiny network and budget."""
    # one FD-digits classifier per test session (tests/test_metrics.py uses the same directory)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCORESDE_CACHE", str(tmp_path_factory.getbasetemp() / "scoresde-cache"))
        out = tmp_path_factory.mktemp("digits") / "run"
        assert run_cli("run", "digits-vp", *TINY_DIGITS, "--out", str(out)) == 0
    return out


def test_main_job_on_tiny_digits(digits_job):
    res = json.loads((digits_job / "results.json").read_text())
    assert res["step"] == 4 and res["sampling"]["nfe"] == 4 and res["sampling"]["clip_denoised"] is True
    # a 4-step network is far from the data: its pixel FD lies above the floor of two halves of the data
    from scoresde import metrics

    test = config.build_dataset(load_run(digits_job).config, "test").x
    floor = metrics.pixel_frechet(test[: len(test) // 2], test[len(test) // 2:])
    assert res["pixel-fd"] > 2 * floor and res["fd-digits"] > 0
    assert res["likelihood"]["unit"] == "bits/dim" and res["likelihood"]["n"] == 4
    grid = Image.open(digits_job / "samples.png")
    assert grid.mode == "L" and grid.size == (7 * 33 + 1, 6 * 33 + 1)  # 40 images of 32 px in 7 columns
    assert (digits_job / "loss.png").is_file()


def test_samples_of_a_dequantized_run_lie_on_the_data_levels(digits_job, tmp_path):
    import numpy as np

    assert load_run(digits_job).config.data.dequantize  # the preset trains on dequantized digits
    assert run_cli("sample", str(digits_job), "-n", "6", "--out", str(tmp_path / "grid.png"), "--quiet") == 0
    assert run_cli("sample", str(digits_job), "--seeds", "0-5", "--format", "npz", "--outdir", str(tmp_path / "seeds"),
                   "--quiet") == 0
    with np.load(tmp_path / "grid.npz") as arc:
        grid = next(iter(arc.values()))
    shards = [np.load(f) for f in sorted((tmp_path / "seeds").glob("seeds_*.npz"))]
    for x in (grid, np.concatenate([sh["x"] for sh in shards])):
        k = (x + 1) * 8  # digits: x = 2 k / 16 - 1, k = 0 .. 16
        assert x.shape[1:] == (1, 8, 8) and np.abs(k - np.round(k)).max() < 1e-5 and k.min() > -1e-5 and k.max() < 16 + 1e-5


def test_likelihood_digits_is_resumable(digits_job, tmp_path, capsys):
    base = ("likelihood", str(digits_job), "--batch", "2", "--rtol", "1e-2", "--atol", "1e-2")
    assert run_cli(*base, "--limit", "4", "--out", str(tmp_path / "whole.json")) == 0
    whole = capsys.readouterr().out
    # an interrupted run: the first batch only, then the same file continued to the end
    assert run_cli(*base, "--limit", "2", "--out", str(tmp_path / "part.json")) == 0
    assert run_cli(*base, "--limit", "4", "--out", str(tmp_path / "part.json")) == 0
    resumed = capsys.readouterr().out.splitlines()[-1]
    assert "bits/dim over 4 items" in whole
    assert resumed.split("->")[0] == whole.split("->")[0]


def test_likelihood_prior_reference_shifts_by_the_data_constant(digits_job, tmp_path):
    # --prior-reference N adds C0 = log mean_j exp(-alpha_T^2 |x_j|^2 / (2 sigma_T^2)) over the first N
    # training digits to every log p: bits/dim move by exactly -C0 / (D log 2), the same for each image.
    base = ("likelihood", str(digits_job), "--batch", "2", "--limit", "2", "--rtol", "1e-2", "--atol", "1e-2")
    assert run_cli(*base, "--out", str(tmp_path / "plain.json")) == 0
    assert run_cli(*base, "--prior-reference", "50", "--out", str(tmp_path / "c0.json")) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())["values"]
    shifted = json.loads((tmp_path / "c0.json").read_text())["values"]
    run = load_run(digits_job)
    ref = config.build_dataset(run.config, "train").x[:50]
    c0 = likelihood.prior_constant(ref, run.sde, run.sde.T, run.sde.prior_std)
    expected = -c0 / (ref[0].numel() * math.log(2))
    assert expected > 2e-5  # a real shift (VP: small), 20x the tolerance below
    # log p is float32 (~1e2 nats, ulp ~8e-6 nats ~2e-7 bits/dim): 1e-6 is a few ulps
    assert [b - a for a, b in zip(plain, shifted)] == pytest.approx([expected] * 2, abs=1e-6)


def test_errors_are_one_line_and_debug_raises(tmp_path, capsys):
    assert run_cli("train", "no-such-preset", "--out", str(tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown preset 'no-such-preset'" in err
    assert run_cli("sample", str(tmp_path)) == 2
    assert "not a run folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown preset"):
        cli.main(["--debug", "train", "no-such-preset", "--out", str(tmp_path / "x")])


def test_overrides_may_follow_the_options(capsys):
    # key=value tokens after --out join the overrides; anything else stays an argparse error (exit 2)
    parser = cli.build_parser()
    args = cli.parse_args(parser, ["train", "toy-2d", "training.steps=3", "--out", "d", "training.lr=0.01"])
    assert args.overrides == ["training.steps=3", "training.lr=0.01"] and args.out == "d"
    with pytest.raises(SystemExit) as stop:
        cli.parse_args(parser, ["train", "toy-2d", "--out", "d", "--no-such-flag"])
    assert stop.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(parser, ["presets", "training.steps=3"])  # presets takes no overrides


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for name in ("presets", "train", "sample", "likelihood", "encode", "decode", "eval", "run"):
        assert name in out
    assert run_cli("presets") == 0
    assert "digits-vp" in capsys.readouterr().out


def test_clip_denoised_on_the_oracle():
    import scoresde as sd

    sde = sd.VPSDE()
    gmm = sd.GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-0.5, 0.2], [0.4, -0.3]]),
                             torch.full((2, 2), 0.05))
    t = torch.full((500,), 0.3)
    x0, _ = gmm.sample(500, generator=torch.Generator().manual_seed(0))
    xt = sde.marginal(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)))
    score = lambda x, t: gmm.score(x, t, sde)  # noqa: E731

    def denoised(s):
        a, s2 = sde.alpha(t)[:, None], sde.sigma(t)[:, None] ** 2
        return (xt + s2 * s(xt, t)) / a

    # the Tweedie estimate of a mixture with means in [-0.5, 0.5] stays within [-1, 1]: unchanged
    wide = clip_denoised(score, sde, (-1.0, 1.0))
    assert torch.allclose(wide(xt, t), score(xt, t), rtol=1e-5, atol=1e-5)
    # a narrow range: the new score's Tweedie estimate is exactly the clipped one
    narrow = clip_denoised(score, sde, (-0.1, 0.1))
    assert torch.allclose(denoised(narrow), denoised(score).clamp(-0.1, 0.1), atol=1e-5)
    assert (denoised(score).abs() > 0.1).any()


def test_label_dropout_trains_class_conditional_digits(tmp_path):
    out = tmp_path / "cfg"
    options = ["model.num_classes=10", "model.null_class=true", "training.label_dropout=0.2"]
    assert run_cli("train", "digits-vp", *TINY_DIGITS, *options, "--out", str(out)) == 0
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 4
    with pytest.raises(ValueError, match=r"training\.label_dropout"):
        cli.main(["--debug", "--quiet", "train", "toy-2d", *TINY_TOY, "training.label_dropout=0.2",
                  "--out", str(tmp_path / "unconditional")])
    assert not (tmp_path / "unconditional").exists()  # rejected before the run directory is written
    with pytest.raises(ValueError, match=r"training\.label_dropout must be < 1"):
        cli.main(["--debug", "--quiet", "train", "toy-2d", *TINY_TOY, "training.label_dropout=1.0",
                  "--out", str(tmp_path / "p1")])
