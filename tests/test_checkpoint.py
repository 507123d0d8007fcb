"""Checkpoints: round trips, pruning, atomicity, and refusal of truncated or tampered files."""

import json
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
    meta["sha256"] = ckpt._sha256(bad)  # an attacker (or bug) that also rewrote the checksum
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
