"""Sampling from a score: the front door :func:`sample` and its one name -> method table.

A sampler is a plain function ``(score_fn, sde, x_T, grid, *, generator, callback, progress,
**options) -> (x, nfe)`` over a descending float64 time grid ``T .. eps``; one file per family:

* :mod:`.pc` -- predictor-corrector on the reverse SDE (Euler--Maruyama, reverse diffusion,
  ancestral, SRA1 stochastic Runge--Kutta; Langevin, Metropolis-adjusted Langevin, annealed
  Langevin, HMC);
* :mod:`.ode` -- the probability-flow ODE (adaptive with PI step control or torchdiffeq, fixed Euler/Heun/midpoint/RK4), encode/decode;
* :mod:`.fast` -- DDIM and the eta family, DPM-Solver++ multistep (2M, 3M, UniPC-style corrector),
  EDM Heun;
* :mod:`.grids` -- time-uniform, log-SNR-uniform and Karras schedules.

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
from ..sde import SDE, LinearSDE
from ._common import CountedScore, SampleInfo, denoise as tweedie
from .fast import ddim, dpm_solver_pp, edm_heun
from .grids import SCHEDULES, check_grid, make_grid
from .ode import decode, encode, ode_adaptive, ode_fixed, slerp
from .pc import pc_sample

__all__ = ["sample", "encode", "decode", "slerp", "SampleInfo", "METHODS", "Method", "make_grid", "SCHEDULES"]


@dataclass(frozen=True)
class Method:
    """A named sampler: its function, recommended steps and schedule, fixed options, and whether
    it needs a :class:`~scoresde.sde.LinearSDE` (a Gaussian kernel and a log-SNR)."""

    fn: Callable[..., tuple[Tensor, int]]
    steps: int
    schedule: str
    options: dict = field(default_factory=dict)
    linear_only: bool = True


def _pc(predictor: str, corrector: str = "none", **options) -> dict:
    return {"predictor": predictor, "corrector": corrector, **options}


METHODS: dict[str, Method] = {
    "euler-maruyama": Method(pc_sample, 1000, "log-snr", _pc("euler-maruyama"), linear_only=False),
    "reverse-diffusion": Method(pc_sample, 1000, "time-uniform", _pc("reverse-diffusion"), linear_only=False),
    "ancestral": Method(ddim, 1000, "log-snr", {"eta": 1.0}),  # DDPM / SMLD ancestral = DDIM at eta = 1
    "srk": Method(pc_sample, 100, "log-snr", _pc("srk"), linear_only=False),
    "pc": Method(pc_sample, 1000, "time-uniform", _pc("reverse-diffusion", "langevin"), linear_only=False),
    "annealed-langevin": Method(pc_sample, 200, "time-uniform", _pc("none", "annealed-langevin", corrector_steps=5)),
    "ode": Method(ode_adaptive, 1, "time-uniform", linear_only=False),
    "ode-euler": Method(ode_fixed, 500, "log-snr-window", {"scheme": "euler"}, linear_only=False),
    "ode-heun": Method(ode_fixed, 50, "log-snr-window", {"scheme": "heun"}, linear_only=False),
    "ode-midpoint": Method(ode_fixed, 50, "log-snr-window", {"scheme": "midpoint"}, linear_only=False),
    "ode-rk4": Method(ode_fixed, 25, "log-snr-window", {"scheme": "rk4"}, linear_only=False),
    "ddim": Method(ddim, 50, "log-snr-window"),
    "heun": Method(edm_heun, 18, "karras"),
    "dpm-solver++": Method(dpm_solver_pp, 20, "log-snr-window", {"order": 3}),
    "dpm-solver++2m": Method(dpm_solver_pp, 20, "log-snr-window", {"order": 2}),
    "dpm-solver++3m": Method(dpm_solver_pp, 20, "log-snr-window", {"order": 3}),
    "unipc": Method(dpm_solver_pp, 20, "log-snr-window", {"order": 3, "corrector": True}),
}

_PLUMBING = ("score_fn", "sde", "x", "grid", "generator", "callback", "progress")


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
    method: str = "dpm-solver++",
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
    """Draw samples by the named method (:data:`METHODS`); returns ``(x, info)`` with ``info.nfe``.

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
    spec = METHODS[check_choice(method, list(METHODS), "method")]
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
    return x, SampleInfo(nfe=nfe, method=method, grid=grid, trajectory=states)
