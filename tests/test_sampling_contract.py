"""One contract run over every sampling method: exact NFE, bit-for-bit seeds, any shape, float64,
callbacks that replace the state, and ``ValueError`` on bad input."""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.sampling import METHODS, steps_for_nfe

# cheap settings per method so that the whole contract runs in seconds
FAST = {name: {"steps": 3} for name in METHODS}
FAST["ode"] = {"rtol": 1e-3, "atol": 1e-3}


def gaussian_score(sde: sd.LinearSDE):
    """Exact score of N(0, I) data diffused by ``sde``: ``-x / (alpha^2 + sigma^2)``; any shape."""

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        var = sde.alpha(t) ** 2 + sde.sigma(t) ** 2
        return -x / var.reshape(-1, *([1] * (x.ndim - 1)))

    return score


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


SDE = sd.VPSDE()


@pytest.mark.parametrize("method", list(METHODS))
def test_nfe_equals_counted_calls_and_seed_reproduces(method):
    counter = Counter(gaussian_score(SDE))
    runs = [
        sd.sample(counter, SDE, (16, 3), method=method, generator=torch.Generator().manual_seed(7), **FAST[method])
        for _ in range(2)
    ]
    (x1, info1), (x2, info2) = runs
    assert info1.nfe == info2.nfe == counter.calls // 2 > 0
    assert torch.equal(x1, x2)
    assert torch.isfinite(x1).all()


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("shape", [(4, 5), (2, 1, 4, 4)])
def test_any_shape_float64_and_denoise(method, shape):
    counter = Counter(gaussian_score(SDE))
    x, info = sd.sample(counter, SDE, shape, method=method, dtype=torch.float64, denoise=True, **FAST[method])
    assert x.shape == shape and x.dtype == torch.float64
    assert counter.calls == info.nfe  # the final Tweedie step is counted


@pytest.mark.parametrize("method", list(METHODS))
def test_callback_sees_every_step_and_replaces_state(method):
    seen = []
    n_steps = len(sd.sample(gaussian_score(SDE), SDE, (4, 2), method=method, **FAST[method])[1].grid) - 1

    def callback(step, t, x):
        seen.append((step, float(t)))
        return torch.zeros_like(x) if step == n_steps - 1 else None

    x, info = sd.sample(gaussian_score(SDE), SDE, (4, 2), method=method, callback=callback, **FAST[method])
    assert [s for s, _ in seen] == list(range(n_steps))
    assert seen[-1][1] == pytest.approx(float(info.grid[-1]), rel=1e-6)
    assert torch.equal(x, torch.zeros_like(x))


@pytest.mark.parametrize("corrector", [None, "mala", "hmc", "annealed-langevin"])
def test_pc_correctors_count_their_evaluations(corrector):
    """NFE per step: predictor 1 + corrector_steps x (1; mala 2; hmc leapfrog_steps; None 0)."""
    counter = Counter(gaussian_score(SDE))
    _, info = sd.sample(counter, SDE, (6, 2), method="pc", steps=4, corrector=corrector, corrector_steps=2)
    per_corrector = {None: 0, "mala": 2, "hmc": 3, "annealed-langevin": 1}[corrector]
    assert info.nfe == counter.calls == 4 * (1 + 2 * per_corrector)


def test_batch_chunks_and_trajectory():
    x, info = sd.sample(gaussian_score(SDE), SDE, (10, 2), method="ddim", steps=4, batch_size=3, trajectory=True)
    assert x.shape == (10, 2) and info.nfe == 4
    assert len(info.trajectory) == 4 * 4  # four chunks, four steps each


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "nope"}, "method"),
        ({"steps": 0}, "steps"),
        ({"method": "pc", "snr": -0.1}, "snr"),
        ({"method": "euler-maruyama", "eta": -1.0}, "eta"),
        ({"method": "ddim", "eta": -0.5}, "eta"),
        ({"x_T": torch.zeros(3, 2)}, "shape"),
        ({"method": "ddim", "not_an_option": 1}, "not_an_option"),
        ({"grid": [0.5, 0.9]}, "grid"),
        ({"method": "pc", "corrector": "nope"}, "corrector"),
        ({"method": "ode-euler", "scheme": "nope"}, "scheme"),
        ({"method": "dpm-solver++", "order": 7}, "order"),
        ({"schedule": "nope"}, "schedule"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sd.sample(gaussian_score(SDE), SDE, (4, 2), **kwargs)


def test_score_of_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="score"):
        sd.sample(lambda x, t: x[:, :1], SDE, (4, 2), method="ddim", steps=2)


def test_score_may_use_autograd_inside():
    """Sampling runs under no_grad, not inference_mode: a guidance-style score can differentiate."""

    def score(x, t):
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(-0.5 * (y**2).sum(), y)
        return grad

    x, _ = sd.sample(score, SDE, (4, 2), method="ddim", steps=3)
    assert torch.isfinite(x).all()


# -- the method table's declared costs, aliases, and grids that reach t = 0 ---------------------------
COSTED = [name for name, spec in METHODS.items() if spec.nfe_per_step is not None]


@pytest.mark.parametrize("method", COSTED)
@pytest.mark.parametrize("options", [{}, {"denoise": True}], ids=["plain", "denoise"])
def test_steps_for_nfe_is_the_largest_run_within_the_budget(method, options):
    """The table's cost per step (no dry run) gives the largest ``steps`` whose counted NFE fits 23."""
    steps = steps_for_nfe(method, 23, **options)
    run = lambda n: sd.sample(gaussian_score(SDE), SDE, (2, 2), method=method, steps=n, **options)[1].nfe  # noqa: E731
    assert run(steps) <= 23 < run(steps + 1)


@pytest.mark.parametrize("options", [{"corrector": "hmc", "leapfrog_steps": 4}, {"corrector": "mala", "corrector_steps": 2},
                                     {"predictor": "srk", "corrector": None}])
def test_steps_for_nfe_reads_the_pc_options(options):
    steps = steps_for_nfe("pc", 40, **options)
    run = lambda n: sd.sample(gaussian_score(SDE), SDE, (2, 2), method="pc", steps=n, **options)[1].nfe  # noqa: E731
    assert run(steps) <= 40 < run(steps + 1)


def test_steps_for_nfe_refuses_adaptive_methods_and_tiny_budgets():
    with pytest.raises(ValueError, match="ode"):
        steps_for_nfe("ode", 50)
    with pytest.raises(ValueError, match="nfe=1"):
        steps_for_nfe("heun", 1)


def test_dpm_solver_pp_names_its_order():
    """``"dpm-solver++"`` is the 3M row: the same samples, and ``info.method`` says which."""
    a, info = sd.sample(gaussian_score(SDE), SDE, (4, 2), method="dpm-solver++", generator=torch.Generator().manual_seed(0))
    b, _ = sd.sample(gaussian_score(SDE), SDE, (4, 2), method="dpm-solver++3m", generator=torch.Generator().manual_seed(0))
    assert info.method == "dpm-solver++3m" and torch.equal(a, b)


ZERO_SDES = [sd.VPSDE(), sd.SubVPSDE(), sd.CosineVPSDE(), sd.RectifiedFlow()]  # sigma(0) = 0: lambda(0) = inf
FAST_SOLVERS = ["ddim", "ancestral", "dpm-solver++2m", "dpm-solver++3m", "unipc", "heun"]


def _ring_run(sde, grid, method, **kw):
    ring = sd.GaussianMixture.named("ring2d")
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return sd.sample(ring.score_fn(sde), sde, x_T=x_T, grid=grid, method=method,
                     generator=torch.Generator().manual_seed(1), **kw)


@pytest.mark.parametrize("sde", ZERO_SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("method", FAST_SOLVERS)
def test_a_grid_ending_at_zero_lands_on_the_denoised_prediction(sde, method):
    """``[..., 0.01, 0]`` equals ``[..., 0.01, tiny]`` followed by Tweedie's ``x0`` (one NFE more), to
    ``1e-5``: the exponential step to ``tiny`` is ``(sigma_tiny/sigma_0.01) x + alpha_tiny (1 - e^-h) x0_hat``
    and the final denoising moves it by ``sigma_tiny^2 s``, both ``O(sigma_tiny / sigma_0.01) = 1e-5``
    with ``sigma_tiny = 3e-7``.  EDM Heun's last step to ``sigma~ = 0`` is its Euler step, which
    is ``x0_hat`` at the previous time exactly (EDM Alg. 2): there the reference is the grid without
    its last time, then Tweedie."""
    start = float(sd.sampling.make_grid(sde, 1, "log-snr")[0])
    head = [start, 0.5, 0.1, 0.01]
    tiny = float(sde.t_of_log_snr(torch.tensor(-math.log(3e-7), dtype=torch.float64)))
    x, info = _ring_run(sde, head + [0.0], method)
    if method == "heun":
        ref, ref_info = _ring_run(sde, head, method, denoise=True)
        assert info.nfe == ref_info.nfe == 2 * len(head) - 1
    else:
        ref, ref_info = _ring_run(sde, head + [tiny], method, denoise=True)
        assert info.nfe == ref_info.nfe - 1 == len(head)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)


def test_a_grid_time_without_a_log_snr_is_a_value_error_naming_it():
    """The rectified flow at t = 1 has alpha = 0: Tweedie's denoiser is undefined there."""
    for method in FAST_SOLVERS:
        with pytest.raises(ValueError, match="grid time 1 "):
            _ring_run(sd.RectifiedFlow(), [1.0, 0.5, 0.01], method)
