"""No silent non-finite results: ``sd.sample`` checks ``x_T``, the first score and the result;
the adaptive ODE names a field that turns NaN; ``encode`` / ``decode`` name a NaN input."""

from __future__ import annotations

import re

import pytest
import torch

import scoresde as sd

SDE = sd.VPSDE()
RING = sd.GaussianMixture.named("ring2d")
METHODS = ["ddim", "dpm-solver++", "heun", "euler-maruyama", "pc", "srk", "ode", "ode-heun"]
# (srk's 5-step grid is coarse on purpose here: its step-limit warning is expected and harmless)


def nan_score(x, t):
    return torch.full_like(x, float("nan"))


@pytest.mark.parametrize("method", METHODS)
def test_a_nan_score_is_caught_at_its_first_evaluation(method):
    with pytest.raises(FloatingPointError, match="score_fn returned 8 non-finite values at its first evaluation"):
        sd.sample(nan_score, SDE, (4, 2), method=method, steps=5)


@pytest.mark.parametrize("method", METHODS)
def test_a_nan_start_state_is_named(method):
    x_T = torch.zeros(4, 2)
    x_T[1, 0] = float("inf")
    with pytest.raises(ValueError, match="x_T holds 1 non-finite values"):
        sd.sample(RING.score_fn(SDE), SDE, x_T=x_T, method=method, steps=5)


def late_nan_score(x, t):
    """The ring's exact score, NaN below t = 0.5 (a model that breaks at low noise)."""
    out = RING.score_fn(SDE)(x, t)
    return torch.where((t < 0.5).reshape(-1, 1), torch.full_like(out, float("nan")), out)


@pytest.mark.parametrize("method", ["ddim", "dpm-solver++", "euler-maruyama", "heun", "ode-rk4"])
def test_a_score_that_turns_nan_later_fails_the_result_check(method):
    with pytest.raises(FloatingPointError, match=re.escape(f"method '{method}' produced 8 non-finite values")):
        sd.sample(late_nan_score, SDE, (4, 2), method=method, steps=6)


@pytest.mark.parametrize("solver", ["torchdiffeq:dopri5", "dopri5"])
def test_the_adaptive_ode_names_a_nan_field(solver):
    """Today's torchdiffeq shrinks its step to nothing on a NaN field and reports a step limit: the
    sampler reports the field instead."""
    with pytest.raises(FloatingPointError, match="non-finite"):
        sd.sample(late_nan_score, SDE, (4, 2), method="ode", solver=solver)


@pytest.mark.parametrize("fn, name", [(sd.encode, "encode: x"), (sd.decode, "decode: z")])
def test_encode_and_decode_name_a_nan_input(fn, name):
    x = torch.zeros(3, 2)
    x[0, 1] = float("nan")
    with pytest.raises(ValueError, match=f"{name} holds 1 non-finite values"):
        fn(RING.score_fn(SDE), SDE, x)


def test_finite_runs_pass_the_checks():
    """The checks cost one reduction on the first score and one on the result, and pass finite runs."""
    x, info = sd.sample(RING.score_fn(SDE), SDE, (64, 2), method="dpm-solver++", steps=10,
                        generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and info.nfe == 10
