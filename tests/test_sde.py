"""SDEs against their closed forms: drift and diffusion derived from the kernel, log-SNR inverses,
Euler--Maruyama moments, the discrete DDPM / SMLD chains and the reverse-diffusion discretisation.

Monte-Carlo checks allow ``K_SE = 4`` standard errors (false-failure probability 6e-5 for a
correct implementation; the seeds are fixed, so runs are deterministic).
"""

from __future__ import annotations

import math

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


def custom_sde():
    """``alpha = exp(-t)``, ``sigma = 0.1 + t^2`` with autograd derivatives: ``f = -1`` and
    ``g^2 = (sigma^2)' - 2 f sigma^2 = 4 t sigma + 2 sigma^2``."""
    return sd.LinearSDE(alpha=lambda t: torch.exp(-t), sigma=lambda t: 0.1 + t**2)


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
    (sd.LinearSDE(alpha=torch.ones_like, sigma=lambda t: 0.1 * torch.exp(2 * t)), lambda s, t: 0 * t,
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
def test_schedule_derivatives_equal_autograd(sde):
    # hand-written alpha', sigma' (or autograd ones) against autograd of alpha, sigma
    t = (TS * min(sde.T, 0.99)).requires_grad_(True)
    (da,) = torch.autograd.grad((sde.alpha(t) + 0 * t).sum(), t)  # VE's alpha is constant
    (ds,) = torch.autograd.grad(sde.sigma(t).sum(), t)
    with torch.no_grad():
        torch.testing.assert_close(sde.dalpha(t), da, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(sde.dsigma(t), ds, rtol=1e-9, atol=1e-12)


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


# -- Euler--Maruyama from a point mass ------------------------------------------------------------
def em_moments(sde, x0: float, times: list[float], steps_per_unit: int):
    """Exact moments of the Euler--Maruyama chain itself on the same grids as ``simulate``:
    ``m <- (1 + f h) m``, ``v <- (1 + f h)^2 v + g^2 h`` (the discretisation bias is what they
    differ from the kernel by)."""
    m, v, t0, out = x0, 0.0, 0.0, []
    for t1 in times:
        ts = torch.linspace(t0, t1, round((t1 - t0) * steps_per_unit) + 1, dtype=DT)
        h = (ts[1:] - ts[:-1]).tolist()
        for f, g2, hk in zip(sde.f(ts[:-1]).tolist(), sde.g2(ts[:-1]).tolist(), h):
            m, v = (1 + f * hk) * m, (1 + f * hk) ** 2 * v + g2 * hk
        out.append((m, math.sqrt(v)))
        t0 = t1
    return out


@pytest.mark.parametrize(
    "sde, times",
    [
        (sd.VPSDE(), [0.3, 0.8]),
        (sd.VESDE(0.01, 50.0), [0.3, 0.8]),
        (sd.SubVPSDE(), [0.3, 0.8]),
        (sd.CosineVPSDE(), [0.3, 0.8]),
        (sd.RectifiedFlow(), [0.3, 0.7]),
    ],
    ids=["vp", "ve", "subvp", "cosine", "rf"],
)
def test_euler_maruyama_from_point_mass_matches_the_kernel(sde, times):
    n, steps_per_unit, c = 100_000, 400, 1.5
    x = torch.full((n, 1), c, dtype=DT)
    g, t0 = gen(0), 0.0
    for t1, (m_em, s_em) in zip(times, em_moments(sde, c, times, steps_per_unit)):
        x = sde.simulate(x, t0, t1, round((t1 - t0) * steps_per_unit), generator=g)
        t0 = t1
        a, b = (float(v) for v in sde.transition(0.0, t1))  # kernel from x(0) = c
        mean, std = float(x.mean()), float(x.std())
        se_mean, se_std = b / math.sqrt(n), b / math.sqrt(2 * n)
        # the samples have the Euler--Maruyama chain's exact moments within K_SE standard errors
        assert abs(mean - m_em) < K_SE * se_mean and abs(std - s_em) < K_SE * se_std, (t1, mean, std)
        # hence the kernel's, within K_SE SE plus the exact discretisation bias (< 1.1% here) ...
        assert abs(mean - a * c) < K_SE * se_mean + abs(m_em - a * c), (t1, mean, a * c)
        assert abs(std - b) < K_SE * se_std + abs(s_em - b), (t1, std, b)
    # ... a bias that is first order in the step: 10x finer, it is at least 5x smaller
    for t1, (m_em, s_em), (m_fine, s_fine) in zip(
        times, em_moments(sde, c, times, steps_per_unit), em_moments(sde, c, times, 10 * steps_per_unit)
    ):
        a, b = (float(v) for v in sde.transition(0.0, t1))
        # (RF's mean recursion telescopes exactly: a 1e-6 relative floor absorbs the rounding)
        assert abs(s_fine - b) <= abs(s_em - b) / 5 + 1e-6 * b and abs(s_fine - b) < 2e-3 * b
        assert abs(m_fine - a * c) <= abs(m_em - a * c) / 5 + 1e-6 * abs(a * c)
        assert abs(m_fine - a * c) < 2e-3 * abs(a * c)


# -- discrete chains ------------------------------------------------------------------------------
def test_ddpm_chain_marginals_equal_closed_form_and_the_continuous_vp():
    N, n, c = 250, 100_000, 1.5
    betas = ddpm_betas(N, 0.1, 20.0)
    abar = ddpm_alphas_cumprod(betas)
    torch.testing.assert_close(abar, torch.exp(torch.cumsum(torch.log1p(-betas), 0)), rtol=1e-12, atol=0)
    g = gen(0)
    x = torch.full((n,), c, dtype=DT)
    for i in range(N):
        x = torch.sqrt(1 - betas[i]) * x + torch.sqrt(betas[i]) * torch.randn(n, generator=g, dtype=DT)
        if i in (25, 150):  # two levels: marginal N(sqrt(abar_i) c, 1 - abar_i)
            std = float(torch.sqrt(1 - abar[i]))
            assert abs(float(x.mean()) - float(abar[i].sqrt()) * c) < K_SE * std / math.sqrt(n)
            assert abs(float(x.std()) - std) < K_SE * std / math.sqrt(2 * n)
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


def test_smld_chain_marginals_equal_closed_form():
    N, n = 100, 100_000
    sigmas = smld_sigmas(N, 0.01, 50.0)
    ve = sd.VESDE(0.01, 50.0)
    torch.testing.assert_close(ve.sigma(torch.arange(N, dtype=DT) / (N - 1)), sigmas, rtol=1e-12, atol=0)
    g = gen(0)
    x = 0.7 + sigmas[0] * torch.randn(n, generator=g, dtype=DT)
    for i in range(1, N):
        x = x + torch.sqrt(sigmas[i] ** 2 - sigmas[i - 1] ** 2) * torch.randn(n, generator=g, dtype=DT)
        if i in (30, 90):  # marginal N(0.7, sigma_i^2)
            s = float(sigmas[i])
            assert abs(float(x.mean()) - 0.7) < K_SE * s / math.sqrt(n)
            assert abs(float(x.std()) - s) < K_SE * s / math.sqrt(2 * n)


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
