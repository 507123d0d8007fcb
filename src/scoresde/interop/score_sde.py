"""Official score_sde checkpoints (yang-song/score_sde_pytorch) as scoresde runs.

An official checkpoint is ``torch.save({'optimizer', 'model', 'ema', 'step'})`` of ``run_lib.py``:
``model`` the state dict of a ``DataParallel`` network (keys ``module.all_modules.<i>.<name>``
and the buffer ``module.sigmas``), ``ema`` the ``ExponentialMovingAverage`` state whose
``shadow_params`` list the averaged parameters in ``model.parameters()`` order (those with
``requires_grad``: all but the fixed Fourier frequencies ``W``). It is read with
``torch.load(weights_only=True)`` and an allow-list of the NumPy scalar types the optimizer state
holds (the learning rate is an ``np.float64``); anything else (a pickled function or code
object) is refused before it runs.

The official flat module list maps one to one onto :class:`~scoresde.nets.NCSNpp` inside
:class:`~scoresde.nets.OfficialScoreModel`: :func:`official_layout` walks our network in the
official construction order, and the attention's four 1x1 maps ``NIN_0..3`` (``y = x W + b``)
become our ``qkv`` (``[W_0; W_1; W_2]^T``) and ``out`` (``W_3^T``) layers, the DDPM blocks'
``NIN_0`` shortcut our 1x1 ``skip`` convolution.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import config as C
from ..nets import NCSNpp, OfficialScoreModel
from ..nets.layers import AttnBlock, Resample, ResBlock
from ..nets.unet import _InputResidual, _InputSkip, _OutputResidual, _OutputSkip
from ..runs import write_run
from .official_configs import CONFIGS

SDE_NAMES = {"vpsde": "vp", "subvpsde": "subvp", "vesde": "ve"}
SAMPLING_EPS = {"vpsde": 1e-3, "subvpsde": 1e-3, "vesde": 1e-5}  # official run_lib sampling_eps
PREDICTORS = {"euler_maruyama": "euler-maruyama", "reverse_diffusion": "reverse-diffusion",
              "ancestral_sampling": "ancestral", "none": "none"}
CORRECTORS = {"langevin": "langevin", "ald": "annealed-langevin", "none": None}


# -- reading the checkpoint ---------------------------------------------------------------------
def _numpy_globals() -> list:
    """NumPy's scalar reconstructor (under its NumPy 1 and 2 module paths) and the dtypes: what
    an optimizer state with NumPy floats pickles, and nothing that can run code."""
    scalar = np.array(0.0)[()].__reduce__()[0]
    dtypes = {type(np.dtype(code)) for code in "?bhilqBHILQefdgFD"}
    return [np.dtype, *dtypes, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The official checkpoint dict, loaded with ``weights_only=True`` (no code runs)."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or ["unreadable"]
        reason = next((ln for ln in lines if "Unsupported global" in ln), None)
        if reason is None:
            detail = next((ln for ln in lines if "Unsupported" in ln), lines[0])
            raise ValueError(f"{path}: not a torch checkpoint ({detail[:120]})") from None
        raise ValueError(f"{path}: refused to load (it pickles more than tensors and NumPy scalars): {reason}") from None
    except RuntimeError as err:  # torch's zip reader: a truncated or corrupt file
        raise ValueError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): "
                         f"{str(err).strip().splitlines()[0][:120]}") from None
    if not isinstance(state, dict) or not {"model", "ema"} <= set(state):
        raise ValueError(f"{path}: not an official score_sde checkpoint (needs the keys 'model' and 'ema')")
    if not isinstance(state["ema"], dict) or "shadow_params" not in state["ema"]:
        raise ValueError(f"{path}: 'ema' holds no shadow_params")
    return state


def _strip_module(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``module.`` prefix that ``DataParallel`` adds."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def ema_state_dict(model_state: Mapping[str, Tensor], shadow_params: list[Tensor]) -> dict[str, Tensor]:
    """The official state dict with the EMA ``shadow_params`` in place of the parameters they
    average (``model.parameters()`` order, buffers and the fixed Fourier ``W`` skipped)."""
    names = [k for k in model_state if k not in ("sigmas", "all_modules.0.W")]
    if len(names) != len(shadow_params):
        raise ValueError(f"the EMA holds {len(shadow_params)} tensors but the model {len(names)} parameters")
    out = dict(model_state)
    for name, shadow in zip(names, shadow_params):
        if tuple(shadow.shape) != tuple(model_state[name].shape):
            raise ValueError(f"EMA tensor for {name} has shape {tuple(shadow.shape)}, "
                             f"the model's {tuple(model_state[name].shape)}")
        out[name] = shadow
    return out


# -- the official module order ------------------------------------------------------------------
Transform = Callable[[list[Tensor]], Tensor]


def _same(ts: list[Tensor]) -> Tensor:
    return ts[0]


def _nin_to_linear(ts: list[Tensor]) -> Tensor:
    """NIN ``y = x W + b`` (``W`` of shape (in, out)) as Linear weights ``W^T``, stacked."""
    return torch.cat([w.t() for w in ts], 0)


def _nin_to_conv(ts: list[Tensor]) -> Tensor:
    return ts[0].t()[:, :, None, None]


def _cat(ts: list[Tensor]) -> Tensor:
    return torch.cat(ts, 0)


class _Layout:
    """Collects ``(our key, official keys, transform)`` while walking modules in official order."""

    def __init__(self) -> None:
        self.index = -1
        self.entries: list[tuple[str, list[str], Transform]] = []

    def module(self) -> str:
        self.index += 1
        return f"all_modules.{self.index}."

    def add(self, ours: str, official: list[str], fn: Transform = _same) -> None:
        self.entries.append((ours, official, fn))

    def affine(self, ours: str, official: str) -> None:
        """A layer with ``weight`` and ``bias`` (convolution, Linear, GroupNorm)."""
        for p in ("weight", "bias"):
            self.add(f"{ours}.{p}", [f"{official}{p}"])

    def res(self, ours: str, block: ResBlock, nin_shortcut: bool) -> None:
        o = self.module()
        self.affine(f"{ours}.norm0", o + "GroupNorm_0.")
        self.affine(f"{ours}.conv0", o + "Conv_0.")
        if block.dense is not None:
            self.affine(f"{ours}.dense", o + "Dense_0.")
        self.affine(f"{ours}.norm1", o + "GroupNorm_1.")
        self.affine(f"{ours}.conv1", o + "Conv_1.")
        if block.skip is not None:
            if nin_shortcut:
                self.add(f"{ours}.skip.weight", [o + "NIN_0.W"], _nin_to_conv)
                self.add(f"{ours}.skip.bias", [o + "NIN_0.b"])
            else:
                self.affine(f"{ours}.skip", o + "Conv_2.")

    def attn(self, ours: str) -> None:
        o = self.module()
        self.affine(f"{ours}.norm", o + "GroupNorm_0.")
        self.add(f"{ours}.qkv.weight", [o + f"NIN_{i}.W" for i in range(3)], _nin_to_linear)
        self.add(f"{ours}.qkv.bias", [o + f"NIN_{i}.b" for i in range(3)], _cat)
        self.add(f"{ours}.out.weight", [o + "NIN_3.W"], _nin_to_linear)
        self.add(f"{ours}.out.bias", [o + "NIN_3.b"])

    def resample(self, ours: str, layer: Resample) -> None:
        o = self.module()
        if layer.conv is not None:
            self.affine(f"{ours}.conv", o + ("Conv2d_0." if layer.kernel is not None else "Conv_0."))

    def block(self, ours: str, layer: nn.Module, nin_shortcut: bool) -> None:
        if isinstance(layer, ResBlock):
            self.res(ours, layer, nin_shortcut)
        elif isinstance(layer, AttnBlock):
            self.attn(ours)
        else:
            self.resample(ours, layer)

    def norm_conv(self, ours_norm: str, ours_conv: str) -> None:
        self.affine(ours_norm, self.module())
        self.affine(ours_conv, self.module())


def official_layout(net: NCSNpp) -> list[tuple[str, list[str], Transform]]:
    """``(our state-dict key, official keys, transform)`` for every tensor of ``net``, walking it
    in the construction order of the official ``NCSNpp`` / ``DDPM`` (``all_modules`` indices)."""
    lay, nin = _Layout(), net.config["resblock"] == "ddpm"
    if net.embed is not None:
        if net.embed.fourier is not None:
            lay.add("embed.fourier.W", [lay.module() + "W"])
        lay.affine("embed.mlp.0", lay.module())
        lay.affine("embed.mlp.2", lay.module())
    enc = net.encoder
    lay.affine("encoder.conv_in", lay.module())
    for i, level in enumerate(enc.levels):
        p = f"encoder.levels.{i}"
        for j in range(len(level.blocks)):
            lay.res(f"{p}.blocks.{j}", level.blocks[j], nin)
            if level.attns:
                lay.attn(f"{p}.attns.{j}")
        if level.down is not None:
            lay.block(f"{p}.down", level.down, nin)
            if isinstance(level.pyramid, _InputSkip):
                lay.affine(f"{p}.pyramid.proj", lay.module() + "Conv_0.")
            elif isinstance(level.pyramid, _InputResidual):
                lay.resample(f"{p}.pyramid.down", level.pyramid.down)
    for j, layer in enumerate(net.mid):
        lay.block(f"mid.{j}", layer, nin)
    for i, level in enumerate(net.decoder):
        p = f"decoder.{i}"
        for j in range(len(level.blocks)):
            lay.res(f"{p}.blocks.{j}", level.blocks[j], nin)
        if level.attn is not None:
            lay.attn(f"{p}.attn")
        pyramid = level.pyramid
        if isinstance(pyramid, _OutputSkip) or (isinstance(pyramid, _OutputResidual) and pyramid.first):
            lay.norm_conv(f"{p}.pyramid.norm", f"{p}.pyramid.conv")
        elif isinstance(pyramid, _OutputResidual):
            lay.resample(f"{p}.pyramid.up", pyramid.up)
        if level.up is not None:
            lay.block(f"{p}.up", level.up, nin)
    if not net.output_skip:
        lay.norm_conv("norm_out", "conv_out")
    return lay.entries


def convert_state(official: Mapping[str, Tensor], model: OfficialScoreModel) -> dict[str, Tensor]:
    """Our state dict of ``model`` from an official network state dict (``module.`` stripped);
    every official tensor must be used and fit."""
    official = _strip_module(official)
    misfit = "the checkpoint does not fit the config's network:"
    ours, used = {}, {"sigmas"}
    for key, names, fn in official_layout(model.net):
        missing = [n for n in names if n not in official]
        if missing:
            raise ValueError(f"{misfit} the checkpoint has no tensor {missing[0]}")
        ours[f"net.{key}"] = fn([official[n] for n in names]).to(torch.float32, copy=True).contiguous()
        used.update(names)
    extra = sorted(set(official) - used)
    if extra:
        raise ValueError(f"{misfit} the network has nothing for {extra[0]}")
    expected = model.state_dict()
    for key, value in ours.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{misfit} {key} has shape {tuple(value.shape)} in the checkpoint, "
                             f"{tuple(expected[key].shape)} in the network")
    return ours


# -- the official config as a scoresde config ---------------------------------------------------
def official_config(name: str) -> dict[str, dict]:
    """The official config ``name`` (e.g. ``vp/cifar10_ddpmpp_continuous``) from the table."""
    key = name.removeprefix("configs/").removesuffix(".py")
    if key not in CONFIGS:
        raise ValueError(f"unknown official config {name!r}; known: {', '.join(sorted(CONFIGS))}")
    return CONFIGS[key]


def read_config_json(path: str | Path) -> dict[str, dict]:
    """An official config saved as a JSON dict of its fields (or under the key ``config``)."""
    raw = json.loads(Path(path).read_text())
    if isinstance(raw, dict) and "model" not in raw and isinstance(raw.get("config"), dict):
        raw = raw["config"]
    if not isinstance(raw, dict) or not {"training", "data", "model"} <= set(raw):
        raise ValueError(f"{path}: an official config needs the sections training, data and model")
    return raw


def _require(value: Any, allowed: tuple, field: str) -> None:
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not supported (supported: {', '.join(map(repr, allowed))})")


def network_options(model: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """:class:`~scoresde.nets.NCSNpp` keyword arguments of an official ``ncsnpp`` / ``ddpm`` model."""
    _require(model.get("name"), ("ncsnpp", "ddpm"), "model.name")
    _require(model.get("nonlinearity", "swish"), ("swish",), "model.nonlinearity")
    _require(model.get("normalization", "GroupNorm"), ("GroupNorm",), "model.normalization")
    common = dict(in_channels=int(data["num_channels"]), image_size=int(data["image_size"]), nf=int(model["nf"]),
                  ch_mult=tuple(model["ch_mult"]), num_res_blocks=int(model["num_res_blocks"]),
                  attn_resolutions=tuple(model["attn_resolutions"]), dropout=float(model["dropout"]),
                  resamp_with_conv=bool(model["resamp_with_conv"]), conditional=bool(model.get("conditional", True)))
    if model["name"] == "ddpm":  # models/ddpm.py: DDPM blocks, 32 groups, positional embedding, no rescaling
        return dict(common, resblock="ddpm", skip_rescale=False, norm_groups=32, embedding="positional")
    _require(model.get("progressive_combine", "sum"), ("sum",), "model.progressive_combine")
    _require(model.get("conv_size", 3), (3,), "model.conv_size")
    embedding = model["embedding_type"].lower()
    return dict(common, resblock=model["resblock_type"].lower(), embedding=embedding,
                fourier_scale=float(model.get("fourier_scale", 16)), fir=bool(model["fir"]),
                fir_kernel=tuple(model["fir_kernel"]), skip_rescale=bool(model["skip_rescale"]),
                progressive=model["progressive"].lower(), progressive_input=model["progressive_input"].lower(),
                init_scale=float(model["init_scale"]))


def run_config(official: Mapping[str, Mapping[str, Any]], description: str = "") -> C.Config:
    """The scoresde config of an official one: its SDE (official sigma / beta, ``N`` as the
    sampler's steps, the official sampling ``eps``), the official network in
    :class:`~scoresde.nets.OfficialScoreModel`, ``data.shape`` (no data needed), the official
    sampler and training settings."""
    tr, data, model = official["training"], official["data"], official["model"]
    sampling = official.get("sampling", {})
    _require(tr.get("sde"), tuple(SDE_NAMES), "training.sde")
    sde = tr["sde"]
    sde_options = ({"sigma_min": float(model["sigma_min"]), "sigma_max": float(model["sigma_max"])} if sde == "vesde"
                   else {"beta_min": float(model["beta_min"]), "beta_max": float(model["beta_max"])})
    n, size, channels = int(model["num_scales"]), int(data["image_size"]), int(data["num_channels"])
    cifar = str(data.get("dataset", "")).upper() == "CIFAR10"
    predictor = PREDICTORS.get(sampling.get("predictor", "euler_maruyama"))
    corrector = sampling.get("corrector", "none")
    if predictor is None or corrector not in CORRECTORS:
        raise ValueError(f"sampling: predictor {sampling.get('predictor')!r} / corrector {corrector!r} unknown")
    raw = {
        "description": description,
        "data": {"source": "cifar10" if cifar else "image-folder", "size": None if cifar else size,
                 "channels": channels, "centered": bool(data["centered"]), "hflip": bool(data.get("random_flip", False)),
                 "shape": [channels, size, size]},
        "sde": {"name": SDE_NAMES[sde], **sde_options, "eps": SAMPLING_EPS[sde]},
        "model": {"name": "score_sde", "continuous": bool(tr["continuous"]), "num_scales": n,
                  "centered": bool(data["centered"]), "scale_by_sigma": bool(model.get("scale_by_sigma", False)),
                  **network_options(model, data)},
        "loss": {"name": "dsm", "parameterization": "score",
                 "weighting": "likelihood" if tr.get("likelihood_weighting") else "sigma2",
                 "reduce": "mean" if tr.get("reduce_mean") else "sum"},
        "training": {"ema_decay": float(model.get("ema_rate", 0.9999)), "lr": 2e-4, "warmup": 5000, "grad_clip": 1.0,
                     "batch_size": int(tr.get("batch_size", 128))},
        "sampling": {"method": "pc", "steps": n, "denoise": bool(sampling.get("noise_removal", True)),
                     "options": {"predictor": predictor, "corrector": CORRECTORS[corrector],
                                 "snr": float(sampling.get("snr", 0.16)),
                                 "corrector_steps": int(sampling.get("n_steps_each", 1))}},
        "evaluation": {"metrics": ["bpd"]},
    }
    return C.Config.from_dict(raw)


# -- the importer -------------------------------------------------------------------------------
def import_checkpoint(checkpoint: str | Path, out: str | Path, config: str | Mapping[str, Any]) -> Path:
    """Write the run folder ``out`` from an official checkpoint and its config (a name of
    :data:`~scoresde.interop.official_configs.CONFIGS` or the official config as a dict):
    ``config.yaml`` and the network's weights (``ema.*`` the EMA, ``model.*`` the raw ones).
    ``scoresde.load_run(out).score_fn`` is then the official EMA score."""
    name = config if isinstance(config, str) else None
    official = official_config(config) if isinstance(config, str) else config
    cfg = run_config(official, description=f"Imported official score_sde checkpoint {Path(checkpoint).name}"
                                            + (f" ({name})" if name else ""))
    model = C.build_model(cfg)
    state = read_checkpoint(checkpoint)
    raw = _strip_module(state["model"])
    ema = convert_state(ema_state_dict(raw, list(state["ema"]["shadow_params"])), model)
    meta = {"source": "score_sde", "official_config": name, "checkpoint": Path(checkpoint).name,
            "config": cfg.to_dict()}  # load_run checks config.yaml against it
    return write_run(out, cfg, ema, model_state=convert_state(raw, model), step=int(state.get("step", 0)), meta=meta)
