"""SDEs against their closed forms: drift and diffusion derived from the kernel (and the kernel as
their integrals), schedule derivatives against finite differences, log-SNR inverses, the
Euler--Maruyama step's law, the discrete DDPM / SMLD chains, the reverse-diffusion discretisation
and the warning for a user schedule whose prior is off.

Monte-Carlo checks allow ``K_SE = 4`` standard errors (false-failure probability 6e-5 for a
correct implementation; the seeds are fixed, so runs are deterministic).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import scoresde as sd
from scoresde.sde import ddpm_alphas_cumprod, ddpm_betas, smld_sigmas

K_SE = 4.0
DT = torch.float64
TS = torch.linspace(0.01, 0.99, 99, dtype=DT)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def vp_beta(sde, t):
    return sde.beta_min + t * (sde.beta_max - sde.beta_min)


def vp_int_beta(sde, t):
    return sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2


def cosine_beta(sde, t):
    """For ``alpha = cos(phi) / c0`` with ``phi = pi/2 (t + s)/(1 + s)`` and ``sigma^2 = 1 - alpha^2``:
    ``f = alpha'/alpha = -pi tan(phi) / (2 (1 + s))`` and ``g^2 = -2 alpha alpha' - 2 f (1 - alpha^2)
    = -2 f``, so ``g^2 = beta(t) = pi tan(phi) / (1 + s)``."""
    return math.pi * torch.tan(0.5 * math.pi * (t + sde.s) / (1 + sde.s)) / (1 + sde.s)


def linear_sde(alpha, sigma) -> sd.LinearSDE:
    """A user LinearSDE built for its formulas only: its ``alpha(T)/sigma(T)`` is not small, so the
    prior warning (tested below) is expected and silenced here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return sd.LinearSDE(alpha=alpha, sigma=sigma)


def custom_sde():
    """``alpha = exp(-t)``, ``sigma = 0.1 + t^2`` with autograd derivatives: ``f = -1`` and
    ``g^2 = (sigma^2)' - 2 f sigma^2 = 4 t sigma + 2 sigma^2``."""
    return linear_sde(lambda t: torch.exp(-t), lambda t: 0.1 + t**2)


# (sde, closed-form f(t), closed-form g^2(t)) -- the seeds' forms
CLOSED_FORMS = [
    (sd.VESDE(0.01, 50.0), lambda s, t: 0 * t, lambda s, t: 2 * s.sigma(t) ** 2 * math.log(50.0 / 0.01)),
    (sd.VPSDE(0.1, 20.0), lambda s, t: -vp_beta(s, t) / 2, vp_beta),
    (sd.SubVPSDE(0.1, 20.0), lambda s, t: -vp_beta(s, t) / 2,
     lambda s, t: vp_beta(s, t) * (1 - torch.exp(-2 * vp_int_beta(s, t)))),
    (sd.CosineVPSDE(), lambda s, t: -cosine_beta(s, t) / 2, cosine_beta),
    (sd.RectifiedFlow(), lambda s, t: -1 / (1 - t), lambda s, t: 2 * t / (1 - t)),
    (custom_sde(), lambda s, t: -torch.ones_like(t), lambda s, t: 4 * t * (0.1 + t**2) + 2 * (0.1 + t**2) ** 2),
    # a constant alpha (VE-like): f = 0, g^2 = (sigma^2)' = 4 sigma^2 for sigma = 0.1 exp(2t)
    (linear_sde(torch.ones_like, lambda t: 0.1 * torch.exp(2 * t)), lambda s, t: 0 * t,
     lambda s, t: 4 * (0.1 * torch.exp(2 * t)) ** 2),
]
IDS = ["ve", "vp", "subvp", "cosine", "rf", "custom", "custom-constant-alpha"]


@pytest.mark.parametrize("sde, f_exact, g2_exact", CLOSED_FORMS, ids=IDS)
def test_derived_drift_and_diffusion_equal_closed_forms(sde, f_exact, g2_exact):
    t = TS * min(sde.T, 0.99)
    torch.testing.assert_close(sde.f(t), f_exact(sde, t), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sde.g2(t), g2_exact(sde, t), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sde.g(t) ** 2, g2_exact(sde, t), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sde", [c[0] for c in CLOSED_FORMS], ids=IDS)
def test_schedule_derivatives_equal_central_differences(sde):
    """``dalpha``, ``dsigma`` (hand-written, or autograd for a user schedule) against the central
    difference ``(u(t + d) - u(t - d)) / 2d`` in float64 with ``d = 1e-5``: truncation
    ``d^2/6 |u^(3)|`` <= 1e-9 relative here (VE: ``u^(3) / u' = log(5000)^2 = 73``) and rounding
    ``1e-16 |u| / d`` ~ 1e-11, so 1e-7 relative separates a right derivative from a wrong one."""
    t, d = TS * min(sde.T, 0.99), 1e-5
    for value, derivative in ((sde.alpha, sde.dalpha), (sde.sigma, sde.dsigma)):
        central = (value(t + d) - value(t - d)) / (2 * d)
        torch.testing.assert_close(derivative(t), central, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("sde", [c[0] for c in CLOSED_FORMS[:5]], ids=IDS[:5])
def test_builtin_closed_form_coefficients_equal_the_derivation_from_the_kernel(sde):
    """The built-in SDEs' own ``f`` and ``g^2`` (closed forms, cheap per sampling step) equal the base
    class's derivation ``f = alpha'/alpha``, ``g^2 = (sigma^2)' - 2 f sigma^2`` from their kernels."""
    t = TS * min(sde.T, 0.99)
    torch.testing.assert_close(sde.f(t), sd.LinearSDE.f(sde, t), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sde.g2(t), sd.LinearSDE.g2(sde, t), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sde.g(t), sd.LinearSDE.g2(sde, t).sqrt(), rtol=1e-9, atol=1e-12)


def test_custom_schedule_reproduces_vp_from_two_functions():
    vp = sd.VPSDE()
    custom = sd.LinearSDE(alpha=vp.alpha, sigma=vp.sigma, eps=vp.eps)
    torch.testing.assert_close(custom.f(TS), -vp_beta(vp, TS) / 2, rtol=1e-6, atol=0)
    torch.testing.assert_close(custom.g2(TS), vp_beta(vp, TS), rtol=1e-6, atol=0)


@pytest.mark.parametrize("sde", [c[0] for c in CLOSED_FORMS], ids=IDS)
def test_log_snr_inverse_round_trips_and_matches_bisection(sde):
    t = TS * min(sde.T, 0.99)
    lam = sde.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())  # decreasing in t
    torch.testing.assert_close(sde.log_snr(t), torch.log(sde.alpha(t) / sde.sigma(t)), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sde.t_of_log_snr(lam), t, rtol=1e-9, atol=1e-9)
    # the closed-form inverse (where a class has one) equals the generic bisection
    torch.testing.assert_close(sd.LinearSDE.t_of_log_snr(sde, lam), sde.t_of_log_snr(lam), rtol=1e-9, atol=1e-9)


# -- the kernel as the integral of drift and diffusion ----------------------------------------------
@pytest.mark.parametrize("sde, s, t", [(sd.VPSDE(), 0.1, 0.8), (sd.VESDE(0.01, 50.0), 0.1, 0.8), (sd.SubVPSDE(), 0.1, 0.8),
                                       (sd.CosineVPSDE(), 0.1, 0.8), (sd.RectifiedFlow(), 0.1, 0.7), (custom_sde(), 0.1, 0.9)],
                         ids=["vp", "ve", "subvp", "cosine", "rf", "custom"])
def test_transition_kernel_is_the_integral_of_drift_and_diffusion(sde, s, t):
    """The linear SDE ``dx = f x dt + g dw`` from ``x_s`` gives ``x_t = a x_s + b z`` with
    ``a = exp(int_s^t f)`` and ``b^2 = int_s^t g(r)^2 a(r, t)^2 dr``, ``a(r, t) = exp(int_r^t f)``:
    ``sde.transition`` (from alpha and sigma) against these integrals of the derived ``f`` and ``g^2``
    by the trapezoidal rule on 2e5 + 1 points (error ~ h^2 |F''| / 12, below 1e-10 relative here)."""
    r = torch.linspace(s, t, 200_001, dtype=DT)
    big_f = torch.cat([torch.zeros(1, dtype=DT), torch.cumulative_trapezoid(sde.f(r), r)])  # int_s^r f
    a_rt = torch.exp(big_f[-1] - big_f)
    a, b = sde.transition(torch.tensor(s, dtype=DT), torch.tensor(t, dtype=DT))
    assert float(a) == pytest.approx(float(a_rt[0]), rel=1e-9)
    assert float(b) ** 2 == pytest.approx(float(torch.trapezoid(sde.g2(r) * a_rt**2, r)), rel=1e-8)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(0.01, 50.0), sd.RectifiedFlow()],
                         ids=["vp", "ve", "rf"])
def test_simulate_one_step_has_the_euler_maruyama_law(sde):
    """One step of ``simulate`` from ``x0 = 1.5`` at ``t0 = 0.3`` is ``N(x0 + f(t0) x0 h, g(t0)^2 h)``:
    mean and std within K_SE standard errors (n = 1e5)."""
    n, x0, t0, h = 100_000, 1.5, 0.3, 0.05
    x = sde.simulate(torch.full((n, 1), x0, dtype=DT), t0, t0 + h, 1, generator=gen(0))
    tt = torch.tensor(t0, dtype=DT)
    mean, std = x0 * (1 + float(sde.f(tt)) * h), float(sde.g(tt)) * math.sqrt(h)
    assert abs(float(x.mean()) - mean) < K_SE * std / math.sqrt(n)
    assert abs(float(x.std()) - std) < K_SE * std / math.sqrt(2 * n)


# -- discrete chains ------------------------------------------------------------------------------
def test_ddpm_betas_and_their_chain_equal_closed_forms_and_the_continuous_vp():
    """``ddpm_betas`` is the paper's ``beta_i = beta_min / N + (i / (N - 1)) (beta_max - beta_min) / N``; the
    chain ``x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z`` from ``x_{-1} = c`` has, by its definition,
    mean ``m_i = sqrt(1 - beta_i) m_{i-1}`` and variance ``v_i = (1 - beta_i) v_{i-1} + beta_i``, which
    ``ddpm_alphas_cumprod`` must close as ``sqrt(abar_i) c`` and ``1 - abar_i`` (float64 rounding)."""
    N, c = 250, 1.5
    betas = ddpm_betas(N, 0.1, 20.0)
    i = torch.arange(N, dtype=DT)
    torch.testing.assert_close(betas, 0.1 / N + i / (N - 1) * (20.0 - 0.1) / N, rtol=1e-14, atol=0)
    abar = ddpm_alphas_cumprod(betas)
    m, v = c, 0.0
    for k in range(N):
        m, v = math.sqrt(1 - float(betas[k])) * m, (1 - float(betas[k])) * v + float(betas[k])
        assert m == pytest.approx(math.sqrt(float(abar[k])) * c, rel=1e-12)
        assert v == pytest.approx(1 - float(abar[k]), rel=1e-12, abs=1e-15)
    # abar_i against the continuous VP at t_i = (i+1)/N: log abar_i = sum log(1 - beta_j) differs
    # from -B(t_i) by at most sum beta_j^2 (|log(1-b) + b| <= b^2 for b <= 1/2) plus the O(1/N)
    # difference of the Riemann sum of the linear beta from its integral
    N = 1000
    betas = ddpm_betas(N, 0.1, 20.0)
    abar = ddpm_alphas_cumprod(betas)
    vp = sd.VPSDE(0.1, 20.0)
    i = torch.arange(N, dtype=DT)
    t_i = (i + 1) / N
    bound = torch.cumsum(betas**2, 0) + 19.9 * (i * (i + 1) / (2 * N * (N - 1)) - (i + 1) ** 2 / (2 * N**2)).abs()
    gap = (torch.log(abar) - torch.log(vp.alpha(t_i) ** 2)).abs()
    assert bool((gap <= bound + 1e-12).all()) and float(gap.max()) < 0.1


def test_smld_sigmas_are_the_ve_sigmas_at_the_grid_times():
    """``sigma_i = sigma_min (sigma_max / sigma_min)^{i / (N - 1)}`` are VE's ``sigma(t_i)``, ``t_i = i / (N - 1)``;
    the chain ``x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z`` then has VE's kernel by telescoping."""
    N = 100
    sigmas = smld_sigmas(N, 0.01, 50.0)
    i = torch.arange(N, dtype=DT)
    torch.testing.assert_close(sigmas, 0.01 * (50.0 / 0.01) ** (i / (N - 1)), rtol=1e-12, atol=0)
    torch.testing.assert_close(sd.VESDE(0.01, 50.0).sigma(i / (N - 1)), sigmas, rtol=1e-12, atol=0)
    assert bool((sigmas[1:] > sigmas[:-1]).all())


def test_reverse_diffusion_discretisation_matches_the_paper():
    x = torch.randn(5, 3, generator=gen(0), dtype=DT)
    t, dt = torch.full((5,), 0.6, dtype=DT), 0.01
    # VE: f_i = 0, G_i = sqrt(sigma_i^2 - sigma_{i-1}^2)
    ve = sd.VESDE()
    f_i, G_i = ve.discretize(x, t, dt)
    torch.testing.assert_close(f_i, torch.zeros_like(x))
    torch.testing.assert_close(G_i, torch.sqrt(ve.sigma(t) ** 2 - ve.sigma(t - dt) ** 2), rtol=1e-12, atol=0)
    # VP: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z with 1 - beta_i = exp(-(B(t) - B(t - dt)))
    vp = sd.VPSDE()
    f_i, G_i = vp.discretize(x, t, dt)
    beta_i = -torch.expm1(-(vp_int_beta(vp, t) - vp_int_beta(vp, t - dt)))
    torch.testing.assert_close(f_i, (torch.sqrt(1 - beta_i) - 1)[:, None] * x, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(G_i, beta_i.sqrt(), rtol=1e-10, atol=0)
    # and beta_i = beta(t) dt up to O(dt^2): |beta_i - beta(t) dt| <= (beta_max dt)^2
    assert float((beta_i - vp_beta(vp, t) * dt).abs().max()) <= (20.0 * dt) ** 2


class CubicDrift(sd.SDE):
    """A generic (kernel-free) SDE ``dx = -x^3 dt + 2 dw`` to exercise the base class."""

    def drift(self, x, t):
        return -(x**3)

    def g(self, t):
        return 2 * torch.ones_like(torch.as_tensor(t, dtype=DT))

    @property
    def prior_std(self):
        return 3.0


def test_generic_sde_discretize_reverse_drift_and_prior():
    sde = CubicDrift()
    x = torch.randn(4, 2, generator=gen(0), dtype=DT)
    t = torch.full((4,), 0.5, dtype=DT)
    f_i, G_i = sde.discretize(x, t, 0.04)
    torch.testing.assert_close(f_i, -(x**3) * 0.04)
    torch.testing.assert_close(G_i, torch.full((4,), 2 * 0.2, dtype=DT))
    score = torch.randn(4, 2, generator=gen(1), dtype=DT)
    torch.testing.assert_close(sde.reverse_drift(x, t, score), -(x**3) - 4 * score)
    torch.testing.assert_close(sde.probability_flow_drift(x, t, score), -(x**3) - 2 * score)
    torch.testing.assert_close(sde.reverse_drift(x, t, score, eta=2.0), -(x**3) - 2.5 * 4 * score)
    z = sde.prior_sample((50_000, 2), generator=gen(2), dtype=DT)
    assert abs(float(z.std()) - 3.0) < K_SE * 3.0 / math.sqrt(2 * z.numel())
    expected = -math.log(2 * math.pi * 9.0) - (x**2).sum(1) / 18
    torch.testing.assert_close(sde.prior_logp(x), expected)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: sd.VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: sd.VESDE(sigma_max=-1.0), "sigma_max"),
        (lambda: sd.VPSDE(beta_min=0.0), "beta_min"),
        (lambda: sd.VPSDE(beta_max=-2.0), "beta_max"),
        (lambda: sd.LinearSDE(alpha=torch.ones_like, sigma=lambda t: t - 0.5), "sigma"),
        (lambda: sd.LinearSDE(alpha=lambda t: 1 - 2 * t, sigma=torch.sqrt), "alpha"),
        (lambda: sd.sde_from_name("vpp"), "sde"),
        (lambda: sd.VPSDE(eps=1.0), "eps"),
        (lambda: sd.VPSDE(T=0.0), "T"),
        (lambda: sd.CosineVPSDE(T=1.0), "T"),
        (lambda: sd.RectifiedFlow(T=1.5), "T"),
        (lambda: sd.VPSDE().marginal(torch.zeros(2, 3), 1.5, torch.zeros(2, 3)), "t"),
        (lambda: sd.VPSDE().marginal(torch.zeros(2, 3), -0.1, torch.zeros(2, 3)), "t"),
        (lambda: sd.VPSDE().transition(-0.2, 0.5), "s"),
        (lambda: sd.VPSDE().simulate(torch.zeros(2), 0.0, 2.0, 10), "t0/t1"),
        (lambda: sd.VPSDE().simulate(torch.zeros(2), 0.0, 0.5, 0), "steps"),
        (lambda: sd.VPSDE().reverse_drift(torch.zeros(2, 1), torch.zeros(2), torch.zeros(2, 1), eta=-1.0), "eta"),
        (lambda: ddpm_betas(1), "N"),
        (lambda: ddpm_betas(10, beta_min=-0.1), "beta_min"),
        (lambda: smld_sigmas(10, sigma_min=0.0), "sigma_min"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_sde_from_name_builds_each_schedule():
    for name, cls in [("ve", sd.VESDE), ("vp", sd.VPSDE), ("sub-vp", sd.SubVPSDE), ("cosine", sd.CosineVPSDE),
                      ("rf", sd.RectifiedFlow)]:
        assert type(sd.sde_from_name(name)) is cls
    assert sd.sde_from_name("vp", beta_max=10.0).beta_max == 10.0


def test_a_user_schedule_whose_prior_is_off_warns():
    """``alpha(T)/sigma(T) = e^-1 / 1.1 = 0.33`` (above ``PRIOR_SNR_MAX = 0.1``): the prior N(0, sigma(T)^2)
    neglects ``alpha(T) x_0``, so the user is told; VP's own schedule given as two functions (0.0067) is not."""
    with pytest.warns(UserWarning, match=r"alpha\(T\)/sigma\(T\) = 0.334"):
        sd.LinearSDE(alpha=lambda t: torch.exp(-t), sigma=lambda t: 0.1 + t**2)
    vp = sd.VPSDE()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sd.LinearSDE(alpha=vp.alpha, sigma=vp.sigma, eps=vp.eps)
