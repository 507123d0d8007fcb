"""Runs that never get stuck: real training processes killed at chosen moments resume to the
uninterrupted result; failed starts leave nothing; resumes are honest; one trainer per folder;
every bad command-line input is one line.

The kills fork the test process (``tests/fixtures/faults.py``), so each costs milliseconds of
start-up instead of seconds of imports; resumes are bit-identical on CPU (the Trainer's seeded
streams), which is what the comparisons with the uninterrupted run assert.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from fixtures import faults

from scoresde import checkpoint, cli

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kills fork the test process")

STEPS = 14  # checkpoints at 4, 8, 12 and the last step; logs every 2 steps
TINY = [f"training.steps={STEPS}", "training.batch_size=32", "training.log_every=2", "training.checkpoint_every=4",
        "training.keep=2", "model.width=8", "model.depth=1", "data.n=200", "sampling.n=20",
        "evaluation.n_samples=20", "evaluation.likelihood_n=10", "evaluation.likelihood_batch=10"]


def run(*argv: str) -> int:
    """``scoresde`` in this process; argparse's own errors (SystemExit) give their status."""
    try:
        return cli.main(["--quiet", *argv])
    except SystemExit as stop:
        return int(stop.code)


def train(out: Path, *extra: str) -> int:
    return run("train", "toy-2d", *TINY, *extra, "--out", str(out))


def killed_train(out: Path, moment: str, nth: int, *extra: str) -> str | int:
    return faults.run_cli(["train", "toy-2d", *TINY, *extra, "--out", str(out)], moment, nth)


def final(out: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(out / f"ckpt_{STEPS:08d}.json").tensors


def log_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run of this module on one thread, like the forked children: the comparisons are
    bitwise, and a reduction split over two threads rounds differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run (in this process: it also pays the imports the forks inherit)."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    assert train(out) == 0
    return out


def assert_same_as(reference: Path, out: Path) -> None:
    ref, got = final(reference), final(out)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert log_steps(out) == log_steps(reference) == list(range(2, STEPS + 1, 2))  # none twice, none torn
    assert len((out / "log.csv").read_text().splitlines()) == 1 + len(log_steps(reference))
    litter = [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name.endswith(".corrupt")]
    assert litter == [] and [s for s, _ in checkpoint.list_checkpoints(out)] == [12, STEPS]


# (moment, its n-th occurrence, the newest valid checkpoint the kill leaves)
KILLS = [("tensors", 2, 4),  # ckpt_8's tensor file written to its temporary name
         ("sidecar", 2, 4),  # ckpt_8's tensors renamed, its sidecar not: an orphan tensor file
         ("rotation", 1, 12),  # at step 12, ckpt_4's sidecar deleted, its tensor file not yet
         ("log", 3, 4),  # half of step 6's log record written
         ("step", 7, 4)]  # between checkpoints


@pytest.mark.parametrize("moment, nth, newest", KILLS, ids=[k[0] for k in KILLS])
def test_a_killed_run_resumes_to_the_uninterrupted_result(reference, tmp_path, moment, nth, newest):
    out = tmp_path / "run"
    assert killed_train(out, moment, nth) == "killed"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read-only look: nothing to skip
        assert checkpoint.load_latest(out).step == newest
    assert train(out, "--resume") == 0
    assert_same_as(reference, out)


def test_a_kill_while_config_yaml_is_written_leaves_no_run(reference, tmp_path, capsys):
    out = tmp_path / "run"
    assert killed_train(out, "config", 1) == "killed"
    assert not (out / "config.yaml").exists()  # never a 0-byte config.yaml
    assert train(out, "--resume") == 2  # nothing to resume: said so, naming what is there
    assert "holds no run to resume" in capsys.readouterr().err
    assert train(out, "--resume-or-start") == 0
    assert_same_as(reference, out)


def test_config_yaml_is_written_once(reference, tmp_path):
    out = tmp_path / "run"
    assert killed_train(out, "step", 6) == "killed"
    before = os.stat(out / "config.yaml")
    assert train(out, "--resume") == 0
    after = os.stat(out / "config.yaml")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.parametrize("bad", [
    ["data.source=npz", "data.path=no/such.npz"],  # a data path typo
    ["training.batch_size=100000"],  # more than the data set
    ["training.lr=.nan"],
    ["model.dim=3"],  # the network does not fit the data
    ["sampling.method=nosuch"],
    ["evaluation.metrics=[bpd, nosuch]"],
    ["training.lr=1e38"],  # fails only while training, before the first checkpoint
], ids=["data-path", "batch-size", "lr-nan", "model-dim", "sampler", "metric", "lr-1e38"])
def test_a_failed_start_leaves_nothing_behind(tmp_path, capsys, bad):
    out = tmp_path / "new" / "run"
    assert train(out, *bad) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scoresde: error:") and "\n" not in err and "Traceback" not in err
    assert not out.exists() and not out.parent.exists()  # not even the folders it made
    assert run("train", "toy-2d", *TINY, "training.steps=2", "--out", str(out)) == 0  # the corrected command


def test_a_failed_start_in_an_existing_folder_removes_only_its_own_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train(out, "training.lr=1e38") == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_no_valid_checkpoint_is_an_error_unless_asked_to_start_again(reference, tmp_path, capsys):
    out = tmp_path / "run"
    assert killed_train(out, "step", 10) == "killed"  # checkpoints 4 and 8
    for _, sidecar in checkpoint.list_checkpoints(out):
        tensors = sidecar.with_suffix(".safetensors")
        tensors.write_bytes(tensors.read_bytes()[:64])  # both truncated
    with pytest.warns(UserWarning, match="quarantined"):
        assert train(out, "--resume") == 2
    err = capsys.readouterr().err
    assert "no valid checkpoint to resume from (found: ckpt_00000008.json: corrupt" in err
    assert "ckpt_00000004.json: corrupt" in err and "--resume-or-start" in err
    assert sorted(p.name for p in out.glob("*.corrupt")) == [
        "ckpt_00000004.json.corrupt", "ckpt_00000004.safetensors.corrupt",
        "ckpt_00000008.json.corrupt", "ckpt_00000008.safetensors.corrupt"]
    assert train(out, "--resume-or-start") == 0  # from step 0: the same run again
    ref, got = final(reference), final(out)
    assert all(torch.equal(ref[k], got[k]) for k in ref) and log_steps(out) == log_steps(reference)


def test_a_checkpoint_that_does_not_fit_is_skipped_on_resume(reference, tmp_path, capsys):
    out, other = tmp_path / "run", tmp_path / "other"
    assert killed_train(out, "step", 10) == "killed"  # checkpoints 4 and 8
    assert run("train", "toy-2d", *TINY, "model.width=4", "training.steps=4", "--out", str(other)) == 0
    foreign = checkpoint.load(other / "ckpt_00000004.json")  # valid, but another network's shapes
    meta = {k: v for k, v in foreign.meta.items() if k != "config"}  # else refused as another run's
    checkpoint.save(out, 9, foreign.tensors, meta)
    with pytest.warns(UserWarning, match=r"ckpt_00000009.safetensors: tensor \S+ has shape"):
        assert train(out, "--resume") == 0  # falls back to ckpt_8
    assert_same_as(reference, out)
    bare = checkpoint.save(tmp_path / "bare", 4, foreign.tensors, {})  # no record of its config
    assert run("sample", str(reference), "--checkpoint", str(bare)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("scoresde: error:") and "weights do not fit" in err


def test_a_config_yaml_that_no_longer_matches_the_weights(reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("beta_max: 20.0", "beta_max: 10.0"))  # the weights still load
    assert run("sample", str(out), "-n", "4") == 2
    err = capsys.readouterr().err.strip()
    assert "config.yaml no longer matches" in err and "sde section" in err and "\n" not in err


def test_a_second_trainer_on_one_folder_is_refused(reference, tmp_path, capsys):
    out = tmp_path / "run"
    assert killed_train(out, "step", 5) == "killed"
    with checkpoint.lock_directory(out):  # a first trainer holds the folder
        assert train(out, "--resume") == 2
        assert "in use by another trainer" in capsys.readouterr().err
        assert faults.run_cli(["train", "toy-2d", *TINY, "--out", str(out), "--resume"]) == 2  # another process
    assert train(out, "--resume") == 0
    assert_same_as(reference, out)


@pytest.mark.parametrize("argv, message", [
    (["sample", "{run}", "--device", "nosuch"], "--device 'nosuch' is not a torch device"),
    (["sample", "{run}", "--threads", "-1"], "argument --threads: must be a positive integer, got -1"),
    (["sample", "{run}", "--threads", "0"], "argument --threads: must be a positive integer, got 0"),
    (["sample", "{run}", "-n", "0"], "argument -n: must be a positive integer, got 0"),
    (["likelihood", "{run}", "--limit", "-1"], "argument --limit: must be a positive integer, got -1"),
    (["likelihood", "{run}", "--limit", "0"], "argument --limit: must be a positive integer, got 0"),
    (["likelihood", "{run}", "--batch", "0"], "argument --batch: must be a positive integer, got 0"),
    (["train", "toy-2d", "--out", "{file}"], "is a file, not a run folder"),
    (["sample", "{run}", "--seed", "-3"], "argument --seed: must be a non-negative integer, got -3"),
])
def test_bad_command_line_inputs_are_one_line_errors(reference, tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("")
    argv = [a.format(run=reference, file=tmp_path / "file") for a in argv]
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a build without CUDA")
def test_device_cuda_on_a_cpu_build(reference, capsys):
    assert run("sample", str(reference), "--device", "cuda") == 2
    assert "no usable CUDA" in capsys.readouterr().err


def test_a_bare_cuda_device_under_torchrun_is_the_local_rank(monkeypatch):
    # ranks sharding `sample --seeds` take one GPU each: "cuda" means cuda:LOCAL_RANK under torchrun
    from scoresde.cli.args import device_of

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert device_of("cuda") == torch.device("cuda:3") and device_of(None) == torch.device("cuda:3")
    assert device_of("cuda:1") == torch.device("cuda:1") and device_of("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert device_of("cuda") == torch.device("cuda")


def test_an_empty_config_yaml_is_named_as_such(reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "config.yaml").write_bytes(b"")  # what a non-atomic write killed at the wrong moment left
    for argv in (["sample", str(out), "-n", "4"], ["train", "toy-2d", *TINY, "--out", str(out), "--resume"]):
        assert run(*argv) == 2
        err = capsys.readouterr().err.strip()
        assert "config.yaml: empty file" in err and "\n" not in err


def test_resume_refuses_weights_trained_for_another_sde(reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("beta_max: 20.0", "beta_max: 10.0"))  # edited by hand
    assert train(out, "sde.beta_max=10", "training.steps=16", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert "config.yaml no longer matches" in err and "ckpt_00000014.json" in err and "\n" not in err


def test_negative_counts_where_zero_means_off(reference, capsys):
    assert run("likelihood", str(reference), "--prior-reference", "-3") == 2
    assert "argument --prior-reference: must be a non-negative integer, got -3" in capsys.readouterr().err


def test_a_start_failing_after_its_checkpoints_keeps_them(reference, tmp_path, monkeypatch):
    from scoresde.train import Trainer

    out = tmp_path / "run"
    assert killed_train(out, "step", 5) == "killed"  # ckpt_4
    (out / "ckpt_00000900.json").write_text("{torn")  # a stray file numbered above every real one
    step = Trainer.train_step

    def failing(self):
        if self.step == 10:
            raise ValueError("injected failure in step 11")
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", failing)
    with pytest.warns(UserWarning, match="quarantined"):
        assert train(out, "--resume") == 2
    assert [s for s, _ in checkpoint.list_checkpoints(out)] == [4, 8]  # ckpt_8 of the failed start is kept
    monkeypatch.undo()
    assert train(out, "--resume") == 0
    ref, got = final(reference), final(out)
    assert all(torch.equal(ref[k], got[k]) for k in ref) and log_steps(out) == log_steps(reference)


def test_trainer_resume_true_needs_a_valid_checkpoint_and_auto_does_not(tmp_path):
    from scoresde.nets import MLP
    from scoresde.train import Trainer

    def make(resume):
        torch.manual_seed(0)
        return Trainer(MLP(2, width=8, depth=1), lambda model, x, labels=None, generator=None: model(
            x, torch.full((x.shape[0],), 0.5)).square().mean(), torch.randn(16, 2), batch_size=4,
            out_dir=tmp_path, progress=False, resume=resume)

    with pytest.raises(checkpoint.NoCheckpointError, match="found: no checkpoints"):
        make(True)
    assert make("auto").step == 0
    trainer = make(False)
    trainer.fit(2)
    assert make(True).step == 2
