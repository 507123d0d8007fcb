"""Atomic file writes: the one implementation every file the project writes goes through.

A file is written to a temporary sibling (``.NAME.<pid>.tmp``), fsync-ed, renamed over its final
name (``os.replace`` is atomic on POSIX and Windows) and the directory is fsync-ed, so a reader
(or a resume after a kill) sees either the old file or the complete new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

TMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename inside it survives a power cut (a no-op on Windows)."""
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(final: Path) -> Path:
    """The temporary sibling a write of ``final`` goes through (unique per process)."""
    return final.with_name(f".{final.name}.{os.getpid()}{TMP_SUFFIX}")


def commit(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, rename it over ``final`` atomically and fsync the directory."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file, which then replaces ``path``.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    final = Path(path)
    tmp = temp_path(final)
    try:
        write(tmp)
        commit(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """Atomically write ``obj`` as JSON (one trailing newline) to ``path``."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")
