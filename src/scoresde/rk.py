"""Explicit Runge--Kutta methods: Butcher tableaus, embedded pairs, and an adaptive solver with a
PI step-size controller.

A method with nodes ``c``, coefficients ``a`` and weights ``b`` advances ``x' = F(t, x)`` by
``h`` as ``k_j = F(t + c_j h, x + h sum_l a_jl k_l)``, ``x_new = x + h sum_j b_j k_j``.  An
embedded pair adds weights ``b_hat`` of one order less; ``e = h sum_j (b_j - b_hat_j) k_j``
estimates the local error of the lower-order solution, and the step is accepted when

    err = RMS( e / (atol + rtol max(|x|, |x_new|)) ) <= 1,

the RMS taken over every entry of the state (for a batch: every sample and coordinate).  The
solution carried on is the higher-order one (local extrapolation).  The next step is set by a
PI controller (Gustafsson; Hairer & Wanner, *Solving ODEs II*, IV.2) with ``q`` the pair's order:

    h_next = h * clip(safety * err^(-0.7/q) * err_prev^(0.4/q), 0.2, 10),

which, unlike the elementary ``h * err^(-1/q)`` rule of torchdiffeq and scipy, damps the
oscillation between accepted and rejected steps; after a rejection the step shrinks by
``safety * err^(-1/q)`` (at least 5x less) and the following step may not grow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torchdiffeq
from torch import Tensor

from ._tensor import check_choice

Field = Callable[[float, Tensor], Tensor]


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge--Kutta method: nodes ``c``, lower-triangular ``a``, weights ``b``, its order."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int


@dataclass(frozen=True)
class EmbeddedPair:
    """A tableau with error weights ``b_err = b - b_hat`` (``b_hat`` of order ``tableau.order - 1``)
    whose last stage is ``F`` at the new point (first same as last: the next step reuses it)."""

    tableau: Tableau
    b_err: tuple[float, ...]


TABLEAUS: dict[str, Tableau] = {
    "euler": Tableau(c=(0.0,), a=((),), b=(1.0,), order=1),
    "heun": Tableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2),
    "midpoint": Tableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2),
    "rk4": Tableau(c=(0.0, 0.5, 0.5, 1.0), a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), order=4),
}


def _pair(c, a, b, b_hat, order: int) -> EmbeddedPair:
    if tuple(a[-1]) + (0,) != tuple(b) or c[-1] != 1:
        raise ValueError("solve_adaptive needs a first-same-as-last pair: a[-1] = b[:-1], c[-1] = 1")
    return EmbeddedPair(Tableau(tuple(c), tuple(map(tuple, a)), tuple(b), order), tuple(x - y for x, y in zip(b, b_hat)))


PAIRS: dict[str, EmbeddedPair] = {
    # Bogacki--Shampine 3(2)
    "bosh3": _pair(
        c=(0, 1 / 2, 3 / 4, 1), a=((), (1 / 2,), (0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
        b=(2 / 9, 1 / 3, 4 / 9, 0), b_hat=(7 / 24, 1 / 4, 1 / 3, 1 / 8), order=3,
    ),
    # Dormand--Prince 5(4)
    "dopri5": _pair(
        c=(0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1),
        a=((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
           (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
           (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
           (35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
        b=(35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0),
        b_hat=(5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40), order=5,
    ),
}


def accumulate(x: Tensor, h: float, weights: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    """``x + h sum_j w_j k_j`` over the nonzero weights: one fused pass per term into a new tensor
    (``x`` itself, untouched, where every weight is zero)."""
    out = x
    for w, k in zip(weights, ks):
        if w:
            out = torch.add(x, k, alpha=h * w) if out is x else out.add_(k, alpha=h * w)
    return out


def rk_stages(field: Field, tableau: Tableau, x: Tensor, t: float, h: float, k0: Tensor | None = None) -> list[Tensor]:
    """The stages ``k_j = F(t + c_j h, x + h sum_l a_jl k_l)``; ``k0``, if given, is ``F(t, x)`` (not re-evaluated)."""
    ks: list[Tensor] = []
    for c, row in zip(tableau.c, tableau.a):
        ks.append(k0 if (not ks and k0 is not None) else field(t + c * h, accumulate(x, h, row, ks)))
    return ks


def rk_step(field: Field, tableau: Tableau, x: Tensor, t: float, s: float) -> Tensor:
    """One explicit RK step ``t -> s`` (``h = s - t``): ``x_s = x + h sum_j b_j k_j``."""
    h = s - t
    return accumulate(x, h, tableau.b, rk_stages(field, tableau, x, t, h))


@dataclass
class AdaptiveStats:
    """Work done by :func:`solve_adaptive`: field evaluations, accepted and rejected steps, and
    ``error``: the sum over accepted steps of ``|e|``, the embedded local error estimate, entry by
    entry (the state's shape; a rough global error indicator that ignores propagation: on the
    likelihood ODE at its default tolerance it lay above the true error on all 192 points of the
    held-out random mixture family, by 4.6x to 4000x, ``benchmarks/likelihood.py --parts family``)."""

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0
    error: Tensor | None = None


def _sample_rms_max(ratio: Tensor) -> Tensor:
    """``norm="sample"``: the largest per-row RMS of a scaled error."""
    return ratio.reshape(ratio.shape[0], -1).square().mean(1).max().sqrt()


NORMS = ("batch", "sample")
MIN_STEP = 1e-12  # relative to max(1, |t|, span): below it solve_adaptive stops (4500 float64 ulps)


def error_ratio(err: Tensor, x: Tensor, x_new: Tensor, rtol: float, atol: float, norm: str = "batch") -> float:
    """``RMS(err / (atol + rtol max(|x|, |x_new|)))`` over all entries (``norm="batch"``), or the
    largest such RMS over the rows ``err[i]`` (``"sample"``: each sample of a batch held to the
    tolerance on its own).  One host sync."""
    ratio = err / (atol + rtol * torch.maximum(x.abs(), x_new.abs()))
    if norm == "batch":
        return float(torch.linalg.vector_norm(ratio) / math.sqrt(ratio.numel()))
    return float(_sample_rms_max(ratio))


def _first_step(x: Tensor, k0: Tensor, t0: float, span: float, rtol: float, atol: float, norm: str) -> float:
    """Initial step ``0.01 ||x|| / ||F(t0, x)||`` in the error norm (Hairer--Norsett--Wanner's first
    guess, without its second evaluation), at most the whole span; ``FloatingPointError`` if the
    state or the field at ``t0`` is not finite."""
    d0, d1 = error_ratio(x, x, x, rtol, atol, norm), error_ratio(k0, x, x, rtol, atol, norm)
    if not (math.isfinite(d0) and math.isfinite(d1)):
        what = "initial state" if not math.isfinite(d0) else "field (the model's output)"
        raise FloatingPointError(f"solve_adaptive: the {what} holds non-finite values at t={t0}")
    h = 0.01 * d0 / d1 if d0 > 1e-5 and d1 > 1e-5 else 1e-6 * span
    return min(h, span)


def solve_adaptive(
    field: Field,
    x: Tensor,
    t0: float,
    t1: float,
    pair: EmbeddedPair,
    *,
    rtol: float,
    atol: float,
    norm: str = "batch",
    max_steps: int = 10_000,
    safety: float = 0.9,
    on_step: Callable[[float, AdaptiveStats], None] | None = None,
) -> tuple[Tensor, AdaptiveStats]:
    """``x(t1)`` for ``x' = F(t, x)``, ``x(t0) = x``, by the embedded ``pair`` with the PI controller
    of the module docstring (either direction of time), the error measured by :func:`error_ratio`
    with ``norm``.  ``field`` takes ``t`` as a Python float.
    A step whose error is not finite is rejected and retried 5x shorter.  A rejected step shorter
    than ``MIN_STEP`` (relative) raises ``FloatingPointError`` naming the time and the cause: NaN/inf
    from the field, or a singular field the steps cannot get past.  More than ``max_steps``
    attempted steps raise ``RuntimeError``.  ``on_step(t, stats)`` is called after each accepted step.
    """
    check_choice(norm, NORMS, "norm")
    tab, q = pair.tableau, pair.tableau.order
    span, sign = abs(t1 - t0), (1.0 if t1 >= t0 else -1.0)
    stats = AdaptiveStats()
    k0 = field(t0, x)
    stats.nfe += 1
    t, h, err_prev, may_grow = t0, _first_step(x, k0, t0, span, rtol, atol, norm), 1.0, True
    while sign * (t1 - t) > 1e-12 * max(1.0, span):
        if stats.accepted + stats.rejected >= max_steps:
            raise RuntimeError(f"solve_adaptive: more than max_steps={max_steps} steps before t={t1} (at t={t})")
        h = min(h, abs(t1 - t))
        ks = rk_stages(field, tab, x, t, sign * h, k0)
        stats.nfe += len(ks) - 1
        x_new = accumulate(x, sign * h, tab.b, ks)
        local = accumulate(torch.zeros_like(x), sign * h, pair.b_err, ks)
        err = error_ratio(local, x, x_new, rtol, atol, norm)
        if not math.isfinite(err) or err > 1.0:
            stats.rejected += 1
            h *= 0.2 if not math.isfinite(err) else max(0.2, safety * err ** (-1 / q))
            may_grow, nonfinite = False, not math.isfinite(err)
            if h < MIN_STEP * max(1.0, abs(t), span):
                cause = "non-finite values from the field" if nonfinite else "step size underflow (a stiff or singular field)"
                raise FloatingPointError(f"solve_adaptive: {cause} near t={t:.9g}")
            continue
        err = max(err, 1e-10)
        factor = min(10.0 if may_grow else 1.0, max(0.2, safety * err ** (-0.7 / q) * err_prev ** (0.4 / q)))
        t = t1 if abs(t1 - t) <= h else t + sign * h
        x, err_prev, may_grow = x_new, err, True
        stats.error = local.abs_() if stats.error is None else stats.error.add_(local.abs_())
        k0 = ks[-1]
        stats.accepted += 1
        h *= factor
        if on_step is not None:
            on_step(t, stats)
    return x, stats


TORCHDIFFEQ_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # its adaptive solvers
ADAPTIVE_METHODS = tuple(PAIRS) + tuple(f"torchdiffeq:{m}" for m in TORCHDIFFEQ_METHODS)


def solve(
    field: Field,
    x: Tensor,
    t0: float,
    t1: float,
    method: str,
    *,
    rtol: float,
    atol: float,
    norm: str = "batch",
    max_steps: int = 10_000,
    return_stats: bool = False,
) -> Tensor | tuple[Tensor, AdaptiveStats | None]:
    """``x(t1)`` by an adaptive method of :data:`ADAPTIVE_METHODS`: ``"bosh3"`` and ``"dopri5"`` by
    :func:`solve_adaptive` (PI control), ``"torchdiffeq:<name>"`` by torchdiffeq's ``odeint``
    (elementary control; time in float64, float32 on MPS; ``field`` is never called outside
    ``[t0, t1]``).  Both measure the error with ``norm`` (:func:`error_ratio`); more than
    ``max_steps`` steps raise ``RuntimeError``.  ``return_stats``: return ``(x, stats)``, the
    :class:`AdaptiveStats` of the PI-controlled pairs (``None`` for torchdiffeq's solvers)."""
    check_choice(method, ADAPTIVE_METHODS, "method")
    check_choice(norm, NORMS, "norm")
    if method in PAIRS:
        out, stats = solve_adaptive(field, x, t0, t1, PAIRS[method], rtol=rtol, atol=atol, norm=norm, max_steps=max_steps)
        return (out, stats) if return_stats else out
    time_dtype = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    span = torch.tensor([t0, t1], dtype=time_dtype, device=x.device)
    options = {"max_num_steps": max_steps, "step_t": span[1:], "dtype": time_dtype}
    if norm == "sample":
        options["norm"] = _sample_rms_max
    lo, hi = min(t0, t1), max(t0, t1)

    def clamped(t: Tensor, y: Tensor) -> Tensor:  # torchdiffeq's first-step probe may overshoot t1
        return field(min(max(float(t), lo), hi), y)

    try:
        out = torchdiffeq.odeint(clamped, x, span, rtol=rtol, atol=atol, method=method.split(":")[1], options=options)[-1]
    except AssertionError as err:  # torchdiffeq signals the step limit by an assertion
        raise RuntimeError(f"the ODE solver stopped after max_steps={max_steps} steps ({err})") from err
    return (out, None) if return_stats else out
