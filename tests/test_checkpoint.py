"""Checkpoints: round trips, pruning, atomicity, and refusal of truncated or tampered files."""

import json
import os
import warnings

import pytest
import torch

from scoresde import checkpoint as ckpt


def _tensors(step: int) -> dict:
    return {"w": torch.full((3, 2), float(step)), "step": torch.tensor(step), "h": torch.arange(4.0).half()}


def test_roundtrip_prune_and_no_temporaries(tmp_path):
    for step in (10, 20, 30):
        ckpt.save(tmp_path, step, _tensors(step), {"config": {"lr": 1e-3}, "step": step}, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [20, 30]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt_00000020.json", "ckpt_00000020.safetensors", "ckpt_00000030.json", "ckpt_00000030.safetensors"]
    latest = ckpt.load_latest(tmp_path)
    assert latest.step == 30 and latest.meta == {"config": {"lr": 1e-3}, "step": 30}
    for k, v in _tensors(30).items():
        assert torch.equal(latest.tensors[k], v) and latest.tensors[k].dtype == v.dtype
    sidecar = json.loads(latest.path.with_suffix(".json").read_text())
    assert sidecar["file"] == latest.path.name and len(sidecar["sha256"]) == 64
    assert ckpt.load_latest(tmp_path / "missing") is None


def test_optimizer_state_pack_roundtrip():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.8, 0.95))
    for _ in range(2):
        opt.zero_grad()
        p.square().sum().backward()
        opt.step()
    structure, tensors = ckpt.pack(opt.state_dict(), "optim")
    tensors = {k: v.clone() for k, v in tensors.items()}  # as if read back from a file
    restored_state = ckpt.unpack(json.loads(json.dumps(structure)), tensors)
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.AdamW([q], lr=0.5)
    opt2.load_state_dict(restored_state)
    for o, w in ((opt, p), (opt2, q)):
        o.zero_grad()
        w.square().sum().backward()
        o.step()
    assert torch.equal(p, q)  # the same state gives bit-identical updates
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    with pytest.raises(TypeError, match="cannot store"):
        ckpt.pack({"f": object()}, "x")


def test_truncated_checkpoint_refused_and_skipped(tmp_path):
    ckpt.save(tmp_path, 1, _tensors(1), {})
    bad = ckpt.save(tmp_path, 2, _tensors(2), {})
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="ckpt_00000002.safetensors: checksum mismatch"):
        ckpt.load(bad)
    with pytest.warns(UserWarning, match="ckpt_00000002.safetensors"):
        latest = ckpt.load_latest(tmp_path)
    assert latest.step == 1


def test_tampered_header_refused_even_with_matching_checksum(tmp_path):
    good = ckpt.save(tmp_path, 1, _tensors(1), {})
    bad = ckpt.save(tmp_path, 2, _tensors(2), {})
    data = bytearray(bad.read_bytes())
    data[8:12] = b"@@@@"  # corrupt the JSON header that follows the 8-byte length
    bad.write_bytes(bytes(data))
    sidecar = bad.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = ckpt._sha256(bad)  # an attacker (or bug) that also rewrote both checksums
    meta["sidecar_sha256"] = ckpt._canonical_sha256({k: v for k, v in meta.items() if k != "sidecar_sha256"})
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="ckpt_00000002.safetensors: unreadable"):
        ckpt.load(bad)
    with pytest.warns(UserWarning, match="unreadable"):
        assert ckpt.load_latest(tmp_path).path == good


def test_incomplete_checkpoint_without_sidecar(tmp_path):
    ckpt.save(tmp_path, 1, _tensors(1), {})
    path = ckpt.save(tmp_path, 2, _tensors(2), {})
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="ckpt_00000002.json: malformed sidecar"):
        ckpt.load(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="sidecar missing"):
        ckpt.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint without sidecar is invisible, not a warning
        assert ckpt.load_latest(tmp_path).step == 1
    with pytest.raises(ValueError, match="JSON"):
        ckpt.save(tmp_path, 3, _tensors(3), {"bad": object()})


def test_sidecar_metadata_is_checksummed(tmp_path):
    path = ckpt.save(tmp_path, 1, _tensors(1), {"lr": 1e-3})
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["meta"]["lr"] = 1.0  # the tensors' checksum still matches
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="ckpt_00000001.json: sidecar checksum mismatch"):
        ckpt.load(path)


def test_resume_point_goes_by_verified_step_and_quarantines(tmp_path):
    ckpt.save(tmp_path, 150, _tensors(150), {})
    good = ckpt.save(tmp_path, 210, _tensors(210), {})
    for suffix in (".json", ".safetensors"):  # a link named step 999 holding step 150
        (tmp_path / f"ckpt_00000999{suffix}").symlink_to(tmp_path / f"ckpt_00000150{suffix}")
    with pytest.raises(ckpt.CheckpointError, match="holds step 150, which disagrees with its file name"):
        ckpt.load(tmp_path / "ckpt_00000999.json")
    with pytest.warns(UserWarning, match="quarantined checkpoint: .*ckpt_00000999.json"):
        found = ckpt.resume_point(tmp_path)
    assert found.path == good and found.step == 210
    assert (tmp_path / "ckpt_00000999.json.corrupt").is_symlink()
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [150, 210]  # never seen again


def test_rotation_ignores_higher_numbered_corrupt_files(tmp_path):
    # stray (corrupt) files from a later point must not push each new checkpoint out
    (tmp_path / "ckpt_00000900.json").write_text("{torn")
    (tmp_path / "ckpt_00000901.json").write_text("{torn")
    for step in (10, 20, 30):
        ckpt.save(tmp_path, step, _tensors(step), {}, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [20, 30, 900, 901]
    with pytest.warns(UserWarning, match="quarantined"):
        assert ckpt.resume_point(tmp_path).step == 30
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [20, 30]


def test_no_valid_checkpoint_is_an_error_listing_what_was_found(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"no valid checkpoint to resume from \(found: no checkpoints\)"):
        ckpt.resume_point(tmp_path)
    path = ckpt.save(tmp_path, 5, _tensors(5), {})
    path.write_bytes(b"")  # a zero-byte tensor file
    with pytest.warns(UserWarning), pytest.raises(
            ckpt.CheckpointError, match=r"found: ckpt_00000005.json: corrupt, renamed \*.corrupt\)"):
        ckpt.resume_point(tmp_path)
    assert ckpt.resume_point(tmp_path, required=False) is None  # a fresh start when asked for
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_00000005.json.corrupt",
                                                           "ckpt_00000005.safetensors.corrupt"]


def test_litter_of_killed_writes_is_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # exited: its temporaries are litter
    ckpt.save(tmp_path, 1, _tensors(1), {})
    stale = tmp_path / f".ckpt_00000002.safetensors.{dead_pid}.tmp"
    live = tmp_path / f".samples.png.{os.getppid()}.tmp"  # a live writer's file stays
    orphan = tmp_path / "ckpt_00000002.safetensors"  # killed between the tensors and the sidecar
    for p in (stale, live, orphan):
        p.write_bytes(b"x")
    assert ckpt.clean_litter(tmp_path) == sorted([stale, orphan])
    assert live.exists() and ckpt.resume_point(tmp_path).step == 1


def test_check_layout_names_the_file_and_the_tensor(tmp_path):
    path = ckpt.save(tmp_path, 1, {"model.w": torch.zeros(3, 2), "optim.0": torch.zeros(1)}, {"ema": {}})
    found = ckpt.load(path)
    ok = {"model.w": torch.zeros(3, 2)}
    ckpt.check_layout(found, ok, meta_keys=("ema",), other_prefixes=("optim.",))
    cases = [
        ({"expected": {"model.w": torch.zeros(2, 2)}, "other_prefixes": ("optim.",)}, r"tensor model.w has shape \(3, 2\), expected \(2, 2\)"),
        ({"expected": {**ok, "ema.w": torch.zeros(3, 2)}, "other_prefixes": ("optim.",)}, "missing tensor ema.w"),
        ({"expected": ok}, "unexpected tensor optim.0"),
        ({"expected": ok, "meta_keys": ("optimizer",), "other_prefixes": ("optim.",)}, "no 'optimizer' state"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ckpt.CheckpointError, match=f"ckpt_00000001.safetensors: {message}"):
            ckpt.check_layout(found, **kwargs)


def test_lock_directory_refuses_a_second_holder(tmp_path):
    refused = pytest.raises(ckpt.LockedError, match=f"in use by another trainer .*last taken by pid {os.getpid()}")
    with ckpt.lock_directory(tmp_path), refused, ckpt.lock_directory(tmp_path):
        pass
    with ckpt.lock_directory(tmp_path):  # released at the end of the block
        pass
