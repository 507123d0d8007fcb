"""diffusers models as scoresde score functions, SDEs and runs.

A diffusers ``UNet2DModel`` and its scheduler become ``(score_fn, sde)`` (:func:`from_diffusers`)
or a run folder that :func:`scoresde.load_run` reads (:func:`import_pipeline`):

* **Discrete VP schedulers** (``DDPMScheduler``, ``DDIMScheduler`` and every scheduler with
  ``alphas_cumprod``; linear, scaled-linear, ``squaredcos_cap_v2`` or trained betas): the chain's
  ``abar_0 > ... > abar_{N-1}`` becomes :class:`~.discrete_vp.DiscreteVPSDE`, the continuous
  variance-preserving SDE whose kernel passes exactly through every step: step ``n`` sits at
  ``t = n / (N - 1)`` and ``alpha(t_n)^2 = abar_n``, ``sigma(t_n)^2 = 1 - abar_n``.  The network
  sees the continuous timestep ``t (N - 1)`` (integer at the steps it was trained on);
  ``prediction_type`` ``epsilon`` / ``sample`` / ``v_prediction`` is the parameterization
  ``eps`` / ``x0`` / ``v``.
* **``ScoreSdeVeScheduler``** (the NCSN++ VE models, e.g. ``google/ncsnpp-*``): :class:`~scoresde.sde.VESDE`
  with the scheduler's ``sigma_min``, ``sigma_max`` and ``sampling_eps`` as ``eps``.  The network
  takes the marginal ``sigma(t)`` as its time input and, with its Fourier time embedding, divides
  its output by it: the output is the score (``ScoreSdeVePipeline`` feeds it to the reverse SDE
  as such).

diffusers is imported lazily (``pip install scoresde[interop]``): this module loads without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import config as C
from .._tensor import check_positive
from ..runs import CONFIG_FILE, write_run
from ..score import ScoreFn, score_fn_from_model
from ..sde import VESDE, LinearSDE
from .diffusers_unet import MODEL_NAME, DiffusersUNet, diffusers_package, unet_config
from .discrete_vp import SDE_NAME, DiscreteVPSDE

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
PIPELINES = ("DDPMPipeline", "DDIMPipeline", "ScoreSdeVePipeline")


# -- scheduler -> SDE, parameterization, time input ------------------------------------------------
@dataclass(frozen=True)
class SchedulerMap:
    """What a diffusers scheduler means in scoresde: the SDE (its config name and options), the
    parameterization of the network's output and the :class:`DiffusersUNet` time input."""

    sde_name: str
    sde_options: dict
    parameterization: str
    time_input: str
    clip_sample: bool = False

    def build_sde(self) -> LinearSDE:
        """The SDE of ``sde_name`` with ``sde_options``."""
        return (DiscreteVPSDE if self.sde_name == SDE_NAME else VESDE)(**self.sde_options)


def map_scheduler(scheduler: Any) -> SchedulerMap:
    """Read a diffusers scheduler (module docstring): ``alphas_cumprod`` and ``prediction_type``
    of a discrete VP scheduler, or ``sigma_min``, ``sigma_max``, ``sampling_eps`` of ``ScoreSdeVeScheduler``."""
    cfg, name = scheduler.config, type(scheduler).__name__
    if name == "ScoreSdeVeScheduler":
        sigma_min, sigma_max = check_positive(cfg.sigma_min, "sigma_min"), check_positive(cfg.sigma_max, "sigma_max")
        return SchedulerMap("ve", {"sigma_min": float(sigma_min), "sigma_max": float(sigma_max),
                                   "eps": float(cfg.sampling_eps)}, "score", "sigma")
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise ValueError(f"scheduler {name} has neither alphas_cumprod (a discrete VP chain) nor is it a "
                         "ScoreSdeVeScheduler")
    kind = getattr(cfg, "prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {kind!r}")
    abar = torch.as_tensor(abar).to(torch.float64).tolist()
    return SchedulerMap(SDE_NAME, {"alphas_cumprod": abar}, PREDICTION_TYPES[kind], "timestep",
                        clip_sample=bool(getattr(cfg, "clip_sample", False)))


def from_diffusers(unet: nn.Module, scheduler: Any) -> tuple[ScoreFn, LinearSDE]:
    """``(score_fn, sde)`` of a diffusers ``UNet2DModel`` and its scheduler (module docstring):
    ``score_fn(x, t)`` at scoresde time ``t`` on the SDE's ``[0, T]``, ready for ``sd.sample``,
    ``sd.log_likelihood`` and guidance.  The network is used as given (device, dtype, mode)."""
    spec = map_scheduler(scheduler)
    sde = spec.build_sde()
    return score_fn_from_model(DiffusersUNet(sde, unet, spec.time_input), sde, spec.parameterization), sde


# -- a save_pretrained folder -> a run folder ------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable ({err})") from err


def load_pipeline(directory: str | Path) -> tuple[nn.Module, Any]:
    """The ``UNet2DModel`` (eval mode) and scheduler of a ``save_pretrained`` folder of a
    ``DDPMPipeline``, ``DDIMPipeline`` or ``ScoreSdeVePipeline``, or of any folder holding a
    ``unet/`` and a ``scheduler/`` pair.  Weights are read from safetensors only (never unpickled)
    and nothing is downloaded."""
    diffusers = diffusers_package()
    root = Path(directory)
    index = root / "model_index.json"
    if index.is_file():
        pipeline = _read_json(index).get("_class_name")
        if pipeline not in PIPELINES:
            raise ValueError(f"{index}: pipeline {pipeline!r} is not supported; supported: {', '.join(PIPELINES)} "
                             "(or a unet/ + scheduler/ pair)")
    for sub, file in (("unet", "config.json"), ("scheduler", "scheduler_config.json")):
        if not (root / sub / file).is_file():
            raise FileNotFoundError(f"{root}: no {sub}/{file} (expected a diffusers save_pretrained folder)")
    unet_class = _read_json(root / "unet" / "config.json").get("_class_name")
    if unet_class != "UNet2DModel":
        raise ValueError(f"{root / 'unet'}: the network is {unet_class!r}; only UNet2DModel is supported")
    sched_class = _read_json(root / "scheduler" / "scheduler_config.json").get("_class_name")
    cls = getattr(diffusers, str(sched_class), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"{root / 'scheduler'}: {sched_class!r} is not a diffusers scheduler")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(str(root / "unet"), use_safetensors=True, local_files_only=True,
                                                     low_cpu_mem_usage=False)
    except OSError as err:
        raise ValueError(f"{root / 'unet'}: no readable safetensors weights (a .bin file is a pickle, which "
                         f"scoresde does not load; convert it to safetensors first): {err}") from err
    return unet.eval(), cls.from_pretrained(str(root / "scheduler"))


def run_config(unet: nn.Module, spec: SchedulerMap, description: str = "") -> dict:
    """The scoresde config (as a dict) of a diffusers model: the SDE and parameterization of
    ``spec``, the network ``diffusers-unet2d`` with the UNet's config, and ``data.shape`` so the run
    needs no data; DDPM-style models sample with the final Tweedie step (diffusers' last step to
    ``abar = 1``) and clip it as the scheduler does (``clip_sample``)."""
    ucfg = unet_config(unet)
    size = ucfg["sample_size"]
    height, width = (size, size) if isinstance(size, int) else size
    channels = ucfg["in_channels"]
    data = {"source": "image-folder", "size": height, "centered": True, "levels": 256,
            "shape": [channels, height, width]}
    if channels in (1, 3):
        data["channels"] = channels
    return {
        "description": description,
        "data": data,
        "sde": {"name": spec.sde_name, **spec.sde_options},
        "model": {"name": MODEL_NAME, "unet": ucfg, "time_input": spec.time_input},
        "loss": {"name": "dsm", "parameterization": spec.parameterization},
        "sampling": {"denoise": spec.sde_name == SDE_NAME, "clip_denoised": spec.clip_sample},
    }


def import_pipeline(directory: str | Path, out: str | Path) -> Path:
    """Write the run folder ``out`` of the diffusers model in ``directory`` (:func:`load_pipeline`):
    ``config.yaml`` (:func:`run_config`) and one checkpoint with the UNet's weights under ``ema.*``
    (safetensors), so that ``sd.load_run(out)`` rebuilds the network and the score of
    :func:`from_diffusers`.  ``out`` must not hold a run already.  Returns ``out``."""
    target = Path(out)
    if (target / CONFIG_FILE).exists():
        raise ValueError(f"{target}: already holds a run; choose a new output folder")
    unet, scheduler = load_pipeline(directory)
    spec = map_scheduler(scheduler)
    desc = f"diffusers {type(unet).__name__} + {type(scheduler).__name__} imported from {Path(directory).resolve()}"
    cfg = C.load_config(run_config(unet, spec, desc))
    model = DiffusersUNet(spec.build_sde(), unet, spec.time_input)
    meta = {"source": "diffusers", "scheduler": type(scheduler).__name__, "directory": str(Path(directory).resolve())}
    return write_run(target, cfg, model.state_dict(), meta=meta)
