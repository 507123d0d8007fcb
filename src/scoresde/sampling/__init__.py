"""Sampling from a score: the front door :func:`sample` and its one name -> method table.

A sampler is a plain function ``(score_fn, sde, x_T, grid, *, generator, callback, progress,
**options) -> (x, nfe)`` over a descending float64 time grid ``T .. eps``; one file per family:

* :mod:`.pc` -- predictor-corrector on the reverse SDE (Euler--Maruyama, reverse diffusion,
  ancestral, SRA1 stochastic Runge--Kutta; Langevin, Metropolis-adjusted Langevin, annealed
  Langevin, HMC);
* :mod:`.ode` -- the probability-flow ODE (adaptive with PI step control or torchdiffeq, fixed Euler/Heun/midpoint/RK4), encode/decode;
* :mod:`.fast` -- DDIM and the eta family, DPM-Solver++ multistep (2M, 3M, UniPC-style corrector),
  EDM Heun;
* :mod:`.grids` -- time-uniform, log-SNR-uniform, log-SNR windows (``log-snr-fine``: the fast
  solvers' default) and Karras schedules.

Sampling runs under ``torch.no_grad()`` (not ``inference_mode``), so a score function that needs
autograd inside (classifier guidance) may use ``torch.enable_grad()`` itself.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .._tensor import check_choice, check_finite, check_int
from ..rk import TABLEAUS
from ..sde import SDE, LinearSDE
from ._common import CountedScore, SampleInfo
from ._common import denoise as tweedie
from .fast import ddim, dpm_solver_pp, edm_heun
from .grids import SCHEDULES, check_grid, make_grid
from .ode import decode, encode, ode_adaptive, ode_fixed, slerp
from .pc import pc_sample

__all__ = [
    "ALIASES",
    "METHODS",
    "SCHEDULES",
    "Method",
    "SampleInfo",
    "decode",
    "encode",
    "make_grid",
    "sample",
    "slerp",
    "steps_for_nfe",
]


@dataclass(frozen=True)
class Method:
    """A named sampler: its function, recommended steps and schedule, fixed options, whether it
    needs a :class:`~scoresde.sde.LinearSDE` (a Gaussian kernel and a log-SNR), and its score
    evaluations per step as a function of its full options (None: adaptive, no fixed cost)."""

    fn: Callable[..., tuple[Tensor, int]]
    steps: int
    schedule: str
    options: dict = field(default_factory=dict)
    linear_only: bool = True
    nfe_per_step: Callable[[dict], int] | None = lambda options: 1


def _pc_nfe(o: dict) -> int:
    """:func:`~.pc.pc_sample`'s cost per step: the predictor (``srk`` 2, ``none`` 0, else 1) plus
    ``corrector_steps`` times the corrector's (``mala`` 2, ``hmc`` ``leapfrog_steps``, ``none`` 0, else 1)."""
    predictor = {"srk": 2, "none": 0}.get(o["predictor"] or "none", 1)
    corrector = {"mala": 2, "hmc": o["leapfrog_steps"], "none": 0}.get(o["corrector"] or "none", 1)
    return predictor + o["corrector_steps"] * corrector


def _stages(o: dict) -> int:
    return len(TABLEAUS[o["scheme"]].c)


def _pc(predictor: str, corrector: str = "none", **options) -> dict:
    return {"predictor": predictor, "corrector": corrector, **options}


def _ode(scheme: str) -> Method:
    return Method(ode_fixed, {"euler": 500, "heun": 50, "midpoint": 50, "rk4": 25}[scheme], "log-snr-window",
                  {"scheme": scheme}, linear_only=False, nfe_per_step=_stages)


METHODS: dict[str, Method] = {
    "euler-maruyama": Method(pc_sample, 1000, "log-snr", _pc("euler-maruyama"), linear_only=False, nfe_per_step=_pc_nfe),
    "reverse-diffusion": Method(pc_sample, 1000, "time-uniform", _pc("reverse-diffusion"), linear_only=False, nfe_per_step=_pc_nfe),
    "ancestral": Method(ddim, 1000, "log-snr", {"eta": 1.0}),  # DDPM / SMLD ancestral = DDIM at eta = 1
    "srk": Method(pc_sample, 100, "log-snr", _pc("srk"), linear_only=False, nfe_per_step=_pc_nfe),
    "pc": Method(pc_sample, 1000, "time-uniform", _pc("reverse-diffusion", "langevin"), linear_only=False, nfe_per_step=_pc_nfe),
    "annealed-langevin": Method(pc_sample, 200, "time-uniform", _pc("none", "annealed-langevin", corrector_steps=5),
                                  nfe_per_step=_pc_nfe),
    "ode": Method(ode_adaptive, 1, "time-uniform", linear_only=False, nfe_per_step=None),
    **{f"ode-{scheme}": _ode(scheme) for scheme in ("euler", "heun", "midpoint", "rk4")},
    # the fast solvers on the log-snr-fine grid (window [-3, 5.5]: the data's finest widths live near
    # eps); NFE at the floor on multi-scale / rare-mode / 256-D mixtures (BENCHMARKS.md, samplers: unipc
    # by 20 on 98 of 100 rows, 25 on the others; tests/test_sampling_solvers.py on a 4-D multi-scale
    # mixture): unipc and 3M 20, 2M 30, ddim 100, heun 50 (VP, VE)
    "ddim": Method(ddim, 50, "log-snr-fine"),
    "heun": Method(edm_heun, 18, "karras", nfe_per_step=lambda options: 2),
    "dpm-solver++2m": Method(dpm_solver_pp, 20, "log-snr-fine", {"order": 2}),
    "dpm-solver++3m": Method(dpm_solver_pp, 20, "log-snr-fine", {"order": 3}),
    "unipc": Method(dpm_solver_pp, 20, "log-snr-fine", {"order": 3, "corrector": True}),
}

# the unnamed order is 3M: stable at the floor by 20 NFE on 95 of the 100 hard mixture rows, 2M on 66 (BENCHMARKS.md: samplers)
ALIASES = {"dpm-solver++": "dpm-solver++3m"}

_PLUMBING = ("score_fn", "sde", "x", "grid", "generator", "callback", "progress")


def _resolve(method: str) -> tuple[str, Method]:
    """The method's table name (an alias names its order) and its row."""
    method = ALIASES.get(method, method)
    return method, METHODS[check_choice(method, [*METHODS, *ALIASES], "method")]


def steps_for_nfe(method: str, nfe: int, *, denoise: bool = False, **options) -> int:
    """The largest ``steps`` whose run of ``method`` (with ``options``, and the final Tweedie step
    when ``denoise``) spends at most ``nfe`` score evaluations, from the table's cost per step
    (no dry run).  ``ValueError`` for an adaptive method or a budget below one step."""
    name, spec = _resolve(method)
    _check_options(name, spec, options)
    if spec.nfe_per_step is None:
        raise ValueError(f"method {name!r} chooses its own steps; bound its work with its tolerances or max_nfe")
    defaults = {p.name: p.default for p in inspect.signature(spec.fn).parameters.values()
                if p.name not in _PLUMBING and p.default is not inspect.Parameter.empty}
    per_step = spec.nfe_per_step({**defaults, **spec.options, **options})
    steps = (check_int(nfe, "nfe", 1) - int(denoise)) // max(per_step, 1)
    if steps < 1:
        raise ValueError(f"nfe={nfe} is below the cost of one {name} step ({per_step + int(denoise)} NFE)")
    return steps


def _check_options(method: str, spec: Method, options: dict) -> None:
    allowed = [p for p in inspect.signature(spec.fn).parameters if p not in _PLUMBING]
    for name in options:
        if name not in allowed:
            raise ValueError(f"method {method!r} takes no option {name!r}; its options: {', '.join(allowed)}")


def _start_state(
    sde: SDE, shape, x_T: Tensor | None, t0: float, generator, dtype: torch.dtype | None, device
) -> Tensor:
    """``x_T`` cast to ``dtype``/``device``, or a draw of ``N(0, sigma(t0)^2 I)`` (the prior when ``t0 = T``)."""
    if x_T is not None:
        if not isinstance(x_T, Tensor) or x_T.ndim < 1 or x_T.shape[0] < 1:
            raise ValueError("x_T must be a tensor of shape (B, ...) with B >= 1")
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"shape {tuple(shape)} does not match x_T's shape {tuple(x_T.shape)}")
        return check_finite(x_T.to(dtype=dtype or x_T.dtype, device=device or x_T.device), "x_T")
    if shape is None:
        raise ValueError("give shape or x_T")
    shape = tuple(shape)
    if len(shape) < 1 or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ValueError(f"shape must be a tuple of positive integers (B, ...), got {shape}")
    if isinstance(generator, (list, tuple)):  # per-sample generators: row i from generator i
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} per-sample generators for {shape[0]} samples")
        x = torch.cat([sde.prior_sample((1,) + shape[1:], generator=g, device=device, dtype=dtype or torch.float32)
                       for g in generator])
    else:
        x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype or torch.float32)
    if t0 < sde.T and isinstance(sde, LinearSDE):
        x = x * (float(sde.sigma(torch.tensor(t0, dtype=torch.float64))) / sde.prior_std)
    return x


def _grid_for(sde: SDE, spec: Method, steps: int | None, grid, schedule: str | None) -> Tensor:
    """The explicit ``grid`` (checked), or ``steps`` steps of ``schedule`` (method defaults)."""
    if grid is not None:
        grid = check_grid(grid, sde)
        if steps is not None and steps != len(grid) - 1:
            raise ValueError(f"steps={steps} disagrees with the grid's {len(grid) - 1} steps")
        return grid
    steps = spec.steps if steps is None else check_int(steps, "steps", 1)
    # an SDE without a kernel has no log-SNR: its default grid is uniform in t
    return make_grid(sde, steps, schedule or (spec.schedule if isinstance(sde, LinearSDE) else "time-uniform"))


def sample(
    score_fn: Callable[[Tensor, Tensor], Tensor],
    sde: SDE,
    shape: tuple[int, ...] | None = None,
    *,
    method: str = "unipc",
    steps: int | None = None,
    x_T: Tensor | None = None,
    grid: Tensor | list[float] | None = None,
    schedule: str | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    denoise: bool = False,
    callback=None,
    progress: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    trajectory: bool = False,
    **method_options,
) -> tuple[Tensor, SampleInfo]:
    """Draw samples by the named method (:data:`METHODS`; default UniPC, the recommended fast
    solver: 20 NFE on the ``log-snr-fine`` grid; ``"dpm-solver++"`` is the 3M row, see :data:`ALIASES`);
    returns ``(x, info)`` with ``info.nfe`` and ``info.method`` the table name.

    ``x_T``: the start state (else drawn from the prior with ``generator``); ``grid``: explicit
    descending times (else ``steps`` steps of ``schedule``, both defaulting to the method's
    recommendation); ``generator``: one ``torch.Generator``, or a list of one per sample (sample
    ``i``'s prior draw and noise come from generator ``i`` alone, so it is the same in any batch,
    except where a method couples the batch: Langevin/MALA/HMC step sizes use batch-mean norms
    and the adaptive ``ode`` shares its steps); ``denoise``: one more NFE for Tweedie's ``x0_hat`` at the last time;
    ``callback(step, t, x)`` after each step (a returned tensor replaces the state; with
    ``batch_size`` it sees each chunk); ``dtype``: float32 unless ``x_T`` brings its own;
    ``trajectory``: keep the state after each step in ``info.trajectory``.
    Other keywords are the method's options (e.g. ``eta``, ``order``, ``snr``, ``rtol``).
    """
    name, spec = _resolve(method)
    _check_options(method, spec, method_options)
    if not isinstance(sde, LinearSDE) and (spec.linear_only or denoise):
        general = ", ".join(repr(name) for name, m in METHODS.items() if not m.linear_only)
        need = "denoise=True (Tweedie)" if not spec.linear_only else f"method {method!r}"
        raise ValueError(f"{need} needs a LinearSDE (a Gaussian kernel); for {type(sde).__name__} use one of {general}")
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if batch_size is not None:
        check_int(batch_size, "batch_size", 1)
    grid = _grid_for(sde, spec, steps, grid, schedule)
    x = _start_state(sde, shape, x_T, float(grid[0]), generator, dtype, device)
    states: list[Tensor] | None = [] if trajectory else None

    def step_hook(i: int, t: Tensor, state: Tensor) -> Tensor | None:
        out = callback(i, t, state) if callback is not None else None
        if states is not None:
            states.append((state if out is None else out).clone())
        return out

    hook = step_hook if (callback is not None or trajectory) else None
    options = {**spec.options, **method_options}
    outs, nfe = [], 0
    with torch.no_grad():
        size = batch_size or x.shape[0]
        for k, chunk in enumerate(x.split(size)):
            gen = generator[k * size : (k + 1) * size] if isinstance(generator, (list, tuple)) else generator
            out, n = spec.fn(score_fn, sde, chunk, grid, generator=gen, callback=hook, progress=progress, **options)
            if denoise:
                counted = CountedScore(score_fn)
                out, n = tweedie(counted, sde, out, float(grid[-1])), n + counted.nfe
            outs.append(out)
            nfe = max(nfe, n)
    x = torch.cat(outs)
    if not bool(torch.isfinite(x).all()):  # one host sync per call; the first score was finite (CountedScore)
        bad = int((~torch.isfinite(x)).sum())
        raise FloatingPointError(f"method {method!r} produced {bad} non-finite values from a finite start and a finite "
                                 f"first score: the run diverged (a coarse grid or a score that blows up later)")
    return x, SampleInfo(nfe=nfe, method=name, grid=grid, trajectory=states)
