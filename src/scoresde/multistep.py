"""A variable-step exponential Adams method for semilinear ODEs, one field evaluation per step,
its error estimated by an Adams--Moulton corrector.

The ODE is ``u' = -c * u + N(s, u)`` with a constant rate ``c`` per column of the state (``0`` for
a plain quadrature column).  Over a step ``s -> s + h`` the variation-of-constants formula
(Hochbruck & Ostermann, *Exponential integrators*, Acta Numerica 2010, sec. 2.5) is exact::

    u(s + h) = exp(-c h) u(s) + int_0^h exp(-c (h - r)) N(s + r, u(s + r)) dr.

The step replaces ``N`` by the polynomial through its last ``q`` values (exponential
Adams--Bashforth of order ``q``, the solution carried on); with ``N`` evaluated at the new point
(the one evaluation of the step, kept as the next step's history) the polynomial through the
new value and the last ``q`` ones gives the exponential Adams--Moulton value of order ``q + 1``.
Their difference estimates the local error of the carried solution (Milne's device; Hairer,
Norsett & Wanner, *Solving ODEs I*, III.5).  For any spacing of the points the weights are
``w_j = int_0^h exp(-c (h - r)) L_j(r) dr`` (``L_j`` the Lagrange basis), by Gauss--Legendre
quadrature in float64 (exact to round-off for steps ``|c h| <= 3``).  The polynomial may be one in a
*chart* ``phi(s)`` instead of ``s`` (``L_j`` the Lagrange basis on the points ``phi(s_j)``, the
integral still in ``s``): a field smooth in ``phi`` but growing like ``exp(s)`` in ``s`` is then
interpolated where a polynomial in ``s`` extrapolates that growth poorly.

The caller maps that difference to the quantities it cares about (``local_error``); the next
step is ``h * clip(safety * err^(-1/(q+1)), 0.2, grow)`` with ``err`` their size over ``tol`` (the
elementary controller: the PI controller of :mod:`scoresde.rk` grew the steps too slowly where the
error stays far below the tolerance), and a step is rejected only when ``err > accept`` (``accept
= 1``: the classical test; a caller who adds the estimates to the result, ``stats.correction``,
can save the NFE a rejection costs by a larger ``accept`` while the steps are still sized for
``tol``).  Steps of order ``q < RELIABLE_ORDER`` are held to the classical test whatever
``accept``: there the estimate is the leading term of a series whose next term is not small where
the field bends (on the likelihood's mixtures the true local error of order-1 and -2 steps was up
to 3.6x the estimate, or of the other sign, where that of orders 3--5 was within 3 %).
The signed local errors of the accepted steps are summed (``stats.correction``): added to the
carried solution they make it the corrector's, of one order more, at no extra evaluation.
The order varies (as in variable-order Adams codes, *Solving ODEs I*, III.7): the same evaluation
gives the error estimates of the orders ``q - 1``, ``q``, ``q + 1`` (their predictors and
correctors from the same history), and the next step takes the order that allows the longest
step.  It starts at 1 (the first step has only the initial evaluation) and can rise by one per
accepted step up to ``order``; a field that is smooth in ``s`` runs at the top order, a rough one
(a trained network's) at 2--3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field as default

import numpy as np
import torch
from torch import Tensor

from ._tensor import check_choice, check_int
from .rk import MIN_STEP, NORMS

Field = Callable[[float, Tensor], Tensor]
LocalError = Callable[[Tensor, Tensor, Tensor, float], Tensor]
Chart = Callable[[np.ndarray], np.ndarray]
QUADRATURE_POINTS = 10  # Gauss--Legendre nodes for the weights: polynomials of degree 19 exact
RELIABLE_ORDER = 3  # steps of lower order are held to err <= 1 whatever ``accept`` (module docstring)


def exponential_weights(
    nodes: Sequence[float], h: float, rate: float, chart: Chart | None = None, start: float = 0.0
) -> np.ndarray:
    """``w_j = int_0^h exp(-rate (h - r)) L_j(r) dr`` for the Lagrange basis ``L_j`` on ``nodes``
    (offsets from the step's start ``start``; float64).  With a ``chart`` ``phi`` (monotone) the
    basis is that of the polynomial in ``phi``: ``L_j`` on the points ``phi(start + nodes)``,
    evaluated at ``phi(start + r)``."""
    xi, wi = np.polynomial.legendre.leggauss(QUADRATURE_POINTS)
    r = h * (xi + 1) / 2
    kernel = np.exp(-rate * (h - r)) * wi * (h / 2)
    nodes = np.asarray(nodes, dtype=np.float64)
    if chart is not None:
        r, nodes = chart(start + r), chart(start + nodes)
    basis = np.ones((nodes.size, r.size))
    for j in range(nodes.size):
        for m in range(nodes.size):
            if m != j:
                basis[j] *= (r - nodes[m]) / (nodes[j] - nodes[m])
    return basis @ kernel


def exponential_adams(
    base: Tensor, rates: Tensor, offsets: list[float], values: list[Tensor], h: float,
    chart: Chart | None = None, start: float = 0.0,
) -> Tensor:
    """``exp(-c h) base + sum_j w_j(c) values_j`` (:func:`exponential_weights` on ``offsets``, in
    ``chart`` from ``start``) for each distinct rate ``c`` of the columns."""
    out = torch.empty_like(base)
    for c in torch.unique(rates).tolist():
        cols = rates == c
        acc = base[:, cols] * math.exp(-c * h)
        for w, v in zip(exponential_weights(offsets, h, c, chart, start).tolist(), values):
            acc = acc + w * v[:, cols]
        out[:, cols] = acc
    return out


@dataclass
class MultistepStats:
    """Work done by :func:`solve_exponential_adams`: field evaluations, accepted and rejected steps,
    the sums over the accepted steps of the signed ``local_error`` (``correction``) and of its
    absolute value (``error``; both of its shape), the accepted ``nodes`` (``s0`` first), each
    step's predictor order (``orders``, one fewer than the nodes) and the ``chart`` of the
    interpolation (``None``: ``s``)."""

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0
    correction: Tensor | None = None
    error: Tensor | None = None
    nodes: list[float] = default(default_factory=list)
    orders: list[int] = default(default_factory=list)
    chart: Chart | None = None


def solve_exponential_adams(
    field: Field,
    u: Tensor,
    s0: float,
    s1: float,
    rates: Tensor,
    local_error: LocalError,
    *,
    tol: float,
    order: int = 5,
    norm: str = "batch",
    first_step: float | Callable[[Tensor], float] | None = None,
    max_steps: int = 10_000,
    safety: float = 0.8,
    grow: float = 3.0,
    accept: float = 1.0,
    chart: Callable[[Tensor], Chart] | None = None,
) -> tuple[Tensor, MultistepStats]:
    """``u(s1)`` for ``u' = -rates * u + field(s, u)``, ``u(s0) = u`` (flat ``(B, n)`` state,
    ``rates`` of shape ``(n,)``), by the method of the module docstring (either direction), of
    order at most ``order``.

    ``local_error(corrector - predictor, predictor, field_at_predictor, s_new)`` maps the
    difference to signed local errors of shape ``(B, m)``; a sample's size is their mean absolute
    value; ``err`` is the mean size over the batch (``norm="batch"``) or the largest (``"sample"``)
    over ``tol``, the steps are sized for ``err = 1`` and a step is rejected when ``err > accept``
    (``err > 1`` below :data:`RELIABLE_ORDER`).  ``first_step``: the first ``|h|``, or a function of
    ``field(s0, u)`` giving it (default ``1e-3`` of the span).  ``chart``: a function of
    ``field(s0, u)`` giving the chart ``phi`` (vectorised over float64 arrays of ``s``) in which
    the field is interpolated (default ``s`` itself), kept in ``stats.chart``.  A non-finite field at the start, or
    a rejected step shorter than ``MIN_STEP`` (relative), raises ``FloatingPointError`` naming
    ``s``; more than ``max_steps`` attempted steps raise ``RuntimeError``.
    """
    check_choice(norm, NORMS, "norm")
    check_int(order, "order", 1)
    if u.ndim != 2 or rates.shape != u.shape[1:]:
        raise ValueError(f"solve_exponential_adams needs a (B, n) state and (n,) rates, got {tuple(u.shape)} and {tuple(rates.shape)}")
    span, sign = abs(s1 - s0), (1.0 if s1 >= s0 else -1.0)
    stats = MultistepStats()
    nodes, values = [s0], [field(s0, u)]
    stats.nfe += 1
    stats.nodes = [s0]
    if not bool(torch.isfinite(values[0]).all()):
        raise FloatingPointError(f"solve_exponential_adams: the field holds non-finite values at s={s0}")
    if first_step is None:
        first_step = 1e-3 * span
    s, h, q = s0, first_step(values[0]) if callable(first_step) else first_step, 1
    chart = stats.chart = None if chart is None else chart(values[0])
    while sign * (s1 - s) > 1e-12 * max(1.0, span):
        if stats.accepted + stats.rejected >= max_steps:
            raise RuntimeError(f"solve_exponential_adams: more than max_steps={max_steps} steps before s={s1} (at s={s})")
        h = min(h, abs(s1 - s))
        s_new = s1 if abs(s1 - s) <= h * (1 + 1e-12) else s + sign * h
        offsets = [t - s for t in nodes]
        pred = exponential_adams(u, rates, offsets[-q:], values[-q:], s_new - s, chart, s)
        new = field(s_new, pred)
        stats.nfe += 1
        # the local errors of the orders around q from the same evaluation (variable order)
        errs, locals_ = {}, {}
        for k in range(max(1, q - 1), min(q + 1, len(nodes)) + 1):
            pred_k = pred if k == q else exponential_adams(u, rates, offsets[-k:], values[-k:], s_new - s, chart, s)
            corr_k = exponential_adams(u, rates, offsets[-k:] + [s_new - s], values[-k:] + [new], s_new - s, chart, s)
            locals_[k] = local_error(corr_k - pred_k, pred_k, new, s_new)
            size = locals_[k].abs().mean(1)
            errs[k] = float(size.mean() if norm == "batch" else size.max()) / tol
        err = errs[q]
        factors = {k: safety * max(e, 1e-10) ** (-1 / (k + 1)) for k, e in errs.items() if math.isfinite(e)}
        best = max(factors, key=factors.get) if factors else q
        if not math.isfinite(err) or err > (accept if q >= RELIABLE_ORDER else 1.0):
            stats.rejected += 1
            h *= 0.2 if not math.isfinite(err) else min(1.0, max(0.2, factors[best]))
            q = best
            if h < MIN_STEP * max(1.0, abs(s), span):
                cause = "non-finite values from the field" if not math.isfinite(err) else "step size underflow"
                raise FloatingPointError(f"solve_exponential_adams: {cause} near s={s:.9g}")
            continue
        s, u, local = s_new, pred, locals_[q]
        stats.correction = local if stats.correction is None else stats.correction + local
        stats.error = local.abs() if stats.error is None else stats.error + local.abs()
        stats.accepted += 1
        stats.nodes.append(s), stats.orders.append(q)
        nodes, values = (nodes + [s])[-order:], (values + [new])[-order:]
        h *= min(grow, max(0.2, factors[best]))
        q = best
    return u, stats

