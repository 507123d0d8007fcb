"""``scoresde export``: a run's EMA weights alone in one safetensors file, for other users.

The file holds the network's state dict (the EMA weights, which sampling uses) and, in the
safetensors header's string metadata, ``format``, ``step`` and ``config`` (the run's
``config.yaml`` as JSON), so :func:`read_export` (or any safetensors reader) rebuilds the network
without the run folder. It is written atomically and world-readable (mode 0644), unlike the
private (0600) training checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .. import checkpoint as ckpt
from .. import config as C
from .._io import atomic_write
from ..checkpoint import EMA, section
from ..runs import read_config

FORMAT = "scoresde-export/1"
MODE = 0o644


def export_run(directory: str | Path, out: str | Path, checkpoint: str | Path | None = None) -> Path:
    """Write the EMA weights of the run ``directory`` (its newest valid checkpoint, or
    ``checkpoint``) to the safetensors file ``out`` with the config in the header."""
    root = Path(directory)
    cfg = read_config(root)
    found = ckpt.load(checkpoint) if checkpoint else ckpt.load_latest(root)
    if found is None:
        raise FileNotFoundError(f"{root}: no valid checkpoint to export")
    state = section(found.tensors, EMA)
    if not state:
        raise ValueError(f"{found.path}: holds no {EMA}.* weights")
    metadata = {"format": FORMAT, "step": str(found.step), "config": json.dumps(cfg.to_dict())}

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        os.chmod(tmp, MODE)

    return atomic_write(out, write)


def read_export(path: str | Path) -> tuple[C.Config, dict[str, Tensor], int]:
    """``(config, EMA state dict, step)`` of a file written by :func:`export_run`."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a scoresde export (format {meta.get('format')!r}, expected {FORMAT!r})")
    return C.Config.from_dict(json.loads(meta["config"])), load_file(str(path)), int(meta["step"])
