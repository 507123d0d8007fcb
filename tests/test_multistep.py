"""The variable-step exponential Adams method against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from torch import Tensor

from scoresde.multistep import exponential_weights, solve_exponential_adams

DT = torch.float64


@pytest.mark.parametrize("rate", [0.0, 1.0, -2.0])
def test_weights_integrate_polynomials_times_the_exponential_kernel(rate):
    # Lagrange weights on 4 uneven nodes integrate any cubic against exp(-rate (h - r)) exactly;
    # scipy's adaptive quad gives the reference to ~1e-14.
    nodes, h = [0.0, -0.3, -0.5, -1.1], 0.4
    w = exponential_weights(nodes, h, rate)
    for coeffs in ([1.0], [0.0, 1.0], [2.0, -1.0, 0.5, 3.0]):
        poly = np.polynomial.Polynomial(coeffs)
        ref, _ = quad(lambda r, p=poly: math.exp(-rate * (h - r)) * p(r), 0.0, h, epsabs=1e-14)
        assert w @ poly(np.array(nodes)) == pytest.approx(ref, abs=1e-12)


def _field(s: float, u: Tensor) -> Tensor:
    return u * math.cos(s)


def _signed(diff: Tensor, pred: Tensor, new: Tensor, s: float) -> Tensor:
    return diff  # the state's own local error, one column per entry


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_semilinear_ode_to_its_closed_form_with_a_faithful_error_estimate(direction):
    # u' = -u + u cos(s): u(s) = u0 exp(-(s - s0) + sin s - sin s0), both directions of s (decaying
    # forward, growing ~e^4 backward); the error is bounded by the tolerance times the number of
    # steps (20-60) times the growth of early errors, and stats.error (the local errors' absolute
    # sum) lies above it where nothing grows.
    u0 = torch.tensor([[1.0, -2.0]], dtype=DT)
    s0, s1 = 0.3, 0.3 + direction * 4.0
    exact = u0 * math.exp(-(s1 - s0) + math.sin(s1) - math.sin(s0))
    rates = torch.ones(2, dtype=DT)
    errors = []
    for tol in (1e-5, 1e-7):
        u, stats = solve_exponential_adams(_field, u0, s0, s1, rates, _signed, tol=tol)
        err = float((u - exact).abs().max())
        errors.append(err)
        growth = max(1.0, math.exp(-direction * 4.0 + 2))  # exp(-(s1 - s) + sin s1 - sin s) at most
        assert err < 100 * tol * growth
        if direction > 0:
            assert float(stats.error.max()) > err
        assert stats.nfe == stats.accepted + stats.rejected + 1
    assert errors[1] < errors[0] / 10  # the tolerance sets the error


def test_higher_order_needs_fewer_evaluations():
    u0 = torch.ones(1, 1, dtype=DT)
    rates = torch.ones(1, dtype=DT)
    nfe = {q: solve_exponential_adams(_field, u0, 0.0, 6.0, rates, _signed, tol=1e-4, order=q)[1].nfe for q in (1, 5)}
    assert nfe[5] < nfe[1] / 3


def test_quadrature_column_is_exact_for_a_polynomial_integrand():
    # rate 0: u' = N(s) is plain Adams quadrature; a quartic integrand is integrated exactly once
    # the order reaches 5, so the result is exact up to the first low-order steps' error (tol).
    u0 = torch.zeros(1, 1, dtype=DT)
    u, _ = solve_exponential_adams(lambda s, u: torch.full_like(u, s**4 - s), u0, 0.0, 2.0, torch.zeros(1, dtype=DT),
                                   _signed, tol=1e-9)
    assert float(u) == pytest.approx(2.0**5 / 5 - 2.0, abs=1e-7)


def test_a_looser_rejection_test_saves_rejections_on_the_same_step_sizes():
    # accept=5: steps still sized for tol, rejected only above 5 tol (measured: 47 -> 41 NFE,
    # 5 -> 0 rejections); the error stays within the first test's bound.
    u0 = torch.tensor([[1.0, -2.0]], dtype=DT)
    exact = u0 * math.exp(-4.0 + math.sin(4.3) - math.sin(0.3))
    runs = {a: solve_exponential_adams(_field, u0, 0.3, 4.3, torch.ones(2, dtype=DT), _signed, tol=1e-5, accept=a)
            for a in (1.0, 5.0)}
    assert runs[5.0][1].rejected < runs[1.0][1].rejected and runs[5.0][1].nfe < runs[1.0][1].nfe
    assert float((runs[5.0][0] - exact).abs().max()) < 100 * 1e-5


def _sigmoid(s: float, u: Tensor) -> Tensor:
    return torch.full_like(u, 1 / (1 + math.exp(-4 * (s - 1))))


def test_summed_local_errors_correct_a_quadrature():
    # u' = sigmoid(4 (s - 1)) on [0, 4] (rate 0, the likelihood's kind of integrand): the carried
    # solution's error is the plain sum of its local errors, so adding their signed estimates
    # (stats.correction, each step's corrector minus its predictor) must shrink it (measured 16x at
    # this tolerance; asserted 3x), and stats.error is the same sum of absolute values.
    rate = torch.zeros(1, dtype=DT)
    exact = (math.log1p(math.exp(12.0)) - math.log1p(math.exp(-4.0))) / 4
    u, stats = solve_exponential_adams(_sigmoid, torch.zeros(1, 1, dtype=DT), 0.0, 4.0, rate, _signed, tol=1e-6)
    carried = abs(float(u) - exact)
    assert abs(float(u + stats.correction) - exact) < carried / 3
    assert float(stats.correction.abs()) <= float(stats.error) * (1 + 1e-12)
    assert len(stats.nodes) == len(stats.orders) + 1 == stats.accepted + 1


def test_bad_input_is_a_clear_error():
    u0 = torch.ones(1, 2, dtype=DT)
    with pytest.raises(ValueError, match="rates"):
        solve_exponential_adams(_field, u0, 0.0, 1.0, torch.ones(3, dtype=DT), _signed, tol=1e-3)
    with pytest.raises(FloatingPointError, match="non-finite"):
        solve_exponential_adams(lambda s, u: u * float("nan"), u0, 0.0, 1.0, torch.ones(2, dtype=DT), _signed, tol=1e-3)


def test_weights_in_a_chart_integrate_polynomials_in_the_chart():
    # With a chart phi the weights integrate exp(-rate (h - r)) p(phi(start + r)) exactly for any
    # cubic p (Lagrange basis on phi of the nodes; to the 10-node quadrature in r, ~1e-13 relative here,
    # the integrand being smooth in r but no polynomial); scipy's quad gives the reference.  The chart
    # of the likelihood solver, log(v + a) - log(v + a + b) with v = exp(-2 s), over a step at
    # the data end where it is nearly affine in v, and the identity chart gives back the plain weights.
    a, b, start, h = 0.01, 30.0, 5.0, -0.8

    def phi(s):
        inner = np.logaddexp(-2 * np.asarray(s, dtype=np.float64), math.log(a))
        return inner - np.logaddexp(inner, math.log(b))

    nodes = [0.0, 0.6, 1.1, 2.0]
    for rate in (0.0, 1.0):
        w = exponential_weights(nodes, h, rate, phi, start)
        for coeffs in ([1.0], [0.0, 1.0], [2.0, -1.0, 0.5, 3.0]):
            poly = np.polynomial.Polynomial(coeffs)
            ref, _ = quad(lambda r, p=poly: math.exp(-rate * (h - r)) * p(phi(start + r)), 0.0, h, epsabs=1e-14)
            assert w @ poly(phi(start + np.array(nodes))) == pytest.approx(ref, rel=1e-10)
        assert np.allclose(exponential_weights(nodes, h, rate, lambda s: s, start), exponential_weights(nodes, h, rate))


def test_a_chart_in_which_the_field_is_polynomial_makes_the_steps_exact():
    # u' = -u + N(s) with N = 1 + 2 exp(-2 s) (no dependence on u): a polynomial of degree 1 in
    # phi = exp(-2 s).  In that chart order 2 integrates it exactly whatever the steps (only the
    # first step, of order 1, errs); in s the step control needs far more steps for the same tolerance.
    u0 = torch.tensor([[0.5]], dtype=DT)
    s0, s1 = 0.0, 3.0

    def field(s, u):
        return torch.full_like(u, 1 + 2 * math.exp(-2 * s))

    exact = 0.5 * math.exp(-(s1 - s0)) + (1 - math.exp(-(s1 - s0))) - 2 * (math.exp(-2 * s1) - math.exp(-(s1 - s0) - 2 * s0))
    rates = torch.ones(1, dtype=DT)
    runs = {}
    def in_phi(value):
        return lambda s: np.exp(-2 * np.asarray(s))

    for name, chart in (("s", None), ("phi", in_phi)):
        u, stats = solve_exponential_adams(field, u0, s0, s1, rates, _signed, tol=1e-8, order=2, chart=chart)
        runs[name] = (abs(float(u) - exact), stats.nfe)
    assert runs["phi"][0] < 1e-8 and runs["phi"][1] < 30  # measured: 6e-10 in 16 NFE
    assert runs["s"][1] > 10 * runs["phi"][1]  # measured: 1134 NFE (1e-6)


def test_low_order_steps_keep_the_classical_acceptance_test():
    # Below RELIABLE_ORDER a step is rejected at err > 1 whatever `accept`: at order <= 2 on
    # u' = -u + u cos(3 s) the run with accept = 100 is the run with accept = 1 (237 NFE, 15
    # rejections).  Without the rule accept = 100 rejects nothing and the corrected result errs 11x
    # more (1.3e-4 against 1.2e-5, measured): the low-order estimates are not good enough to correct by.
    u0 = torch.tensor([[1.0, -2.0]], dtype=DT)
    exact = u0 * math.exp(-6.0 + (math.sin(18.9) - math.sin(0.9)) / 3)
    runs = {a: solve_exponential_adams(lambda s, u: u * math.cos(3 * s), u0, 0.3, 6.3, torch.ones(2, dtype=DT), _signed,
                                       tol=1e-5, order=2, accept=a) for a in (1.0, 100.0)}
    (u1, s1), (u100, s100) = runs[1.0], runs[100.0]
    assert s100.rejected == s1.rejected > 0 and s100.nfe == s1.nfe
    assert torch.equal(u100, u1)
    assert float((u1 + s1.correction - exact).abs().max()) < 3e-5
