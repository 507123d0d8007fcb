"""Linear inverse problems ``y = A x + sigma_y z``: inpainting, super-resolution, deblurring,
colorization or any :class:`~scoresde.guidance.operators.LinearOperator`, by two methods with one
return type ``(x, ConditionalInfo)``:

* ``method="smc"`` (**the default**): particle sampling with the observed path
  (:func:`~scoresde.guidance.smc.smc_inverse`), asymptotically exact for exact and noisy
  measurements; cost per output sample ``particles x steps`` score evaluations above the last
  observation time (``info.nfe``).
* ``method="replacement"``: the paper's imputation, generalised to a projection (a fast, biased
  option: one chain, ``steps`` evaluations). After every step of the sampler ``sampler`` at time
  ``t`` the row-space part of the state is replaced by a forward-diffused copy of the measurement:

      x <- (I - A^+ A) x + A^+ y_t,      y_t = alpha(t) y + sigma(t) A z,   z ~ N(0, I)

  (``A y_t`` is distributed as ``A x_t`` given ``A x_0 = y``). For a mask this is Song et al.
  (2021)'s imputation; for :class:`~scoresde.guidance.operators.Grayscale` their colorization in
  the decoupled space. *Its bias*: the missing part is drawn from ``p_t(x_miss | y_t)`` given an
  independently re-noised ``y_t`` at each step, not from the ``p_t(x_miss | y)`` that the exact
  conditional reverse SDE needs, so mode weights are distorted wherever the posterior over modes
  stays ambiguous (on the 2-D ring with ``x_1 = 2`` observed: ``P(x_2 > 0)`` 0.28 against the
  exact 0.46; benchmarks/conditional.py). Measurement noise is ignored (``y`` is taken as exact).
  ``fixed_noise=True`` keeps one ``z`` for the run (a deterministic path for ODE and fast solvers).

:func:`reconstruction_guided_score` is a third, approximate route for noisy ``y`` (DPS-style
guidance, a plain score function for any sampler):
``s(x, t) + w grad_x log N(y; A x0_hat(x, t), (sigma_y^2 + r_t^2) I)`` with Tweedie's ``x0_hat``
differentiated through the score and ``r_t^2 = c^2 sigma^2 / (alpha^2 c^2 + sigma^2)`` the
posterior variance of ``x_0`` for data of scale ``c`` (exact for Gaussian data, biased for
multi-modal posteriors).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._tensor import append_dims, as_batch_time, randn_like
from ..score import ScoreFn, tweedie
from ..sde import LinearSDE
from .conditional import check_scale
from .operators import Grayscale, LinearOperator, Mask
from .smc import DEFAULT_PARTICLES, DEFAULT_STEPS, ConditionalInfo, Twist, smc_inverse

Callback = Callable[[int, Tensor, Tensor], Tensor]
METHODS = ("smc", "replacement")


# -- the projection (replacement) method ----------------------------------------------------------
def projection_callback(
    sde: LinearSDE,
    y: Tensor,
    op: LinearOperator,
    generator: torch.Generator | None = None,
    fixed_noise: bool = False,
) -> Callback:
    """The sampler callback ``x <- (I - A^+ A) x + A^+ (alpha(t) y + sigma(t) A z)`` (module doc):
    a new ``z`` at each call, or one ``z`` drawn at the first call with ``fixed_noise``."""
    fixed: list[Tensor] = []

    def callback(step: int, t: Tensor, x: Tensor) -> Tensor:
        if not (fixed_noise and fixed):
            fixed[:] = [randn_like(x, generator)]
        t = as_batch_time(t, x)
        a = append_dims(sde.alpha(t), y.ndim)
        s = append_dims(sde.sigma(t), y.ndim)
        return op.project(x, a * y + s * op(fixed[0]))

    return callback


def _replacement(score_fn, sde, y, op, shape, *, steps, generator, fixed_noise, sampler, **sample_options):
    from ..sampling import sample

    if sample_options.get("batch_size") is not None:
        raise ValueError("batch_size is not supported: the projection needs the whole batch; split y yourself")
    project = projection_callback(sde, y, op, generator, fixed_noise)
    user_callback = sample_options.pop("callback", None)

    def callback(step: int, t: Tensor, x: Tensor) -> Tensor:
        x = project(step, t, x)
        out = user_callback(step, t, x) if user_callback is not None else None
        return x if out is None else out

    x_T = sde.prior_sample(tuple(shape), generator=generator, device=y.device, dtype=y.dtype)
    x_T = project(-1, torch.tensor(sde.T), x_T)
    x, info = sample(score_fn, sde, x_T=x_T, method=sampler, steps=steps, generator=generator,
                     callback=callback, **sample_options)
    steps_run = len(info.grid) - 1 if info.grid is not None else 0
    return op.project(x, y), ConditionalInfo(nfe=info.nfe, method="replacement", steps=steps_run)


def solve_inverse_problem(
    score_fn: ScoreFn,
    sde: LinearSDE,
    y: Tensor,
    op: LinearOperator,
    shape: tuple[int, ...],
    *,
    sigma_y: float = 0.0,
    method: str = "smc",
    particles: int = DEFAULT_PARTICLES,
    steps: int | None = None,
    grid: Tensor | None = None,
    ess_threshold: float = 0.5,
    twist: Twist | None = None,
    sampler: str = "pc",
    fixed_noise: bool = False,
    generator: torch.Generator | None = None,
    **sample_options,
) -> tuple[Tensor, ConditionalInfo]:
    """Sample ``x`` of ``shape`` ``(B, ...)`` given ``y = A x + sigma_y z`` (``A = op``), one sample
    per row of ``y``. Returns ``(x, ConditionalInfo)`` (``info.nfe``: score evaluations per sample).

    ``method="smc"`` (default; module doc): ``particles`` per row (default 64), ``steps``
    log-SNR-uniform steps (default 100) or an explicit descending ``grid``, resampling below
    ``ess_threshold``, optionally a better ``twist`` (:func:`~scoresde.guidance.smc.smc_inverse`);
    exact as particles and steps grow. Cost per output sample: ``particles x
    steps + 1`` score evaluations without noise (6401 by default); with noise ``particles`` per
    step only above the last observation time, then one per step. ``method="replacement"``: the projection method through the
    sampler ``sampler`` of :func:`scoresde.sample` (default ``"pc"``; ``steps`` or that
    sampler's default, ``grid``, ``fixed_noise``, and ``sample_options`` such as ``callback``
    go to it); fast and biased, and it takes ``y`` as exact. Without noise ``A x = y`` holds
    exactly on return (``x = (I - A^+ A) x + A^+ y``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(map(repr, METHODS))}")
    probe = torch.zeros(shape, dtype=y.dtype, device=y.device)
    op.check(probe)
    if tuple(op(probe).shape) != tuple(y.shape):
        raise ValueError(f"y must have shape {tuple(op(probe).shape)} (A applied to {tuple(shape)}), got {tuple(y.shape)}")
    if method == "smc":
        if sample_options:
            raise ValueError(f"options {sorted(sample_options)} apply to method='replacement' only")
        return smc_inverse(score_fn, sde, y, op, tuple(shape), sigma_y=sigma_y, particles=particles,
                           steps=DEFAULT_STEPS if steps is None else steps, grid=grid,
                           ess_threshold=ess_threshold, twist=twist, generator=generator)
    if grid is not None:
        sample_options["grid"] = grid
    return _replacement(score_fn, sde, y, op, shape, steps=steps, generator=generator, fixed_noise=fixed_noise,
                        sampler=sampler, **sample_options)


def inpaint(score_fn: ScoreFn, sde: LinearSDE, x_obs: Tensor, mask: Tensor, **options) -> tuple[Tensor, ConditionalInfo]:
    """Impute the unobserved entries of ``x_obs`` (``mask`` ``True``/1 where observed, shaped like
    ``x_obs`` or like one sample: any shape): :func:`solve_inverse_problem` with
    :class:`~scoresde.guidance.operators.Mask` (default: SMC; ``options`` as there, e.g.
    ``method="replacement"``, ``particles``, ``steps``, ``sigma_y`` for noisy observations).
    Returns ``(x, info)``; without noise ``x[mask] == x_obs[mask]``."""
    op = Mask(mask)
    op.check(x_obs)
    return solve_inverse_problem(score_fn, sde, op(x_obs), op, x_obs.shape, **options)


def colorize(score_fn: ScoreFn, sde: LinearSDE, gray: Tensor, channels: int = 3, **options) -> tuple[Tensor, ConditionalInfo]:
    """Colorize ``gray`` ``(B, 1, ...)`` (e.g. :func:`~scoresde.guidance.operators.to_gray` of an
    image) into ``channels`` channels: :func:`solve_inverse_problem` with
    :class:`~scoresde.guidance.operators.Grayscale` (default: SMC; ``options`` as there).
    Returns ``(x, info)``; without noise ``to_gray(x) == gray``."""
    if gray.ndim < 2 or gray.shape[1] != 1:
        raise ValueError(f"gray must have shape (B, 1, ...), got {tuple(gray.shape)}")
    shape = (gray.shape[0], channels, *gray.shape[2:])
    return solve_inverse_problem(score_fn, sde, gray, Grayscale(channels), shape, **options)


# -- reconstruction guidance ----------------------------------------------------------------------
def reconstruction_guided_score(
    score_fn: ScoreFn,
    sde: LinearSDE,
    y: Tensor,
    op: LinearOperator,
    scale: float = 1.0,
    sigma_y: float = 0.0,
    data_std: float = 1.0,
) -> ScoreFn:
    """``s(x, t) + w grad_x log N(y; A x0_hat(x, t), (sigma_y^2 + r_t^2) I)`` (module doc), the
    gradient through ``score_fn`` by autograd; one score evaluation (with its backward) per call."""
    scale = check_scale(scale)
    sigma_y = check_scale(sigma_y, "sigma_y")
    c2 = float(data_std) ** 2
    if not c2 > 0:
        raise ValueError(f"data_std must be > 0, got {data_std}")

    def guided(x: Tensor, t: Tensor) -> Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            tg = as_batch_time(t, x).detach().clone()
            a, s = append_dims(sde.alpha(tg), x.ndim), append_dims(sde.sigma(tg), x.ndim)
            score = score_fn(xg, tg)
            x0 = tweedie(xg, score, a, s)
            var = sigma_y**2 + c2 * s**2 / (a**2 * c2 + s**2)
            log_lik = -0.5 * ((y.detach().clone() - op(x0)) ** 2 / var).sum()
            (grad,) = torch.autograd.grad(log_lik, xg)
        return score.detach() + scale * grad

    return guided

