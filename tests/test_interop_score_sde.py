"""Official score_sde checkpoints as scoresde runs: the imported run's score equals the official
EMA score stored beside each fixture (tests/fixtures/score_sde/README.md), hostile pickles are
refused unexecuted, and the official configs build networks of the official sizes."""

import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import scoresde as sd
from scoresde import config as C
from scoresde.interop import score_sde as I
from scoresde.interop.official_configs import CONFIGS

FIXTURES = Path(__file__).parent / "fixtures" / "score_sde"
NAMES = ["vp_ddpmpp_continuous", "subvp_ncsnpp_continuous", "ve_ncsnpp_continuous", "ve_ncsnpp_discrete"]
SDE_OF = {"vp": sd.VPSDE, "subvp": sd.SubVPSDE, "ve": sd.VESDE}


def _import(name: str, out: Path, checkpoint: Path | None = None) -> Path:
    config = I.read_config_json(FIXTURES / f"{name}.json")
    return I.import_checkpoint(checkpoint or FIXTURES / f"{name}.pth", out, config)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample ``|a - b| / |b|`` (2-norms over all pixels)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return (a - b).norm(dim=1) / b.norm(dim=1)


@pytest.mark.parametrize("name", NAMES)
def test_imported_run_gives_the_official_score(name, tmp_path):
    run = sd.load_run(_import(name, tmp_path / "run"))
    io = load_file(FIXTURES / f"{name}.io.safetensors")
    # The bound, 1e-5 relative; the same float32 operations in the same order measure
    # 3e-7 to 5e-7, so a wrong time input, scale, sign or weight mapping (errors of order 1) fails.
    assert _relative_error(run.score_fn(io["x"], io["t"]), io["score"]).max() < 1e-5
    sde_name = name.split("_")[0]
    assert type(run.sde) is SDE_OF[sde_name]
    assert run.sample_shape == (3, 8, 8)
    assert run.config.sde.options["eps"] == (1e-5 if sde_name == "ve" else 1e-3)  # official sampling eps
    assert run.step == 1234


def test_ema_weights_give_the_score_and_raw_weights_are_kept(tmp_path):
    name = "vp_ddpmpp_continuous"
    state = I.read_checkpoint(FIXTURES / f"{name}.pth")
    # In the committed fixture the raw weights share the EMA tensors; make them differ.
    state["model"] = {k: v * 1.5 if k.endswith("weight") else v for k, v in state["model"].items()}
    torch.save(state, tmp_path / "perturbed.pth")
    root = _import(name, tmp_path / "run", tmp_path / "perturbed.pth")
    io = load_file(FIXTURES / f"{name}.io.safetensors")
    ema_score = sd.load_run(root).score_fn(io["x"], io["t"])
    raw_score = sd.load_run(root, ema=False).score_fn(io["x"], io["t"])
    assert _relative_error(ema_score, io["score"]).max() < 1e-5  # as above
    assert _relative_error(raw_score, io["score"]).min() > 1e-2  # weights x1.5 change the score at O(1)


def test_keys_without_the_dataparallel_prefix_are_accepted(tmp_path):
    name = "ve_ncsnpp_discrete"
    state = I.read_checkpoint(FIXTURES / f"{name}.pth")
    state["model"] = {k.removeprefix("module."): v for k, v in state["model"].items()}  # a non-DataParallel save
    torch.save(state, tmp_path / "plain.pth")
    io = load_file(FIXTURES / f"{name}.io.safetensors")
    run = sd.load_run(_import(name, tmp_path / "run", tmp_path / "plain.pth"))
    assert _relative_error(run.score_fn(io["x"], io["t"]), io["score"]).max() < 1e-5  # as above


def test_numpy_scalars_of_numpy_1_and_2_checkpoints_are_allowed(tmp_path):
    # The official checkpoints were written under NumPy 1 (module numpy.core.multiarray), the
    # fixtures under NumPy 2 (numpy._core.multiarray); plain weights_only loading refuses both.
    src = FIXTURES / "vp_ddpmpp_continuous.pth"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(src, weights_only=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp_path / "numpy1.pth", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                assert data.count(b"cnumpy._core.multiarray\nscalar\n") == 1
                data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            zout.writestr(info, data)
    for path in (src, tmp_path / "numpy1.pth"):
        lr = I.read_checkpoint(path)["optimizer"]["param_groups"][0]["lr"]
        assert isinstance(lr, np.float64) and lr == pytest.approx(4.936e-05)


class _RunsCode:
    """Unpickles to ``exec(source)``: creates the marker file if the loader ever runs it."""

    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return exec, (self.source,)


class _CodeObject:
    """Unpickles to ``eval(marshal.loads(code bytes))``: a pickled code object."""

    def __init__(self, source: str):
        import marshal

        self.code = marshal.dumps(compile(source, "<hostile>", "exec"))

    def __reduce__(self):
        import marshal

        return eval, (_Call(marshal.loads, self.code),)


class _Call:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


@pytest.mark.parametrize("payload", [_RunsCode, _CodeObject])
def test_hostile_checkpoint_is_refused_without_running(payload, tmp_path):
    marker = tmp_path / "pwned"
    state = I.read_checkpoint(FIXTURES / "vp_ddpmpp_continuous.pth")
    state["optimizer"]["hook"] = payload(f"open({str(marker)!r}, 'w').write('x')")
    path = tmp_path / "hostile.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="refused to load"):
        I.read_checkpoint(path)
    assert not marker.exists()
    # The same file does run its code under a full unpickle: the payload is real.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_not_a_checkpoint_is_one_clear_error(tmp_path):
    good = (FIXTURES / "vp_ddpmpp_continuous.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 3])
    (tmp_path / "junk.pth").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        I.read_checkpoint(tmp_path / "truncated.pth")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        I.read_checkpoint(tmp_path / "junk.pth")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an official score_sde checkpoint"):
        I.read_checkpoint(tmp_path / "other.pth")
    with pytest.raises(ValueError, match="unknown official config"):
        I.official_config("vp/cifar10_nonexistent")
    bad = dict(CONFIGS["vp/cifar10_ddpmpp_continuous"])
    bad["model"] = bad["model"] | {"nonlinearity": "elu"}
    with pytest.raises(ValueError, match="model.nonlinearity='elu'"):
        I.run_config(bad)


def test_mismatched_config_is_refused(tmp_path):
    config = I.read_config_json(FIXTURES / "vp_ddpmpp_continuous.json")
    config["model"] = config["model"] | {"nf": 32}
    with pytest.raises(ValueError, match="does not fit the config's network: .* has shape"):
        I.import_checkpoint(FIXTURES / "vp_ddpmpp_continuous.pth", tmp_path / "run", config)
    config["model"] = config["model"] | {"nf": 16, "fir": True, "progressive_input": "residual"}
    with pytest.raises(ValueError, match="does not fit the config's network: the checkpoint has no tensor"):
        I.import_checkpoint(FIXTURES / "vp_ddpmpp_continuous.pth", tmp_path / "run", config)


def _official_count(name: str) -> int:
    """Elements of the network's state (the official parameters: our buffers hold only the fixed
    Fourier frequencies, an official parameter), built on the meta device."""
    cfg = I.run_config(I.official_config(name))
    with torch.device("meta"):
        model = C.build_model(cfg)
    return sum(v.numel() for v in model.state_dict().values())


# Exact counts of the official code's model.parameters() (score_sde_pytorch at cb1f359, built on
# CPU); the rounded figures are those the paper and the issue quote.
OFFICIAL_COUNTS = {
    "vp/cifar10_ddpmpp_continuous": 61_804_419,  # paper: 61.8 M
    "ve/cifar10_ncsnpp_continuous": 62_758_915,  # paper: 62.8 M
    "vp/cifar10_ddpmpp_deep_continuous": 106_632_579,  # 107 M (deep variants)
    "ve/cifar10_ncsnpp_deep_continuous": 107_587_075,  # 107 M (deep variants)
    "vp/cifar10_ncsnpp_continuous": 62_693_251,
    "vp/ddpm/cifar10": 35_218_947,
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_official_parameter_counts(name):
    n = _official_count(name)
    print(f"{name}: {n:,} ({n / 1e6:.1f} M)")
    assert n == OFFICIAL_COUNTS[name]


def test_every_official_config_maps_every_tensor_once():
    for name in sorted(CONFIGS):
        cfg = I.run_config(I.official_config(name))
        with torch.device("meta"):
            model = C.build_model(cfg)
        layout = I.official_layout(model.net)
        ours = [f"net.{key}" for key, _, _ in layout]
        official = [k for _, names, _ in layout for k in names]
        assert sorted(ours) == sorted(model.state_dict()), name
        assert len(set(official)) == len(official), name
        # all_modules indices appear in increasing order: the walk is the construction order.
        indices = [int(k.split(".")[1]) for k in official]
        assert indices == sorted(indices), name


def test_cli_import_then_sample(tmp_path, capsys):
    from scoresde.cli.main import main

    name, out = "ve_ncsnpp_continuous", tmp_path / "run"
    argv = ["import", "score-sde", str(FIXTURES / f"{name}.pth"), "--config-json", str(FIXTURES / f"{name}.json"),
            "--out", str(out)]
    assert main(argv) == 0
    assert "VESDE" in capsys.readouterr().out
    io = load_file(FIXTURES / f"{name}.io.safetensors")
    assert _relative_error(sd.load_run(out).score_fn(io["x"], io["t"]), io["score"]).max() < 1e-5  # as above
    assert main(argv) == 2  # the folder is a run now: never overwritten
    assert "already a run folder" in capsys.readouterr().err
    # The imported run samples without any training data (data.shape), here with its own PC sampler.
    assert main(["sample", str(out), "-n", "2", "--steps", "3", "--out", str(tmp_path / "s.png")]) == 0
    with np.load(tmp_path / "s.npz") as arc:
        assert arc["x"].shape == (2, 3, 8, 8) and np.isfinite(arc["x"]).all()
    assert main(["import", "score-sde", str(FIXTURES / f"{name}.pth"), "--config", "ve/cifar10_ncsnpp_continuous",
                 "--out", str(tmp_path / "full")]) == 2  # the 128-channel official network does not fit nf 16
    assert "does not fit" in capsys.readouterr().err


def test_export_is_one_world_readable_safetensors_file(tmp_path):
    from scoresde.cli.main import main
    from scoresde.interop.export import read_export

    name = "subvp_ncsnpp_continuous"
    root = _import(name, tmp_path / "run")
    path = tmp_path / "model.safetensors"
    assert main(["export", str(root), "--out", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    tensors = load_file(path)
    run = sd.load_run(root)
    assert tensors.keys() == run.model.state_dict().keys()
    cfg, state, step = read_export(path)
    assert cfg.to_dict() == run.config.to_dict() and step == run.step
    model = C.build_model(cfg)
    model.load_state_dict(state)
    io = load_file(FIXTURES / f"{name}.io.safetensors")
    score = sd.score_fn_from_model(model.eval(), run.sde, "score")(io["x"], io["t"])
    assert _relative_error(score, io["score"]).max() < 1e-5  # as above: the export is the EMA network
