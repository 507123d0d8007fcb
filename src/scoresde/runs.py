"""A run folder as a library object: ``load_run(dir) -> Run`` and ``write_run`` for importers.

A run folder holds ``config.yaml`` (a :class:`scoresde.config.Config`) and checkpoints written by
:mod:`scoresde.checkpoint` in the Trainer's layout: the network's tensors under ``model.*``, the
EMA weights (used for sampling) under ``ema.*`` and any other state under its own prefix
(``optimizer.*``). A folder written by ``scoresde train`` and one written by an importer
(``scoresde import ...``) load the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import yaml
from torch import Tensor

from . import checkpoint as ckpt
from . import config as C
from .score import score_fn_from_model

CONFIG_FILE = "config.yaml"
from .checkpoint import EMA as EMA_PREFIX
from .checkpoint import MODEL, prefixed, section


@dataclass
class Run:
    """A run loaded from its folder: the validated config, the SDE and loss it defines, the network
    (EMA weights by default, eval mode, no grad), its score function ``score_fn(x, t)`` and the
    checkpoint's step."""

    directory: Path
    config: C.Config
    sde: Any
    loss: Any
    model: torch.nn.Module
    score_fn: Callable[[Tensor, Tensor], Tensor]
    step: int
    device: torch.device

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``data.shape`` of the config, else read from the test split."""
        if self.config.data.shape is not None:
            return tuple(self.config.data.shape)
        return tuple(C.build_dataset(self.config, "test").sample_shape)


def read_config(directory: str | Path) -> C.Config:
    """The validated config of a run folder; a missing or unreadable file is one clear error."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a run folder (no {CONFIG_FILE}; made by `scoresde train` "
                                "or `scoresde import`)")
    if path.stat().st_size == 0:  # only a write not made through scoresde._io can leave this
        raise ValueError(f"{path}: empty file (a write was interrupted); restore it or start another --out")
    try:
        return C.load_config(str(path))
    except (yaml.YAMLError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from err


def load_run(directory: str | Path, checkpoint: str | Path | None = None, ema: bool = True,
             device: torch.device | str = "cpu") -> Run:
    """Load a run folder: its config and the newest valid checkpoint (or ``checkpoint``).

    ``ema=False`` loads the raw training weights instead of their moving average.
    """
    root = Path(directory)
    cfg = read_config(root)
    found = ckpt.load(checkpoint) if checkpoint else ckpt.load_latest(root)
    if found is None:
        raise FileNotFoundError(f"{root}: no valid checkpoint (train first)")
    check_trained_with(found, cfg, root / CONFIG_FILE)
    sde = C.build_sde(cfg)
    loss = C.build_loss(cfg, sde)
    model = C.build_model(cfg)
    state = section(found.tensors, EMA_PREFIX if ema else MODEL)
    if not state:
        raise ValueError(f"{found.path}: holds no {EMA_PREFIX if ema else MODEL}.* weights")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{found.path}: weights do not fit the network of {root / CONFIG_FILE}: {first}") from err
    model = model.to(device).eval().requires_grad_(False)
    score_fn = score_fn_from_model(model, sde, loss.parameterization)
    return Run(root, cfg, sde, loss, model, score_fn, found.step, torch.device(device))


def check_trained_with(found: ckpt.Checkpoint, cfg: C.Config, origin: Path) -> None:
    """Raise a one-line ``ValueError`` naming both files when the config a checkpoint was trained
    with (its ``meta["config"]``, written by ``scoresde train``) has another SDE, model or loss
    section than ``cfg`` (read from ``origin``): the weights would load but mean something else.
    (The data section may change: data move.)"""
    trained = found.meta.get("config") if isinstance(found.meta, dict) else None
    if not isinstance(trained, dict):
        return  # an imported checkpoint: its weights are checked against the network alone
    mine = cfg.to_dict()
    try:
        theirs = C.Config.from_dict(trained).to_dict()
    except (ValueError, TypeError):
        theirs = trained
    for key in ("sde", "model", "loss"):
        if theirs.get(key) != mine[key]:
            raise ValueError(f"{origin} no longer matches {found.path}: its {key} section differs from the one "
                             f"the weights were trained with ({theirs.get(key)} vs {mine[key]})")


def write_config(directory: str | Path, cfg: C.Config) -> Path:
    """Write ``directory/config.yaml`` atomically (loadable by :func:`read_config`)."""
    path = Path(directory) / CONFIG_FILE
    C.save_config(cfg, path)
    return path


def write_run(directory: str | Path, cfg: C.Config, ema_state: Mapping[str, Tensor],
              model_state: Mapping[str, Tensor] | None = None, step: int = 0, meta: dict | None = None) -> Path:
    """Write a complete run folder, as an importer does: ``config.yaml`` and one checkpoint in the
    Trainer's layout with the sampling weights under ``ema.*`` and, when given, the raw training
    weights under ``model.*``. Returns the folder."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    write_config(root, cfg)
    tensors = prefixed(ema_state, EMA_PREFIX) | (prefixed(model_state, MODEL) if model_state is not None else {})
    ckpt.save(root, step, tensors, meta=meta or {})
    return root


CLASSIFIER_FILE = "classifier.json"


def load_classifier(directory: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The EMA weights of a noise-conditional classifier folder (``scoresde train-classifier``),
    in eval mode: ``classifier.json`` names the network and its options."""
    import json

    from .nets import MLPClassifier, UNetClassifier

    root = Path(directory)
    if not (root / CLASSIFIER_FILE).is_file():
        raise FileNotFoundError(f"{root}: not a classifier folder (no {CLASSIFIER_FILE}; run train-classifier)")
    spec = json.loads((root / CLASSIFIER_FILE).read_text())
    options = dict(spec["config"])
    if spec["kind"] == "MLPClassifier":
        model: torch.nn.Module = MLPClassifier(options.pop("dim"), options.pop("num_classes"), **options)
    elif spec["kind"] == "UNetClassifier":
        model = UNetClassifier(options.pop("num_classes"), **options)
    else:
        raise ValueError(f"{root / CLASSIFIER_FILE}: unknown classifier kind {spec['kind']!r}")
    found = ckpt.load_latest(root)
    if found is None:
        raise FileNotFoundError(f"{root}: no valid checkpoint")
    model.load_state_dict(section(found.tensors, EMA_PREFIX))
    return model.to(device).eval().requires_grad_(False)
