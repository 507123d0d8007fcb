"""Rectified flow's reflow: draw (noise, data) couplings with a trained flow, retrain on them,
and measure how straight a flow is.

Time runs from data ``t = 0`` to noise ``t = 1`` as everywhere in scoresde, so a flow is the
ODE ``dx/dt = u(x, t)`` whose velocity points from data to noise; for
:class:`~scoresde.sde.RectifiedFlow` (``x_t = (1 - t) x_data + t x_noise``) the conditional
velocity is ``u = x_noise - x_data`` and a trained model with the ``flow`` parameterization
outputs ``u_theta(x, t) = E[x_noise - x_data | x_t = x]``.  Code written with the opposite
convention (noise at 0) converts at its boundary with ``t -> 1 - t``, ``u -> -u``.

* :func:`draw_couplings` -- solve the model's probability-flow ODE from prior draws
  ``x_noise`` to ``x_data`` with any deterministic sampler of :func:`scoresde.sample`.
* :class:`ReflowLoss` -- flow matching on those fixed pairs (Liu et al. 2023, "Flow straight
  and fast"): ``x_t = alpha(t) x_data + sigma(t) x_noise``, target ``alpha' x_data + sigma' x_noise``
  (``x_noise - x_data`` for the rectified flow).  Pairs travel to the :class:`~scoresde.train.Trainer`
  as one tensor ``(n, 2, ...)`` (:meth:`Couplings.pairs`).
* :func:`straightness` -- ``S = E int_0^1 |(x_noise - x_data) - u(x_t, t)|^2 dt`` along the
  flow's own trajectories, zero exactly when every trajectory is a straight line run at
  constant speed (then one Euler step is exact).
* :func:`euler_flow` -- Euler's method for ``dx/dt = u`` from ``t = 1`` to ``t = 0`` (the
  sampler of a velocity network, and the integrator behind :func:`straightness`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._tensor import check_batch, check_finite, check_int
from .losses import FlowMatchingLoss, Model
from .sampling import sample
from .score import Parameterization, ScoreFn
from .sde import LinearSDE, RectifiedFlow

VelocityFn = Callable[[Tensor, Tensor], Tensor]


# -- velocities ----------------------------------------------------------------------------------
def velocity_fn_from_score(score_fn: ScoreFn, sde: LinearSDE) -> VelocityFn:
    """The marginal velocity ``u(x, t) = E[alpha' x_0 + sigma' eps | x_t = x]`` of a score.

    It equals the probability-flow drift ``f(t) x - g(t)^2 s(x, t) / 2`` and is computed as the
    ``flow`` output of the score (:meth:`Parameterization.from_score`).  Singular where
    ``alpha(t) = 0`` (``t = 1`` for the rectified flow); a velocity network has no such point.
    """
    param = Parameterization("flow", sde)

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return param.from_score(score_fn(x, t), x, t)

    return velocity


@dataclass
class FlowPath:
    """A discretised trajectory of ``dx/dt = u`` from ``t = 1`` to ``t = 0``.

    ``times``: ``(steps + 1,)`` descending from 1 to 0; ``states``: ``(steps + 1, B, ...)`` with
    ``states[0] = x_noise`` and ``states[-1]`` the end at ``t = 0``; ``velocities``:
    ``(steps, B, ...)``, ``u(states[i], times[i])``; ``nfe = steps``.
    """

    times: Tensor
    states: Tensor
    velocities: Tensor

    @property
    def nfe(self) -> int:
        return self.velocities.shape[0]

    @property
    def end(self) -> Tensor:
        return self.states[-1]


@torch.no_grad()
def euler_flow(velocity_fn: VelocityFn, x_noise: Tensor, steps: int) -> FlowPath:
    """Euler's method on the uniform grid ``t_i = 1 - i/N``, ``i = 0..N`` (``N = steps``)::

        x_{t_{i+1}} = x_{t_i} - u(x_{t_i}, t_i) / N,

    one velocity evaluation per step (``t = 1`` is evaluated, ``t = 0`` is not).  For the
    rectified flow this equals DDIM (``eta = 0``) on the same grid, and it is exact in one
    step for a straight flow.
    """
    steps = check_int(steps, "steps", 1)
    check_finite(x_noise, "x_noise")
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    x, states, velocities = x_noise, [x_noise], []
    for i in range(steps):
        t = torch.full((x.shape[0],), float(times[i]), dtype=x.dtype, device=x.device)
        u = velocity_fn(x, t)
        x = x - u / steps
        states.append(x)
        velocities.append(u)
    return FlowPath(times, torch.stack(states), torch.stack(velocities))


@torch.no_grad()
def straightness(
    velocity_fn: VelocityFn, x_noise: Tensor, x_data: Tensor | None = None, steps: int = 100
) -> float:
    """Straightness of a flow (Liu et al. 2023, eq. 7), in the data-to-noise convention::

        S = E int_0^1 |(x_1 - x_0) - u(x_t, t)|^2 dt,

    where ``x_t`` is the flow's own trajectory (``dx/dt = u(x, t)``) started at ``x_1 = x_noise``
    and ``x_0`` its end (``x_data``); ``|.|^2`` sums over every data axis and ``E`` averages the
    batch.  Discretisation: the trajectory is :func:`euler_flow` with ``steps`` steps and the
    integral is the left Riemann sum over the same evaluations (``t_i = 1 - i/N``), so with
    ``x_data=None`` (the Euler end point) ``S_N`` is the spread of the velocities about their
    mean along each path, ``S_N = mean_b mean_i |u_i - mean_j u_j|^2``, which vanishes exactly for
    straight constant-speed paths; ``S_N -> S`` as ``O(1/N)``.  Given ``x_data`` (e.g. the end
    point of a finer solve, :func:`draw_couplings`) it replaces the Euler end point in
    ``x_1 - x_0``.
    """
    path = euler_flow(velocity_fn, x_noise, steps)
    x_data = path.end if x_data is None else x_data
    if x_data.shape != x_noise.shape:
        raise ValueError(f"x_data must have x_noise's shape {tuple(x_noise.shape)}, got {tuple(x_data.shape)}")
    chord = (x_noise - x_data)[None]
    sq = (chord - path.velocities) ** 2
    return float(sq.reshape(sq.shape[0], sq.shape[1], -1).sum(-1).mean())


# -- couplings -----------------------------------------------------------------------------------
@dataclass
class Couplings:
    """Pairs ``(x_noise, x_data)`` joined by the deterministic flow, and the NFE spent per sample
    path (the sampler's count for one batch)."""

    x_noise: Tensor
    x_data: Tensor
    nfe: int

    def __post_init__(self) -> None:
        if self.x_noise.shape != self.x_data.shape:
            raise ValueError(
                f"x_noise and x_data must have one shape, got {tuple(self.x_noise.shape)}, {tuple(self.x_data.shape)}"
            )

    def __len__(self) -> int:
        return self.x_noise.shape[0]

    def pairs(self) -> Tensor:
        """The couplings as one tensor ``(n, 2, ...)`` with ``[:, 0] = x_data`` and
        ``[:, 1] = x_noise``: the training data of :class:`ReflowLoss`."""
        return torch.stack([self.x_data, self.x_noise], dim=1)


def draw_couplings(
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    method: str = "ode",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    **method_options,
) -> Couplings:
    """Draw ``x_noise ~ N(0, sigma(T)^2 I)`` of ``shape`` ``(n, ...)`` and solve the
    probability-flow ODE of ``score_fn`` from it to ``t = eps`` with the deterministic sampler
    ``method`` of :func:`scoresde.sample` (``"ode"``: adaptive; or ``"heun"``,
    ``"dpm-solver++"``, ``"ddim"``, ... with ``steps``).  For a velocity network use
    ``score_fn = sd.score_fn_from_model(model, sde, "flow")``.

    The map ``x_noise -> x_data`` is deterministic, so the pairs are a coupling of the prior and
    the model's distribution whose reflow (:class:`ReflowLoss`) has straighter paths with the
    same marginals at 0 and 1 (Liu et al. 2023, Theorem 3.3).
    """
    if len(shape) < 2 or shape[0] < 1:
        raise ValueError(f"shape must be (n, ...) with n >= 1 and a data axis, got {tuple(shape)}")
    x_noise = sde.prior_sample(tuple(shape), generator=generator, device=device, dtype=dtype)
    x_data, info = sample(
        score_fn, sde, x_T=x_noise, method=method, steps=steps, generator=generator,
        batch_size=batch_size, dtype=dtype, device=device, **method_options,
    )
    check_finite(x_data, "x_data (the ODE solution)")
    return Couplings(x_noise, x_data, int(info.nfe))


# -- the reflow objective ------------------------------------------------------------------------
class ReflowLoss(FlowMatchingLoss):
    """Flow matching on fixed couplings (rectified flow's reflow)::

        L = E_t E_{(x_data, x_noise)} |u_theta(x_t, t) - (alpha'(t) x_data + sigma'(t) x_noise)|^2,
        x_t = alpha(t) x_data + sigma(t) x_noise,

    i.e. :class:`~scoresde.losses.FlowMatchingLoss` with the independent noise replaced by the
    coupled one (for the rectified flow: ``x_t = (1 - t) x_data + t x_noise``, target
    ``x_noise - x_data``).  Called as ``loss(model, pairs, labels=None, generator=None)`` with
    ``pairs`` of shape ``(B, 2, ...)`` from :meth:`Couplings.pairs`, so a
    :class:`~scoresde.train.Trainer` trains on it unchanged; ``generator`` draws only ``t``.
    Meant for schedules with ``alpha(T) = 0``, ``sigma(T) = 1`` (default: the rectified flow),
    where ``x_noise`` is exactly the state at ``T``.
    """

    def __init__(
        self,
        sde: LinearSDE | None = None,
        time_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        reduce: str = "mean",
    ) -> None:
        super().__init__(RectifiedFlow() if sde is None else sde, time_sampling, logit_mean, logit_std, reduce)

    def __repr__(self) -> str:
        return f"ReflowLoss({type(self.sde).__name__}, time_sampling={self.time_sampling!r})"

    @staticmethod
    def split(pairs: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_data, x_noise)`` from ``pairs`` ``(B, 2, ...)``."""
        if pairs.ndim < 3 or pairs.shape[1] != 2:
            raise ValueError(f"pairs must have shape (B, 2, ...), got {tuple(pairs.shape)}")
        return pairs[:, 0], pairs[:, 1]

    def __call__(
        self,
        model: Model,
        pairs: Tensor,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Monte-Carlo loss over the batch of pairs, ``t`` drawn from ``generator``."""
        x_data, x_noise = self.split(pairs)
        if labels is not None:
            check_batch(x_data, labels, "pairs", "labels")
        t, w = self.sample_time(x_data.shape[0], generator, x_data)
        return (w * self.per_sample(model, x_data, t, x_noise, labels)).mean()
