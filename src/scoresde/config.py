"""Run configurations: dataclasses with validation, YAML presets, ``key=value`` overrides, builders.

A configuration has seven sections::

    data:       where the training data comes from (scoresde.data)
    sde:        name: vp | ve | subvp | cosine | rf, plus that SDE's keyword arguments
    model:      name: a scoresde.nets preset (ddpmpp_digits, ncsnpp_cifar10, ...), unet or mlp,
                plus keyword arguments of the network
    loss:       name: dsm | fm | ddpm | smld | ssm, plus keyword arguments
    training:   optimisation and checkpointing
    sampling:   the sampler used after training (scoresde.sample)
    evaluation: what ``scoresde eval`` measures

Presets are YAML files in ``scoresde/configs/`` (``toy-2d``, ``digits-vp``, ...). A preset may
start from another with ``base: <preset name>`` and change only what differs, so a new preset
is one short file. Overrides are ``dotted.key=value`` strings whose value is parsed with
``yaml.safe_load`` (``training.steps=500``, ``model.ch_mult=[1,2]``, ``sde.beta_max=10``).
Overriding a named section's ``name`` (``sde.name=rf``, ``loss.name=ddpm``) switches the section
to that constructor's defaults (the old options belonged to the old constructor); options given
in the same command apply on top, in any order.

Every error names the dotted key: unknown keys, wrong types, non-finite numbers, out-of-range
values and unknown sampler names raise ``ValueError``. :func:`describe` lists every key with its
value and meaning (``scoresde config PRESET [k=v ...]``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from scoresde import data as _data
from scoresde import likelihood as _likelihood
from scoresde import train as _train
from scoresde._io import write_text

def _field(default: Any = dataclasses.MISSING, *, choices: Sequence | None = None,
           ge: float | None = None, gt: float | None = None, lt: float | None = None,
           factory: Callable | None = None, doc: str = "") -> Any:
    """A dataclass field with range / choice checks in its metadata."""
    meta = {"choices": choices, "ge": ge, "gt": gt, "lt": lt, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- sections


@dataclass
class DataConfig:
    """Training data (see :func:`scoresde.data.load_dataset`)."""

    source: str = _field("digits", choices=_data.SOURCES, doc="digits | toy | image-folder | npz | cifar10")
    name: str | None = _field(None, doc="toy set name (swiss-roll, two-moons, 8gaussians, checkerboard, rings)")
    path: str | None = _field(None, doc="folder, .npz file or CIFAR-10 directory")
    size: int | None = _field(None, ge=1, doc="image size for image folders")
    channels: int = _field(3, choices=(1, 3), doc="1 (grayscale) or 3 (RGB) for image folders")
    centered: bool = _field(True, doc="data in [-1, 1] (True) or [0, 1] (False)")
    hflip: bool = _field(False, doc="random horizontal flips while training")
    n: int = _field(10_000, ge=1, doc="number of toy points per split")
    levels: int | str | None = _field(None, doc="quantisation levels for bits/dim, or 'continuous' (nats/dim, no "
                                      "dequantization); None: the data's own (17 digits, 256 images and integer "
                                      ".npz, continuous for toy sets and float .npz)")
    shape: list[int] | None = _field(None, doc="shape of one sample, e.g. [3, 32, 32] (None: read from the data); "
                                     "imported runs set it so they need no data on disk")
    dequantize: bool = _field(False, doc="train on uniformly dequantized data (k + u)/levels, the density that "
                              "bits/dim evaluates; samples are mapped back to the levels (scoresde.data.quantize); "
                              "no effect on continuous data")

    def __post_init__(self) -> None:
        ok = self.levels == "continuous" or (type(self.levels) is int and self.levels >= 2)
        if self.levels is not None and not ok:
            raise ValueError(f"data.levels must be an integer >= 2 or 'continuous', got {self.levels!r}")

    def quantisation_levels(self, dataset: _data.ArrayDataset | None = None) -> int | None:
        """Levels for dequantization and bits/dim; None for continuous data (nats/dim): ``levels``
        when set, else the loaded ``dataset``'s own (:attr:`~scoresde.data.ArrayDataset.levels`),
        else by source (an ``.npz`` needs its dataset: integer arrays are quantised, float ones not)."""
        if self.levels is not None:
            return None if self.levels == "continuous" else int(self.levels)
        if dataset is not None:
            return dataset.levels
        if self.source == "npz":
            raise ValueError("data.levels of an .npz source depends on its dtype: pass the loaded dataset")
        return {"digits": 17, "toy": None}.get(self.source, 256)


@dataclass
class NamedConfig:
    """A section that names a constructor and passes every other key to it as a keyword."""

    name: str = _field("", doc="the constructor; every other key of the section is its keyword option")
    options: dict = _field(factory=dict)


@dataclass
class SDEConfig(NamedConfig):
    """The forward SDE: ``scoresde.sde_from_name(name, **options)``."""

    name: str = _field("vp", doc="vp | ve | subvp | cosine | rf (other keys: its options)",
                       choices=("vp", "ve", "subvp", "cosine", "rf", "discrete-vp"))


@dataclass
class ModelConfig(NamedConfig):
    """The network: a preset of ``scoresde.nets`` or ``unet`` / ``mlp`` with keyword options."""

    name: str = _field("ddpmpp_digits", doc="a scoresde.nets preset, unet or mlp (other keys: its options)")


LOSSES = ("dsm", "fm", "ddpm", "smld", "ssm")


@dataclass
class LossConfig(NamedConfig):
    """The training objective: ``scoresde.losses.loss_from_name(name, sde, **options)``; the
    loss's ``parameterization`` option (``eps`` by default) says what the network outputs."""

    name: str = _field("dsm", choices=LOSSES, doc="dsm | fm | ddpm | smld | ssm (other keys: its options)")


@dataclass
class TrainingConfig:
    """Optimisation and checkpoints (``paper: batch 128, lr 2e-4, warm-up 5000, clip 1, EMA 0.9999``)."""

    steps: int = _field(1000, ge=1, doc="optimiser steps")
    batch_size: int = _field(128, ge=1, doc="samples per step")
    lr: float = _field(2e-4, gt=0, doc="Adam learning rate")
    warmup: int = _field(0, ge=0, doc="linear learning-rate warm-up steps")
    lr_schedule: str = _field("constant", choices=_train.LR_SCHEDULES,
                              doc="learning-rate decay after the warm-up, to 0 at `steps` (constant: none)")
    grad_clip: float | None = _field(1.0, gt=0, doc="gradient-norm clipping (None: off)")
    ema_decay: float = _field(0.999, ge=0, lt=1, doc="EMA decay of the weights used for sampling")
    ema_warmup: bool = _field(False, doc="EMA decay min(decay, (1 + n)/(10 + n)) at update n")
    weight_decay: float = _field(0.0, ge=0, doc="AdamW weight decay")
    seed: int = _field(0, ge=0, doc="seed of initialisation, batches and noise")
    log_every: int = _field(50, ge=1, doc="steps between log lines")
    checkpoint_every: int = _field(1000, ge=1, doc="steps between checkpoints")
    keep: int = _field(2, ge=1, doc="checkpoints kept")
    label_dropout: float = _field(0.0, ge=0, lt=1, doc="classifier-free guidance: probability of training "
                                  "on the null label (needs model.num_classes and model.null_class=true)")
    sample_every: int | None = _field(None, ge=1, doc="steps between sample grids samples/step_<n>.png drawn "
                                      "with the sampling section (at most 256 samples; None: off)")
    eval_every: int | None = _field(None, ge=1, doc="steps between evaluation losses of the EMA model on the "
                                    "first 1000 items of evaluation.split (log.jsonl eval_loss; None: off); with "
                                    "evaluation.inception and fid_ref also its FID of evaluation.fid_samples samples "
                                    "and bits/dim (scoresde.monitor)")
    grad_accum: int = _field(1, ge=1, doc="micro-batches of batch_size averaged per optimiser step")
    amp: str = _field("auto", choices=_train.AMP_MODES, doc="bf16 autocast of the forward pass "
                      "(auto: bf16 for convolutional networks on CPUs with native bf16, where it was measured to keep the loss curve; off on CUDA until measured)")
    compile: bool | str = _field(False, choices=_train.COMPILE_MODES, doc="torch.compile the network (auto: "
                                 "on CUDA with a warm cache or >= 50 000 steps left; a failure falls back to eager)")
    channels_last: bool | str = _field("auto", choices=_train.CHANNELS_LAST_MODES, doc="NHWC memory layout of "
                                       "weights and image batches (auto: under bf16 autocast on CPU, where it was "
                                       "measured faster)")


@dataclass
class SamplingConfig:
    """The sampler used by ``scoresde sample`` and evaluation (``scoresde.sample``)."""

    method: str = _field("dpm-solver++", doc="sampler name")
    steps: int | None = _field(20, ge=1, doc="time steps (None: the method's default)")
    n: int = _field(64, ge=1, doc="samples drawn")
    denoise: bool = _field(False, doc="final Tweedie denoising step")
    clip_denoised: bool = _field(False, doc="clip the Tweedie estimate to the data range in every score call")
    batch_size: int | None = _field(None, ge=1, doc="samples per batch (None: all at once)")
    options: dict = _field(factory=dict, doc="method options (snr, corrector, eta, ...)")


@dataclass
class EvaluationConfig:
    """What ``scoresde eval`` measures."""

    metrics: list[str] = _field(factory=lambda: ["bpd", "fd-digits"],
                                doc="bpd (nats/dim for continuous data), nll, fd-digits, pixel-fd, sliced-w2, mmd, "
                                "fid, is")
    split: str = _field("test", choices=_data.SPLITS, doc="reference / likelihood split")
    n_samples: int = _field(1000, ge=2, doc="generated samples for sample metrics")
    likelihood_n: int | None = _field(200, ge=1, doc="first N images of the split for bits/dim (None: all)")
    likelihood_batch: int = _field(100, ge=1, doc="images per likelihood batch")
    divergence: str = _field("hutchinson", choices=_likelihood.DIVERGENCES, doc="likelihood divergence estimator (auto: exact up to 16 dims)")
    solver: str = _field("bosh3", choices=_likelihood.SOLVERS, doc="likelihood ODE solver (log_likelihood's solver=; "
                         "bosh3, not the library's adams: fewer NFE per error on trained networks, BENCHMARKS.md)")
    likelihood_eps: float | None = _field(None, gt=0, doc="start time of the likelihood ODE (None: the paper's 1e-5 "
                                          "for VP, sub-VP and VE, the SDE's eps otherwise)")
    prior_reference: int = _field(0, ge=0, doc="training items that estimate the prior constant C0 (0: off)")
    rtol: float | None = _field(None, gt=0, doc="likelihood ODE rtol (None: log_likelihood's default for the solver)")
    atol: float | None = _field(None, gt=0, doc="likelihood ODE atol (None: log_likelihood's default for the solver)")
    fid_samples: int = _field(50_000, ge=2, doc="generated samples for fid / is (the papers' 50 000)")
    fid_batch: int = _field(250, ge=1, doc="samples per sampler call and per Inception batch for fid / is")
    fid_ref: str | None = _field(None, doc="reference statistics .npz for fid (`scoresde fid-stats DATA --out REF`)")
    inception: str | None = _field(None, doc="Inception TorchScript file for fid / is (NVIDIA's "
                                   "inception-2015-12-05.pt), or fid-helper (the optional fid extra)")


@dataclass
class Config:
    """A whole run."""

    description: str = _field("", doc="what the run is, in words")
    data: DataConfig = _field(factory=DataConfig)
    sde: SDEConfig = _field(factory=SDEConfig)
    model: ModelConfig = _field(factory=ModelConfig)
    loss: LossConfig = _field(factory=LossConfig)
    training: TrainingConfig = _field(factory=TrainingConfig)
    sampling: SamplingConfig = _field(factory=SamplingConfig)
    evaluation: EvaluationConfig = _field(factory=EvaluationConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-safe dict; named sections list their options flat."""
        return _section_to_dict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        """Validate a nested dict (unknown keys, types, ranges) into a :class:`Config`."""
        return _build(cls, raw, "")


# --------------------------------------------------------------------------- validation


def _section_to_dict(value: Any) -> Any:
    if not dataclasses.is_dataclass(value):
        return copy.deepcopy(value)
    out = {f.name: _section_to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, NamedConfig):  # options are written flat beside the name
        out.update(out.pop("options"))
    return out


def _own_fields(obj_or_cls: Any) -> list[dataclasses.Field]:
    """Fields that a YAML section names explicitly (named sections hide ``options``)."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    fields = dataclasses.fields(cls)
    if issubclass(cls, NamedConfig):
        return [f for f in fields if f.name != "options"]
    return list(fields)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint; ints are accepted where floats are expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for member in inner[:-1]:  # the first member that takes the value (int | str: 256 or "continuous")
            try:
                return _coerce(value, member, key)
            except ValueError:
                pass
        return _coerce(value, inner[-1], key)
    if hint is Any:
        return value
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {value!r}")
        elem = args[0] if args else Any
        return [_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float) and isinstance(value, bool) or not isinstance(value, hint):
        raise ValueError(f"{key} must be of type {_type_name(hint)}, got {value!r}")
    return value


def _check_range(value: Any, meta: dict, key: str) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} must be finite, got {value!r}")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ValueError(f"{key} must be one of {', '.join(map(repr, meta['choices']))}, got {value!r}")
    if meta.get("ge") is not None and value < meta["ge"]:
        raise ValueError(f"{key} must be >= {meta['ge']}, got {value!r}")
    if meta.get("gt") is not None and value <= meta["gt"]:
        raise ValueError(f"{key} must be > {meta['gt']}, got {value!r}")
    if meta.get("lt") is not None and value >= meta["lt"]:
        raise ValueError(f"{key} must be < {meta['lt']}, got {value!r}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Recursively turn a dict into the dataclass ``cls``; errors name the dotted key."""
    where = prefix.rstrip(".") or "the configuration"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in _own_fields(cls)}
    open_section = issubclass(cls, NamedConfig)
    unknown = [k for k in raw if k not in fields]
    if unknown and not open_section:
        raise ValueError(f"unknown key {prefix}{unknown[0]}; {where} accepts {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], raw[name], key + ".")
        else:
            kwargs[name] = _coerce(raw[name], hints[name], key)
            _check_range(kwargs[name], f.metadata, key)
    if open_section:
        kwargs["options"] = {k: raw[k] for k in unknown}
    return cls(**kwargs)


# --------------------------------------------------------------------------- loading


def preset_names() -> list[str]:
    """Names of the presets shipped in ``scoresde/configs``."""
    root = resources.files("scoresde") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(source: str) -> tuple[dict, str]:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder named like a preset is not a config
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such configuration file")
        text, origin = path.read_text(), str(path)
    else:
        file = resources.files("scoresde") / "configs" / f"{source}.yaml"
        if not file.is_file():
            raise ValueError(f"unknown preset {source!r}; presets: {', '.join(preset_names())} (or a .yaml path)")
        text, origin = file.read_text(), f"preset {source}"
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{origin}: invalid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    return raw, origin


def _merge(base: dict, update: dict) -> dict:
    """Deep merge: mappings merge key by key, other values replace. A section whose ``name``
    changes is replaced whole (its options belonged to the old constructor)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        old = out.get(key)
        same_ctor = not (isinstance(value, dict) and "name" in value and isinstance(old, dict)
                         and old.get("name") != value["name"])
        if isinstance(value, dict) and isinstance(old, dict) and same_ctor:
            out[key] = _merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(source: str, _seen: tuple[str, ...] = ()) -> dict:
    """The nested dict of a preset name or YAML path, with ``base:`` chains resolved."""
    raw, origin = _read_yaml(source)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if base in _seen:
        raise ValueError(f"{origin}: circular base chain {' -> '.join(_seen + (base,))}")
    return _merge(load_raw(base, _seen + (source,)), raw)


def _named_sections() -> tuple[str, ...]:
    """The sections whose ``name`` picks a constructor (sde, model, loss)."""
    hints = typing.get_type_hints(Config)
    return tuple(f.name for f in dataclasses.fields(Config)
                 if isinstance(hints[f.name], type) and issubclass(hints[f.name], NamedConfig))


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Apply ``dotted.key=value`` strings (values parsed by ``yaml.safe_load``) to a nested dict.

    A new ``name`` of a named section (``sde.name=rf``) is applied first and resets the section to
    that name alone (the constructor's defaults); the other overrides then apply on top."""
    out = copy.deepcopy(raw)
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r} must look like section.key=value")
        try:
            parsed.append((item, key, yaml.safe_load(text)))
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: value is not valid YAML ({err})") from err
    named = {f"{s}.name" for s in _named_sections()}
    parsed.sort(key=lambda p: p[1] not in named)  # stable: name switches first, the rest in order
    for item, key, value in parsed:
        *parents, leaf = key.split(".")
        if key in named and isinstance(out.get(parents[0]), dict) and out[parents[0]].get("name") != value:
            out[parents[0]] = {}
        node = out
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
            node = child
        node[leaf] = value
    return out


def load_config(source: str | dict, overrides: Sequence[str] = ()) -> Config:
    """A validated :class:`Config` from a preset name, a YAML path or a dict, plus overrides."""
    raw = copy.deepcopy(source) if isinstance(source, dict) else load_raw(source)
    cfg = Config.from_dict(apply_overrides(raw, overrides))
    build_sde(cfg)  # cheap: surfaces bad SDE options at load time, with their key
    from scoresde.sampling import ALIASES, METHODS

    if cfg.sampling.method not in (*METHODS, *ALIASES):
        raise ValueError(f"sampling.method must be one of {', '.join([*METHODS, *ALIASES])}, "
                         f"got {cfg.sampling.method!r}")
    return cfg


def _defaults(ctor: Callable) -> dict[str, Any]:
    """The keyword options of a constructor that have defaults, with their defaults."""
    try:
        params = inspect.signature(ctor).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty}


def describe(cfg: Config) -> list[tuple[str, Any, str]]:
    """Every key of ``cfg`` as ``(dotted key, value, meaning)``: the documented fields of each
    section and, for a named section, every keyword option of the constructor it names (the value
    given, else the constructor's or the network preset's default)."""
    from scoresde import nets

    sde = build_sde(cfg)
    sde_defaults = _defaults(type(sde))
    model_ctor = nets.NCSNpp if cfg.model.name in nets.PRESETS else model_constructors().get(cfg.model.name)
    defaults = {
        "sde": sde_defaults,
        "model": {**_defaults(model_ctor), **nets.PRESETS.get(cfg.model.name, {})} if model_ctor else {},
        # options the loss takes from the SDE (ddpm's betas, smld's sigmas) are not the loss's own
        "loss": {k: v for k, v in _defaults(type(build_loss(cfg, sde))).items() if k not in sde_defaults},
    }
    rows: list[tuple[str, Any, str]] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(value):
            rows.append((f.name, value, f.metadata.get("doc", "")))
            continue
        rows += [(f"{f.name}.{g.name}", getattr(value, g.name), g.metadata.get("doc", "")) for g in _own_fields(value)]
        if isinstance(value, NamedConfig):
            known = defaults[f.name]
            for k in sorted(set(known) | set(value.options)):
                given = k in value.options
                rows.append((f"{f.name}.{k}", value.options[k] if given else known[k],
                             f"option of {value.name}" + ("" if given else " (default)")))
    return rows


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML (loadable by :func:`load_config`), atomically."""
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# --------------------------------------------------------------------------- builders


def _construct(ctor: Callable, options: dict, section: str, *args: Any) -> Any:
    """Call ``ctor(*args, **options)``; a bad option becomes a ValueError naming ``section``."""
    try:
        params = inspect.signature(ctor).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in options:
        if params and not takes_any and key not in params:
            accepted = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY or p.default is not p.empty]
            raise ValueError(f"unknown key {section}.{key}; accepted: {', '.join(accepted)}")
    try:
        return ctor(*args, **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{section}: {err}") from err


def sde_classes() -> dict[str, type]:
    """SDE names of ``sde.name`` -> classes (their keyword arguments are the section's options)."""
    from scoresde.interop.discrete_vp import SDE_NAME, DiscreteVPSDE
    from scoresde.sde import SDES

    return dict(SDES) | {SDE_NAME: DiscreteVPSDE}


def build_sde(cfg: Config):
    """The SDE ``cfg.sde.name`` built with ``cfg.sde.options`` as keyword arguments."""
    return _construct(sde_classes()[cfg.sde.name], cfg.sde.options, "sde")


def model_constructors() -> dict[str, Callable]:
    """Model names -> constructors: every ``scoresde.nets.PRESETS`` entry, ``unet``
    (:class:`~scoresde.nets.NCSNpp`), ``mlp`` (:class:`~scoresde.nets.MLP`) and ``diffusers-unet2d``
    (:class:`~scoresde.interop.diffusers_unet.DiffusersUNet`)."""
    from scoresde import nets
    from scoresde.interop.diffusers_unet import MODEL_NAME, DiffusersUNet

    table: dict[str, Callable] = {name: functools.partial(nets.build_preset, name) for name in nets.PRESETS}
    table.update(unet=nets.NCSNpp, mlp=nets.MLP, score_sde=nets.OfficialScoreModel)
    table[MODEL_NAME] = DiffusersUNet
    return table


def build_model(cfg: Config):
    """The network of ``cfg.model``, built with ``cfg.model.options`` as keyword arguments (after
    the run's SDE for constructors marked ``needs_sde``: the official ``score_sde`` model)."""
    table = model_constructors()
    if cfg.model.name not in table:
        raise ValueError(f"model.name must be one of {', '.join(sorted(table))}, got {cfg.model.name!r}")
    ctor = table[cfg.model.name]
    if getattr(ctor, "needs_sde", False):
        ctor = functools.partial(ctor, build_sde(cfg))
    return _construct(ctor, cfg.model.options, "model")


def build_loss(cfg: Config, sde: Any):
    """``scoresde.losses.loss_from_name(cfg.loss.name, sde, **cfg.loss.options)``."""
    from scoresde.losses import loss_from_name

    return _construct(loss_from_name, cfg.loss.options, "loss", cfg.loss.name, sde)


def build_dataset(cfg: Config, split: str = "train") -> _data.ArrayDataset:
    """The dataset of ``cfg.data`` for ``split``."""
    d = cfg.data
    try:
        return _data.load_dataset(d.source, split, path=d.path, name=d.name, size=d.size,
                                  channels=d.channels, centered=d.centered, n=d.n, seed=cfg.training.seed,
                                  levels=d.levels if isinstance(d.levels, int) else None)
    except ValueError as err:
        raise ValueError(f"data: {err}") from err


def training_dequantization(cfg: Config, dataset: _data.ArrayDataset) -> tuple[int, tuple[float, float]] | None:
    """``(levels, data_range)`` of ``data.dequantize``; None when off or when the data is
    continuous (nothing to dequantize: a preset's setting carries over to float data harmlessly)."""
    levels = cfg.data.quantisation_levels(dataset) if cfg.data.dequantize else None
    return None if levels is None else (levels, _data.data_range(cfg.data.centered))


def build_batches(cfg: Config, dataset: _data.ArrayDataset, rank: int = 0, world_size: int = 1) -> _data.BatchIterator:
    """The seeded, resumable batch iterator of the training section."""
    return _data.BatchIterator(dataset, cfg.training.batch_size, seed=cfg.training.seed, hflip=cfg.data.hflip,
                               dequantize=training_dequantization(cfg, dataset), rank=rank, world_size=world_size)
