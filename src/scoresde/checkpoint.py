"""Atomic, validated checkpoints: every tensor in safetensors, everything else in JSON.

A checkpoint of step ``n`` is two files in one directory:

- ``ckpt_<n>.safetensors``: the tensors (model, EMA, optimizer state, ...);
- ``ckpt_<n>.json``: the sidecar, ``{"format", "step", "file", "sha256", "version", "meta"}``
  with the SHA-256 of the safetensors file and the caller's JSON-safe ``meta``.

Each file is written to a temporary name in the same directory, flushed and fsync-ed, then
renamed over the final name (``os.replace`` is atomic) and the directory is fsync-ed; the
sidecar is written last, so a checkpoint without a sidecar was never completed. Loading checks
the sidecar, the checksum and the safetensors header; nothing is unpickled.

Nested state such as ``optimizer.state_dict()`` is stored with :func:`pack` /
:func:`unpack`: tensors go to the safetensors file, the structure (with int keys, tuples,
floats) to JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ._io import atomic_write, write_json

FORMAT = "scoresde-checkpoint/1"
_NAME = re.compile(r"^ckpt_(\d+)\.json$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, tampered with or not a scoresde checkpoint."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``step``, ``tensors`` (on CPU), the caller's ``meta`` and its ``path``."""

    step: int
    tensors: dict[str, Tensor]
    meta: dict[str, Any]
    path: Path


def _paths(directory: Path, step: int) -> tuple[Path, Path]:
    stem = directory / f"ckpt_{step:08d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(directory: str | Path, step: int, tensors: dict[str, Tensor], meta: dict[str, Any],
         *, keep_last: int | None = None) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep_last`` checkpoints.

    Returns the path of the safetensors file. ``meta`` must be JSON-serialisable.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensor_path, sidecar_path = _paths(directory, step)
    try:
        meta_json = json.loads(json.dumps(meta))
    except (TypeError, ValueError) as err:
        raise ValueError(f"meta must be JSON-serialisable: {err}") from err
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(tensor_path, lambda tmp: save_file(cpu, tmp, metadata={"format": FORMAT, "step": str(step)}))
    from . import __version__

    sidecar = {"format": FORMAT, "step": step, "file": tensor_path.name, "sha256": _sha256(tensor_path),
               "version": __version__, "meta": meta_json}
    write_json(sidecar_path, sidecar)
    if keep_last is not None:
        for _, old in list_checkpoints(directory)[:-keep_last]:
            old.unlink(missing_ok=True)  # the sidecar first: an orphan safetensors file is invisible
            old.with_suffix(".safetensors").unlink(missing_ok=True)
    return tensor_path


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, sidecar path)`` of every checkpoint in ``directory``, oldest first (unvalidated)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def load(path: str | Path) -> Checkpoint:
    """Load and validate one checkpoint given either of its two files.

    Raises :class:`CheckpointError` naming the file when the sidecar is missing or malformed,
    the checksum does not match (truncated or modified file) or the header does not parse.
    """
    path = Path(path)
    sidecar_path = path.with_suffix(".json")
    tensor_path = path.with_suffix(".safetensors")
    if not sidecar_path.is_file():
        raise CheckpointError(f"{sidecar_path}: sidecar missing (checkpoint incomplete)")
    try:
        sidecar = json.loads(sidecar_path.read_text())
        step, digest, meta = int(sidecar["step"]), str(sidecar["sha256"]), sidecar["meta"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{sidecar_path}: malformed sidecar ({err})") from err
    if sidecar.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar_path}: not a {FORMAT} sidecar")
    if not tensor_path.is_file():
        raise CheckpointError(f"{tensor_path}: tensor file missing")
    if _sha256(tensor_path) != digest:
        raise CheckpointError(f"{tensor_path}: checksum mismatch (file truncated or modified)")
    try:
        tensors = load_file(tensor_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{tensor_path}: unreadable safetensors file ({err})") from err
    return Checkpoint(step, tensors, meta, tensor_path)


def load_latest(directory: str | Path) -> Checkpoint | None:
    """The newest valid checkpoint in ``directory`` (None if there is none).

    A checkpoint that fails validation is skipped with a warning naming the file, and the
    previous one is tried.
    """
    for _, sidecar_path in reversed(list_checkpoints(directory)):
        try:
            return load(sidecar_path)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint: {err}", stacklevel=2)
    return None


def pack(obj: Any, prefix: str) -> tuple[Any, dict[str, Tensor]]:
    """Split a nested state (dicts with str/int keys, lists, tuples, scalars, tensors) into a
    JSON-safe structure and a flat ``{name: tensor}`` dict; names start with ``prefix``."""
    tensors: dict[str, Tensor] = {}

    def walk(node: Any, name: str) -> Any:
        if isinstance(node, Tensor):
            tensors[name] = node
            return {"__tensor__": name}
        if isinstance(node, dict):
            return {"__dict__": [[k, walk(v, f"{name}.{k}")] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            items = [walk(v, f"{name}.{i}") for i, v in enumerate(node)]
            return {"__tuple__": items} if isinstance(node, tuple) else items
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store {type(node).__name__} at {name} in a checkpoint")

    return walk(obj, prefix), tensors


def unpack(structure: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`pack`."""
    if isinstance(structure, list):
        return [unpack(v, tensors) for v in structure]
    if isinstance(structure, dict):
        if "__tensor__" in structure:
            return tensors[structure["__tensor__"]]
        if "__tuple__" in structure:
            return tuple(unpack(v, tensors) for v in structure["__tuple__"])
        return {k: unpack(v, tensors) for k, v in structure["__dict__"]}
    return structure

