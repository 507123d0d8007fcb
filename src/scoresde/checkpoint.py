"""Atomic, validated checkpoints: every tensor in safetensors, everything else in JSON.

A checkpoint of step ``n`` is two files in one directory:

- ``ckpt_<n>.safetensors``: the tensors (model, EMA, optimizer state, ...);
- ``ckpt_<n>.json``: the sidecar, ``{"format", "step", "file", "sha256", "version", "meta",
  "sidecar_sha256"}`` with the SHA-256 of the safetensors file, the caller's JSON-safe ``meta``
  and the SHA-256 of the sidecar's own canonical JSON (every other key), so the metadata is
  checked as well as the tensors.

Each file is written to a temporary name in the same directory, flushed and fsync-ed, then
renamed over the final name (``os.replace`` is atomic) and the directory is fsync-ed; the
sidecar is written last, so a checkpoint without a sidecar was never completed. Loading checks
both checksums, the safetensors header and that the step agrees in the file name, the sidecar
and the tensor file's header; nothing is unpickled.

Resuming (:func:`resume_point`) takes the newest checkpoint that validates, by its verified step:
corrupt ones are renamed ``*.corrupt`` (never loaded or counted again), litter of killed writes
(``.NAME.<pid>.tmp`` of dead processes, a tensor file without its sidecar) is removed, and a
folder without a valid checkpoint is one error listing what was found. Rotation
(``keep_last``) counts only checkpoints up to the step just written, so stray higher-numbered
files can never push the new checkpoint out. :func:`lock_directory` is the advisory lock a
trainer holds on its folder.

Nested state such as ``optimizer.state_dict()`` is stored with :func:`pack` /
:func:`unpack`: tensors go to the safetensors file, the structure (with int keys, tuples,
floats) to JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ._io import TMP_SUFFIX, atomic_write, write_json

FORMAT = "scoresde-checkpoint/2"
_LEGACY_FORMATS = ("scoresde-checkpoint/1",)  # no sidecar checksum
_NAME = re.compile(r"^ckpt_(\d+)\.json$")
_STEM = re.compile(r"^ckpt_(\d+)$")
_TMP = re.compile(r"^\..+\.(\d+)" + re.escape(TMP_SUFFIX) + "$")  # _io.temp_path's names
CORRUPT_SUFFIX = ".corrupt"
LOCK_FILE = ".lock"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, tampered with or not a scoresde checkpoint."""


class NoCheckpointError(CheckpointError):
    """A folder holds no valid checkpoint to resume from."""


class LockedError(ValueError):
    """Another process holds the lock of a run folder (a user error: one line on the CLI)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``step``, ``tensors`` (on CPU), the caller's ``meta`` and its ``path``."""

    step: int
    tensors: dict[str, Tensor]
    meta: dict[str, Any]
    path: Path


#: The sections of a training checkpoint: the network's weights, their EMA (used for sampling)
#: and the optimizer's tensors, each under ``<section>.<name>``.
MODEL, EMA, OPTIMIZER = "model", "ema", "optim"


def prefixed(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``{prefix.k: v}``: a state dict under its section of the checkpoint layout."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def section(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The state dict stored under ``prefix.`` in a checkpoint (the prefix removed)."""
    head = prefix + "."
    return {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}


def _paths(directory: Path, step: int) -> tuple[Path, Path]:
    stem = directory / f"ckpt_{step:08d}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical_sha256(obj: Any) -> str:
    """SHA-256 of ``obj``'s canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    sidecar["sidecar_sha256"] = _canonical_sha256(sidecar)
    write_json(sidecar_path, sidecar)
    if keep_last is not None:
        rotate(directory, step, keep_last)
    return tensor_path


def rotate(directory: str | Path, step: int, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints of steps ``<= step`` (the one just
    written). Higher-numbered files are not this run's lineage (a resume quarantines the corrupt
    ones): they are neither counted nor deleted."""
    older = [p for s, p in list_checkpoints(directory) if s <= step]
    for old in older[:-keep_last]:
        old.unlink(missing_ok=True)  # the sidecar first: an orphan safetensors file is invisible
        old.with_suffix(".safetensors").unlink(missing_ok=True)


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
    either checksum does not match (truncated or modified file), the header does not parse or
    the step disagrees between the file name, the sidecar and the tensor file.
    """
    path = Path(path)
    sidecar_path = path.with_suffix(".json")
    tensor_path = path.with_suffix(".safetensors")
    if not sidecar_path.is_file():
        raise CheckpointError(f"{sidecar_path}: sidecar missing (checkpoint incomplete)")
    try:
        sidecar = json.loads(sidecar_path.read_text())
        step, digest, meta = int(sidecar["step"]), str(sidecar["sha256"]), sidecar["meta"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{sidecar_path}: malformed sidecar ({err})") from err
    if sidecar.get("format") not in (FORMAT, *_LEGACY_FORMATS):
        raise CheckpointError(f"{sidecar_path}: not a {FORMAT} sidecar")
    if sidecar.get("format") == FORMAT:
        own = {k: v for k, v in sidecar.items() if k != "sidecar_sha256"}
        if sidecar.get("sidecar_sha256") != _canonical_sha256(own):
            raise CheckpointError(f"{sidecar_path}: sidecar checksum mismatch (metadata modified)")
    named = _STEM.match(sidecar_path.stem)
    if named and int(named.group(1)) != step:
        raise CheckpointError(f"{sidecar_path}: holds step {step}, which disagrees with its file name")
    if not tensor_path.is_file():
        raise CheckpointError(f"{tensor_path}: tensor file missing")
    if _sha256(tensor_path) != digest:
        raise CheckpointError(f"{tensor_path}: checksum mismatch (file truncated or modified)")
    try:
        tensors = load_file(tensor_path)
        with safe_open(tensor_path, "pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{tensor_path}: unreadable safetensors file ({err})") from err
    if "step" in header and header["step"] != str(step):
        raise CheckpointError(f"{tensor_path}: header step {header['step']} disagrees with the sidecar's {step}")
    return Checkpoint(step, tensors, meta, tensor_path)


def load_latest(directory: str | Path) -> Checkpoint | None:
    """The newest valid checkpoint in ``directory`` (None if there is none), read-only.

    A checkpoint that fails validation is skipped with a warning naming the file, and the
    previous one is tried. (A trainer resumes with :func:`resume_point`, which also quarantines.)
    """
    for _, sidecar_path in reversed(list_checkpoints(directory)):
        try:
            return load(sidecar_path)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint: {err}", stacklevel=2)
    return None


def check_layout(found: Checkpoint, expected: Mapping[str, Tensor], *, meta_keys: Sequence[str] = (),
                 other_prefixes: Sequence[str] = ()) -> None:
    """Raise a one-line :class:`CheckpointError` naming the file unless ``found`` holds exactly the
    tensors of ``expected`` (same names and shapes; names under ``other_prefixes`` are allowed
    besides) and every key of ``meta_keys`` in its meta."""
    names = set(found.tensors)
    missing = sorted(set(expected) - names)
    extra = sorted(k for k in names - set(expected) if not k.startswith(tuple(other_prefixes)))
    lacking = [k for k in meta_keys if k not in found.meta]
    if lacking:
        raise CheckpointError(f"{found.path}: no {lacking[0]!r} state in the sidecar (not a training checkpoint)")
    for kind, keys in (("missing", missing), ("unexpected", extra)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise CheckpointError(f"{found.path}: {kind} tensor {keys[0]}{more}")
    for k, ref in expected.items():
        if tuple(found.tensors[k].shape) != tuple(ref.shape):
            raise CheckpointError(f"{found.path}: tensor {k} has shape {tuple(found.tensors[k].shape)}, "
                                  f"expected {tuple(ref.shape)}")


def quarantine(sidecar_path: Path) -> list[Path]:
    """Rename both files of a checkpoint to ``*.corrupt`` (kept for inspection, never loaded or
    counted again); returns the new paths."""
    moved = []
    for part in (sidecar_path.with_suffix(".json"), sidecar_path.with_suffix(".safetensors")):
        if part.is_file() or part.is_symlink():
            target = part.with_name(part.name + CORRUPT_SUFFIX)
            os.replace(part, target)
            moved.append(target)
    return moved


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a live process of another user
        return True
    return True


def clean_litter(directory: str | Path) -> list[Path]:
    """Remove what killed writes left in ``directory``: ``_io`` temporaries (``.NAME.<pid>.tmp``)
    of processes no longer alive, and tensor files whose sidecar was never written. Returns them."""
    directory = Path(directory)
    removed = []
    for p in sorted(directory.iterdir()) if directory.is_dir() else []:
        tmp = _TMP.match(p.name)
        stale_tmp = tmp is not None and int(tmp.group(1)) != os.getpid() and not _alive(int(tmp.group(1)))
        orphan = p.suffix == ".safetensors" and _STEM.match(p.stem) and not p.with_suffix(".json").exists()
        if (stale_tmp or orphan) and p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def resume_point(directory: str | Path, check: Callable[[Checkpoint], None] | None = None, *,
                 required: bool = True, clean: bool = True) -> Checkpoint | None:
    """The checkpoint a trainer resumes from: the newest in ``directory`` that validates
    (:func:`load`, then ``check(ckpt)`` when given, e.g. :func:`check_layout` against the
    trainer's state), by its verified step.

    Litter of killed writes is removed first (:func:`clean_litter`). A corrupt checkpoint
    (:func:`load` fails) is quarantined with a warning; one that is intact but fails ``check``
    is skipped with a warning and left in place. With no valid checkpoint: a
    :class:`NoCheckpointError` listing what was found when ``required``, else None.
    ``clean=False`` changes nothing on disk (the other ranks of a data-parallel run).
    """
    directory = Path(directory)
    if clean:
        clean_litter(directory)
    problems = []
    for _, sidecar_path in reversed(list_checkpoints(directory)):
        try:
            found = load(sidecar_path)
        except CheckpointError as err:
            if clean:
                quarantine(sidecar_path)
            warnings.warn(f"{'quarantined' if clean else 'skipping'} checkpoint: {err}", stacklevel=2)
            problems.append(f"{sidecar_path.name}: corrupt" + (f", renamed *{CORRUPT_SUFFIX}" if clean else ""))
            continue
        try:
            if check is not None:
                check(found)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint: {err}", stacklevel=2)
            problems.append(str(err).replace(str(directory) + os.sep, ""))
            continue
        return found
    if not required:
        return None
    earlier = sorted(p.name for p in directory.glob(f"ckpt_*{CORRUPT_SUFFIX}")) if directory.is_dir() else []
    found_text = "; ".join(problems) or "no checkpoints"
    if earlier and not problems:
        found_text += f" (quarantined earlier: {', '.join(earlier)})"
    raise NoCheckpointError(f"{directory}: no valid checkpoint to resume from (found: {found_text})")


@contextlib.contextmanager
def lock_directory(directory: str | Path) -> Iterator[Path]:
    """Hold an exclusive advisory ``fcntl`` lock on ``directory/.lock`` for the ``with`` block
    (the directory must exist). A second holder gets :class:`LockedError` at once, naming the
    pid that last took the lock (written in the file as a note; the lock itself is the flock).
    The lock dies with the process, so a kill never leaves it stuck. (No-op where ``fcntl`` is
    missing, i.e. Windows.)"""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        yield Path(directory) / LOCK_FILE
        return
    path = Path(directory) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(f"{directory} is in use by another trainer (it holds {path}, last taken by pid "
                              f"{holder})") from None
        # the pid is a note for the refusal above, not data: the lock itself is the flock
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


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

