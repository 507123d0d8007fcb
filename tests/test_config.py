"""Configuration loading, validation errors naming the dotted key, overrides and builders."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import yaml

import scoresde as sd
from scoresde import config as C


def test_every_preset_loads_and_round_trips(tmp_path):
    names = C.preset_names()
    for required in ("toy-2d", "digits-vp", "digits-ve", "digits-subvp", "cifar10-vp-ddpmpp",
                     "cifar10-subvp-ddpmpp", "cifar10-ve-ncsnpp", "cifar10-ve-ncsnpp-deep"):
        assert required in names
    for name in names:
        cfg = C.load_config(name)
        C.save_config(cfg, tmp_path / f"{name}.yaml")
        assert C.load_config(str(tmp_path / f"{name}.yaml")) == cfg


def test_paper_hyper_parameters():
    vp, ve = C.load_config("cifar10-vp-ddpmpp"), C.load_config("cifar10-ve-ncsnpp")
    for cfg in (vp, ve):
        t = cfg.training
        assert (t.batch_size, t.lr, t.warmup, t.grad_clip, t.steps) == (128, 2e-4, 5000, 1.0, 1_300_000)
    assert vp.training.ema_decay == 0.9999 and ve.training.ema_decay == 0.999
    assert ve.data.centered is False and ve.loss.options["reduce"] == "sum"
    assert isinstance(C.build_sde(ve), sd.VESDE) and C.build_sde(ve).sigma(1.0) == pytest.approx(50.0)
    # The CIFAR-10 presets train the official network inside its official score function.
    deep = C.load_config("cifar10-ve-ncsnpp-deep").model
    assert deep.name == "score_sde" and deep.options["preset"] == "ncsnpp_deep_cifar10"


def test_base_chain_and_name_change_replaces_options():
    ve = C.load_config("digits-ve")
    # the VP options (beta_min, beta_max) do not leak into the VE section
    assert ve.sde.options == {"sigma_min": 0.01, "sigma_max": 10.0}
    assert ve.model == C.load_config("digits-vp").model


def test_overrides_parse_values_with_yaml():
    cfg = C.load_config("digits-vp", ["training.steps=7", "training.lr=1e-3", "model.ch_mult=[1, 2]",
                                      "sde.beta_max=10", "training.grad_clip=null", "sampling.options.eta=0.5"])
    assert cfg.training.steps == 7 and cfg.training.lr == 1e-3 and cfg.training.grad_clip is None
    assert cfg.model.options["ch_mult"] == [1, 2] and cfg.sde.options["beta_max"] == 10
    assert cfg.sampling.options == {"eta": 0.5}


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.stepz=3", "unknown key training.stepz; training accepts steps, batch_size"),
        ("training.steps=abc", "training.steps must be of type int"),
        ("training.steps=2.5", "training.steps must be of type int"),
        ("training.steps=0", "training.steps must be >= 1"),
        ("training.lr=-1", "training.lr must be > 0"),
        ("training.ema_decay=1.0", "training.ema_decay must be < 1"),
        ("data.centered=3", "data.centered must be of type bool"),
        ("data.source=mnist", "data.source must be one of"),
        ("evaluation.metrics=bpd", "evaluation.metrics must be a list"),
        ("sde.name=wiener", "sde.name must be one of"),
        ("sde.sigma=3", "unknown key sde.sigma"),
        ("sde.beta_min=-1", "sde: beta_min"),
        ("nonsense=1", "unknown key nonsense"),
        ("training=5", "training must be a mapping"),
        ("steps", "must look like section.key=value"),
    ],
)
def test_validation_errors_name_the_key(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        C.load_config("digits-vp", [override])


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'digits-xx'; presets: .*digits-vp"):
        C.load_config("digits-xx")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        C.load_config(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        C.load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "loop.yaml").write_text(f"base: {tmp_path / 'loop.yaml'}\n")
    with pytest.raises(ValueError, match="circular"):
        C.load_config(str(tmp_path / "loop.yaml"))


def test_user_yaml_with_base(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: toy-2d\ndata: {name: rings}\ntraining: {steps: 3}\n")
    cfg = C.load_config(str(tmp_path / "mine.yaml"))
    assert cfg.data.name == "rings" and cfg.training.steps == 3 and cfg.model.name == "mlp"


def test_a_folder_named_like_a_preset_does_not_shadow_it(tmp_path, monkeypatch):
    # `scoresde run digits-ve --out digits-ve` next to an earlier `digits-vp` run folder: the
    # preset's `base: digits-vp` must still name the shipped preset, not the folder.
    (tmp_path / "digits-vp").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = C.load_config("digits-ve")
    assert cfg.sde.name == "ve" and cfg.model.name == C.load_config("digits-vp").model.name


def test_builders():
    cfg = C.load_config("toy-2d", ["model.width=16", "model.depth=1"])
    model = C.build_model(cfg)
    x = torch.randn(5, 2)
    assert model(x, torch.full((5,), 0.5)).shape == (5, 2)
    ds = C.build_dataset(cfg, "test")
    assert ds.x.shape == (10_000, 2)
    x0, labels = next(C.build_batches(cfg, ds))
    assert x0.shape == (256, 2) and labels is None
    digits = C.load_config("digits-vp", ["model.nf=8"])
    net = C.build_model(digits)
    assert net(torch.zeros(2, 1, 8, 8), torch.full((2,), 0.3)).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="model.name must be one of"):
        C.build_model(C.load_config("digits-vp", ["model.name=resnet"]))
    with pytest.raises(ValueError, match="model: "):
        C.build_model(C.load_config("digits-vp", ["model.resblock=weird"]))


def test_dequantized_training_batches_of_quantised_data_only():
    cfg = C.load_config("digits-vp", ["data.dequantize=true"])
    ds = C.build_dataset(cfg, "test")
    x0, _ = next(C.build_batches(cfg, ds))
    v = (x0 + 1) / 2 * 17  # 17 digit levels: uniform in the cells [k, k + 1), not on the lattice 17 k / 16
    assert float((v - v.floor()).mean()) == pytest.approx(0.5, abs=0.02)  # SE sqrt(1/12/8192) = 0.003
    toy = C.load_config("toy-2d", ["data.dequantize=true"])  # continuous: the batches are the data's own
    points = C.build_dataset(toy, "test")
    assert C.training_dequantization(toy, points) is None
    assert torch.equal(next(C.build_batches(toy, points))[0], next(C.build_batches(C.load_config("toy-2d"), points))[0])


def test_build_loss_follows_the_section():
    cfg = C.load_config("toy-2d")
    loss = C.build_loss(cfg, C.build_sde(cfg))
    assert loss.parameterization.kind == "v"
    with pytest.raises(ValueError, match="loss: "):
        C.build_loss(C.load_config("toy-2d", ["loss.weighting=nope"]), C.build_sde(cfg))


def test_overriding_a_name_switches_to_that_sections_defaults():
    rf = C.load_config("digits-vp", ["sde.name=rf"])  # digits-vp's beta_min/beta_max belong to VP
    assert rf.sde.options == {} and isinstance(C.build_sde(rf), sd.RectifiedFlow)
    ddpm = C.load_config("toy-2d", ["loss.name=ddpm"])  # toy-2d's DSM weighting/parameterization go
    assert ddpm.loss.options == {} and type(C.build_loss(ddpm, C.build_sde(ddpm))).__name__ == "DDPMLoss"
    for order in (["sde.sigma_max=5", "sde.name=ve"], ["sde.name=ve", "sde.sigma_max=5"]):
        ve = C.load_config("digits-vp", order)  # options given beside the new name apply on top
        assert ve.sde.options == {"sigma_max": 5} and C.build_sde(ve).sigma(1.0) == pytest.approx(5.0)
    same = C.load_config("digits-vp", ["sde.name=vp"])  # the same name keeps the section
    assert same.sde == C.load_config("digits-vp").sde


@pytest.mark.parametrize("override", ["training.lr=.nan", "training.lr=.inf", "training.grad_clip=.inf",
                                      "evaluation.rtol=.nan"])
def test_non_finite_numbers_are_refused(override):
    with pytest.raises(ValueError, match=f"{re.escape(override.split('=')[0])} must be finite"):
        C.load_config("toy-2d", [override])


def test_unknown_sampler_name_is_refused_at_load_time():
    with pytest.raises(ValueError, match="sampling.method must be one of .*dpm-solver.*, got 'nosuch'"):
        C.load_config("toy-2d", ["sampling.method=nosuch"])


def test_describe_lists_every_key_with_its_value_and_meaning():
    cfg = C.load_config("toy-2d", ["training.sample_every=10", "sde.beta_max=12"])
    rows = {key: (value, doc) for key, value, doc in C.describe(cfg)}
    for section in ("data", "training", "sampling", "evaluation"):  # every documented field
        for f in dataclasses.fields(getattr(cfg, section)):
            value, doc = rows[f"{section}.{f.name}"]
            assert value == getattr(getattr(cfg, section), f.name) and doc
    assert rows["training.sample_every"][0] == 10
    assert rows["sde.beta_max"] == (12, "option of vp")
    assert rows["sde.eps"][1] == "option of vp (default)"  # the constructor's default, not given
    assert rows["sde.eps"][0] == C.build_sde(cfg).eps
    assert rows["model.width"] == (128, "option of mlp") and rows["model.dim"] == (2, "option of mlp")
    assert rows["loss.weighting"] == ("sigma2", "option of dsm") and "loss.sde" not in rows


def test_config_command_prints_the_resolved_config_and_its_keys(capsys):
    from scoresde import cli

    assert cli.main(["config", "digits-vp", "sde.name=ve", "sde.sigma_max=5"]) == 0
    text = capsys.readouterr().out
    resolved = yaml.safe_load(text)  # the YAML part parses back to the resolved config ('#' lines are comments)
    assert resolved == C.load_config("digits-vp", ["sde.name=ve", "sde.sigma_max=5"]).to_dict()
    assert re.search(r"^# sde.sigma_min = 0.01 +option of ve \(default\)$", text, re.MULTILINE)
    assert re.search(r"^# training.sample_every = null +steps between sample grids", text, re.MULTILINE)
    assert cli.main(["config", "digits-vp", "--no-keys"]) == 0
    assert "#" not in capsys.readouterr().out


def test_sample_grids_and_evaluation_losses_from_the_config(tmp_path):
    from scoresde import cli

    out = tmp_path / "run"
    assert cli.main(["--quiet", "train", "toy-2d", "training.steps=4", "training.batch_size=16", "model.width=8",
                     "model.depth=1", "data.n=64", "sampling.n=16", "sampling.steps=2", "training.log_every=2",
                     "training.sample_every=2", "training.eval_every=4", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_00000002.png", "step_00000004.png"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert ["eval_loss" in r for r in records] == [False, True]  # at step 4 only
