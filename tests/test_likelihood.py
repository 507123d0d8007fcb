"""Likelihoods through the probability-flow ODE against the Gaussian-mixture oracle's closed forms."""

from __future__ import annotations

import importlib.util
import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde._tensor import gaussian_logp
from scoresde.likelihood import (
    ADAMS_TOL, VJPEngine, draw_probes, end_time, estimated_prior_constant, likelihood_eps, prior_constant, prior_correction,
    value_and_divergence, value_and_divergence_terms,
)

PAPER_EPS = 1e-5  # where the paper starts its likelihood integrals
SDES = {name: partial(make, eps=PAPER_EPS) for name, make in {"vp": sd.VPSDE, "subvp": sd.SubVPSDE, "ve": sd.VESDE}.items()}


def _data(name: str, n: int, dtype=torch.float32, seed: int = 0):
    gmm = sd.GaussianMixture.named(name)
    x, _ = gmm.sample(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return gmm, x


def _with_exact_terminal(gmm, sde, info):
    """The estimate with the oracle's exact ``log p_{t_end}(z)`` in place of the Gaussian prior:
    what is left differs from ``log p_eps`` only by the solver's error."""
    return gmm.log_prob(info.z.double(), info.t_end, sde) + info.delta_logp.double()


@pytest.mark.parametrize("variable", ["log-snr", "t"])
@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("mixture", ["ring2d", "mix16"])
def test_exact_divergence_matches_closed_form(mixture, sde_name, variable):
    sde = SDES[sde_name]()
    gmm, x = _data(mixture, 32)
    # the defaults (bosh3, tolerance 1e-3) in the log-SNR chart; the paper's (dopri5, 1e-5) in t,
    # where VE needs them (its ODE in t is stiff near the data)
    options = {} if variable == "log-snr" else dict(solver="dopri5", rtol=1e-5, atol=1e-5)
    logp, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, variable=variable, **options)
    dim = x.shape[1]
    assert info.eps == PAPER_EPS
    ref = gmm.log_prob(x.double(), info.eps, sde)
    # Solver error alone: dopri5 at rtol = atol = 1e-5 per dimension leaves 2e-5..1e-4 nats/dim
    # on average (benchmarks/likelihood.py, 256 samples) and up to ~3e-3 on rare samples that
    # sit between modes; bound the mean by 5x and the worst sample by 3x those figures.
    solver_err = (_with_exact_terminal(gmm, sde, info) - ref).abs() / dim
    assert solver_err.mean() < 5e-4
    assert solver_err.max() < 1e-2
    # With the corrected prior (the default) what is left besides the solver's error is the
    # constant C0 = log p_T(0) - log N(0; 0, sigma_T^2), -4e-4 nats/dim on the ring under VE and
    # below 3e-4 elsewhere (benchmarks/likelihood.py); 2e-3 on the mean is 5x that plus the solver's.
    total = (logp.double() - ref).abs() / dim
    assert total.mean() < 2e-3 and total.max() < 2e-2
    assert torch.allclose(logp, info.prior_logp + info.delta_logp)
    assert 20 < info.nfe < 400


def test_gaussian_data_is_exact_to_1e_4():
    # For Gaussian data p_t is Gaussian; with the exact terminal density the only error left is
    # the solver's, which at rtol = atol = 1e-7 in float64 is far below the 1e-4 asked.
    sde = SDES["vp"]()
    gmm, x = _data("gauss2d", 16, dtype=torch.float64)
    logp, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, rtol=1e-7, atol=1e-7)
    ref = gmm.log_prob(x, info.eps, sde)
    assert (_with_exact_terminal(gmm, sde, info) - ref).abs().max() < 1e-4


def test_subvp_start_costs_about_what_vp_costs_on_gaussian_data():
    # Sub-VP starts at lambda = 13.8 where VP starts at 6.9; the stretch between is one order-1 step
    # (ADAMS_FIRST_SHARE: sized on the integrand's exp(-2 lambda) growth there), so sub-VP costs at
    # most 6 NFE more than VP on N(0, w^2 I) data (measured +5, +1, +3 for w = 0.02, 0.1, 0.5; the
    # first step sqrt(atol / l'_0), at most 1 in lambda, cost +6 to +9) at the same error (both
    # within atol = 3e-4 nats/dim: measured 4e-6 to 3e-4).
    for w in (0.02, 0.1, 0.5):
        gmm = sd.GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64),
                                 torch.full((1, 4), w, dtype=torch.float64))
        x, _ = gmm.sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        nfe = {}
        for name in ("vp", "subvp"):
            sde = SDES[name]()
            logp, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, divergence="exact")
            assert float((logp - gmm.log_prob(x, info.eps, sde)).abs().mean()) / 4 < ADAMS_TOL, (w, name)
            nfe[name] = info.nfe
        assert nfe["subvp"] <= nfe["vp"] + 6, (w, nfe)


def test_zero_score_gives_the_closed_form_with_the_default_solver():
    # A zero score makes the flow dx/dt = f(t) x and log p_eps(x) = -D/2 log(2 pi sigma_T^2) + D
    # log(alpha_T / alpha_eps) for every x (the corrected prior's line integral cancels the
    # Gaussian's quadratic term); its integrand vanishes at the start, so the chart's data-end
    # scale is capped (a constant chart would divide by zero), and the solve is exact to round-off.
    for sde_name in ("vp", "subvp"):
        sde = SDES[sde_name]()
        x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        logp, _ = sd.log_likelihood(lambda y, t: torch.zeros_like(y), sde, x)
        t_end, t_eps = (torch.tensor(v, dtype=torch.float64) for v in (sde.T, PAPER_EPS))
        want = -5 / 2 * math.log(2 * math.pi * float(sde.sigma(t_end)) ** 2) + 5 * math.log(
            float(sde.alpha(t_end)) / float(sde.alpha(t_eps)))
        assert (logp - want).abs().max() < 1e-9


def test_gaussian_data_with_gaussian_prior_bias_matches_its_closed_form():
    # The paper's prior N(0, sigma_T^2 I) misses p_T = N(alpha_T mu, alpha_T^2 S + sigma_T^2 I);
    # the estimate is off by exactly log N(z; 0, sigma_T^2) - log p_T(z) (plus solver error).
    sde = SDES["vp"]()
    gmm, x = _data("gauss2d", 16, dtype=torch.float64)
    logp, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, rtol=1e-7, atol=1e-7, prior="gaussian")
    ref = gmm.log_prob(x, info.eps, sde)
    bias = info.prior_logp - gmm.log_prob(info.z, sde.T, sde)
    assert (logp - ref - bias).abs().max() < 1e-4
    assert bias.abs().max() > 1e-4  # the bias is real, and the first check can see it


@pytest.mark.parametrize("mixture", ["ring2d", "mix16"])
def test_corrected_prior_removes_the_gaussian_prior_bias(mixture):
    # One solve, two prior terms.  The Gaussian prior misses alpha_T z.E[x_0] / sigma_T^2 per sample:
    # 1.6e-3 (ring) and 7.7e-4 (mix16) nats/dim on average over 2000 latents.  The corrected prior
    # leaves the constant C0 (-4.4e-5, -2.9e-5 nats/dim) plus the solver's ~1e-4 at the default
    # tolerance, so 3e-4 nats/dim is ~2x what it should leave yet ~2x below the Gaussian prior's bias.
    sde = SDES["vp"]()
    gmm, x = _data(mixture, 32)
    dim = x.shape[1]
    gauss, g_info = sd.log_likelihood(gmm.score_fn(sde), sde, x, prior="gaussian")
    corr, c_info = sd.log_likelihood(gmm.score_fn(sde), sde, x, prior="corrected", prior_points=2)
    ref = gmm.log_prob(x.double(), c_info.eps, sde)
    assert float((corr.double() - ref).abs().mean()) / dim < 3e-4
    assert float((gauss.double() - ref).abs().mean()) / dim > 3e-4
    assert c_info.nfe == g_info.nfe + 2  # the two Gauss-Legendre nodes are counted
    assert torch.equal(c_info.delta_logp, g_info.delta_logp) and torch.equal(c_info.z, g_info.z)


def test_prior_correction_is_exact_for_gaussian_data_up_to_c0():
    # Gaussian data: p_T = N(m, v I) with m = alpha_T mu, v = alpha_T^2 c^2 + sigma_T^2, whose score
    # -(x - m) / v makes the integrand linear in r, so one Gauss-Legendre node is exact; then
    # log N(z; 0, sigma_T^2) + correction + C0 = log p_T(z) to float64 round-off.
    sde = SDES["ve"]()  # alpha = 1, sigma_T = 50: the largest first-order term of the three SDEs
    gmm = sd.GaussianMixture.named("gauss2d").diffused(sde, sde.T)
    z = gmm.sample(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)[0]
    std = sde.prior_std
    origin = torch.zeros(1, 2, dtype=torch.float64)
    c0 = gmm.log_prob(origin) - gaussian_logp(origin, std)
    for points in (1, 3):
        corr = prior_correction(lambda y, t: gmm.score(y), z, sde.T, std, points)
        est = gaussian_logp(z, std) + corr + c0
        assert torch.allclose(est, gmm.log_prob(z), rtol=0, atol=1e-9)
    assert (gaussian_logp(z, std) - gmm.log_prob(z)).abs().max() > 1e-2  # the correction matters


def test_hutchinson_is_unbiased_within_4_standard_errors():
    sde = SDES["vp"]()
    gmm, x = _data("ring2d", 2)
    exact, _ = sd.log_likelihood(gmm.score_fn(sde), sde, x, rtol=1e-4, atol=1e-4)
    n = 200
    xs = x.repeat_interleave(n, dim=0)  # 200 single-probe estimates per point in one batched solve
    g = torch.Generator().manual_seed(0)
    est, _ = sd.log_likelihood(
        gmm.score_fn(sde), sde, xs, divergence="hutchinson", rtol=1e-4, atol=1e-4, generator=g
    )
    est = est.reshape(2, n).double()
    se = est.std(dim=1) / math.sqrt(n)
    assert (se > 0).all()  # the estimator does vary, so the check below is not vacuous
    assert ((est.mean(dim=1) - exact.double()).abs() < 4 * se + 1e-4).all()


def test_hutchinson_probe_average_and_gaussian_probes():
    sde = SDES["ve"]()
    gmm, x = _data("mix16", 4)
    exact, _ = sd.log_likelihood(gmm.score_fn(sde), sde, x, rtol=1e-4, atol=1e-4)
    g = torch.Generator().manual_seed(1)
    est, info = sd.log_likelihood(
        gmm.score_fn(sde), sde, x, divergence="hutchinson", probes=64, probe_dist="gaussian",
        rtol=1e-4, atol=1e-4, generator=g,
    )
    # 64 Gaussian probes in 16-D: the divergence integral's spread per probe is a few nats,
    # its mean over 64 probes within ~1 nat; 3 nats is > 4 standard errors yet far below the
    # ~20-nat size of the integral itself.
    assert (est - exact).abs().max() < 3.0
    assert torch.isfinite(info.z).all()


def test_value_and_divergence_exact_trace_and_probes():
    a = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0], [0.0, 0.0, 4.0]])
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    out, div = value_and_divergence(lambda y: y @ a.T, x, None)
    assert torch.allclose(out, x @ a.T)
    assert torch.allclose(div, torch.full((5,), 5.0))
    v = draw_probes(x, 7, "rademacher", torch.Generator().manual_seed(0))
    assert set(v.unique().tolist()) == {-1.0, 1.0} and v.shape == (7, 5, 3)
    _, est = value_and_divergence(lambda y: y @ a.T, x, v)
    manual = torch.einsum("kbi,ij,kbj->b", v, a, v) / 7
    assert torch.allclose(est, manual)


def test_works_under_inference_mode_and_for_image_shapes():
    sde = SDES["vp"]()
    gmm, x = _data("mix16", 3)
    images = x.reshape(3, 1, 4, 4)
    ref, _ = sd.log_likelihood(gmm.score_fn(sde), sde, x, rtol=1e-4, atol=1e-4)
    with torch.inference_mode():
        logp, info = sd.log_likelihood(gmm.score_fn(sde), sde, images, rtol=1e-4, atol=1e-4)
    assert info.z.shape == images.shape
    assert torch.allclose(logp, ref, atol=1e-4)


def test_rectified_flow_is_finite_and_accurate():
    sde = sd.RectifiedFlow()
    gmm, x = _data("ring2d", 32)
    logp, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, solver="dopri5", rtol=1e-5, atol=1e-5)
    assert torch.isfinite(logp).all() and torch.isfinite(info.z).all()
    assert info.t_end == pytest.approx(1 / (1 + math.exp(-10.0)))  # where lambda = min_log_snr
    ref = gmm.log_prob(x.double(), sde.eps, sde)
    # Stopping at alpha = e^-10 sigma leaves a prior error ~ e^-10 |z| |x_0| per dimension; with
    # the solver error (~2e-5 on average at tolerance 1e-5, a few times more on the worst of 32
    # samples) that stays below 1e-3 nats/dim.
    assert ((logp.double() - ref).abs() / 2).max() < 1e-3
    assert end_time(SDES["vp"]()) == 1.0


class _GenericVP(sd.SDE):
    """The VP SDE seen only through the general interface (drift, g, prior): not a LinearSDE."""

    def __init__(self):
        super().__init__(T=1.0, eps=1e-3)
        self.vp = SDES["vp"]()

    def drift(self, x, t):
        return self.vp.drift(x, t)

    def g(self, t):
        return self.vp.g(t)

    @property
    def prior_std(self):
        return self.vp.prior_std


def test_general_sde_uses_the_time_chart():
    # A non-linear-capable SDE defaults to the ODE in t, which for this wrapper is VP's own.
    gmm, x = _data("ring2d", 8)
    vp, generic = SDES["vp"](), _GenericVP()
    logp, info = sd.log_likelihood(gmm.score_fn(vp), generic, x, rtol=1e-4, atol=1e-4)
    ref, ref_info = sd.log_likelihood(gmm.score_fn(vp), vp, x, variable="t", eps=generic.eps, rtol=1e-4, atol=1e-4)
    assert info.eps == generic.eps  # the paper's 1e-5 is the default for VP, sub-VP and VE only
    assert torch.allclose(logp, ref) and info.nfe == ref_info.nfe
    with pytest.raises(ValueError, match="variable"):
        sd.log_likelihood(gmm.score_fn(vp), generic, x, variable="log-snr")


def test_bad_input_raises_value_error():
    sde = SDES["vp"]()
    gmm = sd.GaussianMixture.named("ring2d")
    score = gmm.score_fn(sde)
    with pytest.raises(ValueError, match="x"):
        sd.log_likelihood(score, sde, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="x"):
        sd.log_likelihood(score, sde, torch.zeros(2))
    with pytest.raises(ValueError, match="divergence"):
        sd.log_likelihood(score, sde, torch.zeros(2, 2), divergence="trace")
    with pytest.raises(ValueError, match="variable"):
        sd.log_likelihood(score, sde, torch.zeros(2, 2), variable="sigma")
    with pytest.raises(ValueError, match="prior"):
        sd.log_likelihood(score, sde, torch.zeros(2, 2), prior="student")
    with pytest.raises(ValueError, match="prior_points"):
        sd.log_likelihood(score, sde, torch.zeros(2, 2), prior_points=0)
    with pytest.raises(ValueError, match="eps"):
        sd.log_likelihood(score, sde, torch.zeros(2, 2), eps=2.0)
    with pytest.raises(RuntimeError, match="max_nfe"):
        sd.log_likelihood(score, sde, torch.zeros(2, 2), max_nfe=2)
    with pytest.raises(ValueError, match="adams"):
        sd.log_likelihood(score, sde, torch.zeros(2, 2), solver="adams", variable="t")


# -- bits per dimension --------------------------------------------------------------------------
def test_bits_per_dim_of_uniform_density_is_log2_levels():
    # The uniform density on (-1, 1)^D is 2^-D: the dequantised k + u is uniform on
    # [0, levels)^D, i.e. exactly log2(levels) bits per dimension.
    x = torch.zeros(3, 1, 4, 4)
    logp = torch.full((3,), -16 * math.log(2.0))
    assert torch.allclose(sd.bits_per_dim(logp, x, (-1, 1), levels=256), torch.full((3,), 8.0))
    assert torch.allclose(sd.bits_per_dim(torch.zeros(3), x, (0, 1), levels=17), torch.full((3,), math.log2(17)))


def test_bits_per_dim_of_a_histogram_density_is_minus_log2_of_the_cell_probability():
    # A density constant on each dequantisation cell, p(y) = P(k) / cell_width: its bits/dim is
    # exactly -log2 P(k) / D whatever the dequantisation noise u, so the offset must be exact.
    levels, lo, hi = 256, -1.0, 1.0
    g = torch.Generator().manual_seed(0)
    prob = torch.softmax(torch.randn(levels, generator=g, dtype=torch.float64), 0)
    k = torch.randint(0, levels, (5, 3, 2, 2), generator=g)
    u = torch.rand(k.shape, generator=g, dtype=torch.float64)
    y = lo + (hi - lo) * (k + u) / levels
    width = (hi - lo) / levels
    logp = torch.log(prob[k] / width).flatten(1).sum(1)
    expected = -torch.log2(prob[k]).flatten(1).mean(1)
    assert torch.allclose(sd.bits_per_dim(logp, y, (lo, hi), levels), expected, atol=1e-12)


def test_bits_per_dim_bad_input():
    with pytest.raises(ValueError, match="data_range"):
        sd.bits_per_dim(torch.zeros(2), torch.zeros(2, 3), (1, -1))
    with pytest.raises(ValueError, match="logp"):
        sd.bits_per_dim(torch.zeros(3), torch.zeros(2, 3))


def test_evaluate_bpd_resumes_to_the_same_result(tmp_path):
    # Gaussian "data" on 17 levels in (-1, 1); the oracle gives the model's score.
    sde = SDES["vp"]()
    gmm = sd.GaussianMixture(torch.ones(1), torch.zeros(1, 4), torch.full((1, 4), 0.5))
    x, _ = gmm.sample(12, generator=torch.Generator().manual_seed(0))
    k = torch.round((x.clamp(-1, 1) + 1) / 2 * 16)
    data = k / 16 * 2 - 1
    batches = [data[i : i + 4] for i in range(0, 12, 4)]
    opts = dict(levels=17, draws=2, rtol=1e-4, atol=1e-4, progress=False)

    full = sd.evaluate_bpd(gmm.score_fn(sde), sde, batches, generator=torch.Generator().manual_seed(3), **opts)
    assert len(full.values) == 12 and full.stderr > 0 and full.nfe > 0
    assert 0 < full.error_max < 1e-2  # the worst solve's error indicator, bits/dim (tolerance 1e-4)

    path = tmp_path / "partial.json"
    g = torch.Generator().manual_seed(3)
    sd.evaluate_bpd(gmm.score_fn(sde), sde, batches[:2], generator=g, resume_path=path, **opts)
    resumed = sd.evaluate_bpd(
        gmm.score_fn(sde), sde, batches, generator=torch.Generator().manual_seed(99), resume_path=path, **opts
    )
    assert resumed.values == pytest.approx(full.values, abs=1e-6)
    assert resumed.mean == pytest.approx(sum(full.values) / 12)
    # Same per-sample answer as the two front-door calls by hand, draw by draw.
    g = torch.Generator().manual_seed(3)
    by_hand = torch.zeros(4, dtype=torch.float64)
    for _ in range(2):
        y = sd.data.dequantize(batches[0], 17, (-1.0, 1.0), g)
        logp, _ = sd.log_likelihood(gmm.score_fn(sde), sde, y, rtol=1e-4, atol=1e-4, generator=g)
        by_hand += sd.bits_per_dim(logp, y, (-1, 1), 17).double() / 2
    assert full.values[:4] == pytest.approx(by_hand.tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="resume_path"):
        sd.evaluate_bpd(gmm.score_fn(sde), sde, batches, resume_path=path, **{**opts, "levels": 256})
    with pytest.raises(ValueError, match="resume_path"):  # other solver settings would mix two estimators
        sd.evaluate_bpd(gmm.score_fn(sde), sde, batches, resume_path=path, **{**opts, "rtol": 1e-3})
    # the start is recorded resolved (the default 1e-5 here): the same run asked from eps = 1e-3 is refused
    assert json.loads(path.read_text())["config"]["likelihood"]["eps"] == PAPER_EPS
    with pytest.raises(ValueError, match="resume_path"):
        sd.evaluate_bpd(gmm.score_fn(sde), sde, batches, resume_path=path, **{**opts, "eps": 1e-3})


@pytest.mark.parametrize("method,gain", [("adams", 2.0), ("bosh3", 2.0), ("torchdiffeq:bosh3", 1.0)])
def test_sample_error_norm_tightens_the_worst_sample(method, gain):
    # adams: norm="sample" holds each sample's local log-p error, not the batch mean, to atol (here
    # 2.1e-3 -> 1.8e-4 nats/dim on the worst of the 32 samples, 70 -> 94 NFE).
    # norm="sample" holds each sample's row [y, l/D] to the tolerance: the worst sample's error drops
    # (ring2d, VP, bosh3 at 1e-3: 5.5e-4 -> 1.1e-4 nats/dim on 256 samples, benchmarks/likelihood.py
    # --parts norms) for more NFE (75 -> 102).  On 32 samples ask for 2x less on the worst sample
    # (14x measured); torchdiffeq's elementary controller is erratic at this tolerance (1.6x
    # measured), so for it only check that its norm option is wired (less error, more NFE).
    sde = SDES["vp"]()
    gmm, x = _data("ring2d", 32)
    ref = gmm.log_prob(x.double(), sde.eps, sde)
    worst, nfe = {}, {}
    for norm in ("batch", "sample"):
        logp, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, solver=method, error_norm=norm)
        worst[norm], nfe[norm] = float((logp.double() - ref).abs().max()) / 2, info.nfe
    assert worst["sample"] < worst["batch"] / gain and nfe["sample"] > nfe["batch"]
    with pytest.raises(ValueError, match="error_norm"):
        sd.log_likelihood(gmm.score_fn(sde), sde, x, solver=method, error_norm="max")


def test_a_model_returning_nan_is_reported_not_integrated():
    # A score that turns NaN past t = 0.3: the likelihood solve stops with the time, not with a
    # generic step-limit error (and not with NaN log-densities).
    sde = SDES["vp"]()
    gmm, x = _data("ring2d", 8)
    exact = gmm.score_fn(sde)

    def broken(y, t):
        return exact(y, t) * torch.where(t > 0.3, float("nan"), 1.0)[:, None]

    with pytest.raises(FloatingPointError, match="non-finite values from the field"):
        sd.log_likelihood(broken, sde, x)


def test_prior_constant_from_data_matches_the_closed_form_and_removes_the_ve_floor():
    # C0 = log p_T(0) - log N(0; 0, sigma_T^2) = log E exp(-alpha_T^2 |x0|^2 / (2 sigma_T^2)): from
    # 20000 data samples its Monte-Carlo error is ~2e-6 (the exponent varies by ~2e-4 per sample
    # under VE), so 2e-5 is 10 standard errors.
    sde = SDES["ve"]()
    gmm, ref = _data("ring2d", 20000, dtype=torch.float64, seed=7)
    origin = torch.zeros(1, 2, dtype=torch.float64)
    exact = float(gmm.log_prob(origin, sde.T, sde) - gaussian_logp(origin, sde.prior_std))
    assert prior_constant(ref, sde, sde.T, sde.prior_std) == pytest.approx(exact, abs=2e-5)
    # With it the corrected prior leaves only the solver's error; prior="origin" estimates C0 from
    # the score at the origin instead (estimated_prior_constant), no reference needed.  Either
    # removes the floor |C0| / D = 4.1e-4 nats/dim of the ring under VE: 32 samples within 1e-4
    # (bosh3 at 1e-4 errs ~2e-5 here), against > 3e-4 without.
    _, x = _data("ring2d", 32)
    truth = gmm.log_prob(x.double(), sde.eps, sde)
    assert abs(exact) / 2 > 3e-4
    for options, bound in (({}, None), ({"prior_reference": ref[:4000]}, 1e-4), ({"prior": "origin"}, 1e-4)):
        logp, _ = sd.log_likelihood(gmm.score_fn(sde), sde, x, solver="bosh3", rtol=1e-4, atol=1e-4, **options)
        err = float((logp.double() - truth).abs().mean()) / 2
        assert err < bound if bound else err > 3e-4
    with pytest.raises(ValueError, match="prior='corrected'"):
        sd.log_likelihood(gmm.score_fn(sde), sde, x, prior="gaussian", prior_reference=ref)
    with pytest.raises(ValueError, match="prior_reference"):
        sd.log_likelihood(gmm.score_fn(sde), sde, x, prior_reference=ref[0])


def test_estimated_prior_constant_against_the_gaussian_and_mixture_closed_forms():
    # C0 = log E exp(-u |x_0|^2 / 2) + D log(std / sigma), u = alpha^2 / sigma^2, against -(div D + u |D|^2) / 2
    # from the score at the origin.  Gaussian data N(mu, c^2 I): D(0) = mu / (1 + x), div D = d x / (1 + x),
    # x = c^2 u, and C0 = -(d / 2) log(1 + x) - u |mu|^2 / (2 (1 + x)); the estimate errs by
    # d x^2 / 4 + u |mu|^2 x / 2 to leading order (the rectangle rule's -u^2 Var(|x_0|^2) / 8).
    mu, c = torch.tensor([[0.7, -1.2, 2.0]], dtype=torch.float64), 1.5
    gauss = sd.GaussianMixture(torch.ones(1, dtype=torch.float64), mu, torch.full((1, 3), c, dtype=torch.float64))
    like = torch.zeros(2, 3, dtype=torch.float64)
    for sde_name in SDES:
        sde = SDES[sde_name]()
        t = torch.tensor(sde.T, dtype=torch.float64)
        alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
        u = (alpha / sigma) ** 2
        x = c**2 * u
        exact = -1.5 * math.log1p(x) - u * float(mu.pow(2).sum()) / (2 * (1 + x))
        est = estimated_prior_constant(gauss.score_fn(sde), sde, sde.T, sigma, like)
        assert abs(est - exact) <= 1.05 * (3 * x**2 / 4 + u * float(mu.pow(2).sum()) * x / 2) + 1e-12
        assert abs(est - exact) < 2e-3 * abs(exact)
        # Hutchinson at the origin: the divergence of x + sigma^2 s is u tr Cov, its noise as small
        probes = draw_probes(like[:1], 64, "rademacher", torch.Generator().manual_seed(0))
        assert estimated_prior_constant(gauss.score_fn(sde), sde, sde.T, sigma, like, probes) == pytest.approx(exact, rel=1e-2)
    # mixtures: against log p_T(0) - log N(0; 0, prior_std^2) from the oracle (1e-3 relative allowed;
    # the rectangle rule's error is ~u Var(|x_0|^2) / (4 E|x_0|^2) relative, 1e-4 or less here), VP and VE
    for name, sde_name in (("mix64", "vp"), ("ring2d", "ve"), ("mix16", "subvp")):
        sde = SDES[sde_name]()
        gmm = sd.GaussianMixture.named(name)
        dim = gmm.means.shape[1]
        origin = torch.zeros(1, dim, dtype=torch.float64)
        closed = float(gmm.log_prob(origin, sde.T, sde) - gaussian_logp(origin, sde.prior_std))
        est = estimated_prior_constant(gmm.score_fn(sde), sde, sde.T, sde.prior_std, origin)
        assert est == pytest.approx(closed, rel=1e-3)
        assert abs(closed) / dim > 1e-5  # a constant the prior term would otherwise miss


@pytest.mark.parametrize("sde_name", list(SDES))
def test_origin_prior_includes_the_constant(sde_name):
    # prior="origin": log N(z; 0, sigma_T^2) + the score's line integral (two Gauss--Legendre nodes)
    # + C0 from the score at the origin (one more NFE), against the oracle's log p_T(z): within 1e-6
    # nats/dim of it, where the corrected prior misses C0 (3e-5 under VP, sub-VP and 3e-4 under VE
    # nats/dim) whole; the same solve either way.
    sde = SDES[sde_name]()
    gmm, x = _data("mix64", 8, dtype=torch.float64)
    origin = torch.zeros(1, 64, dtype=torch.float64)
    c0 = float(gmm.log_prob(origin, sde.T, sde) - gaussian_logp(origin, sde.prior_std))
    assert abs(c0) / 64 > 2e-5
    _, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, divergence="exact", prior="origin")
    assert float((info.prior_logp - gmm.log_prob(info.z, info.t_end, sde)).abs().max()) / 64 < 1e-6
    _, corr = sd.log_likelihood(gmm.score_fn(sde), sde, x, divergence="exact")
    assert float((corr.prior_logp - gmm.log_prob(corr.z, corr.t_end, sde) + c0).abs().max()) / 64 < 1e-6
    assert info.nfe == corr.nfe + 1 and torch.equal(info.delta_logp, corr.delta_logp)
    with pytest.raises(ValueError, match="LinearSDE"):
        sd.log_likelihood(gmm.score_fn(sde), _GenericVP(), x, prior="origin")


# -- the paper's start, the error report, the random family (issue 19) ---------------------------
def _benchmark():
    """benchmarks/likelihood.py as a module: the random mixture family and the paper's estimator."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "likelihood.py"
    spec = importlib.util.spec_from_file_location("likelihood_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_eps_is_the_papers_1e_5_for_vp_subvp_and_ve_whatever_their_sampling_eps():
    for make in (sd.VPSDE, sd.SubVPSDE, sd.VESDE):
        assert likelihood_eps(make(eps=1e-3)) == 1e-5
    assert likelihood_eps(sd.RectifiedFlow()) == sd.RectifiedFlow().eps  # no paper value: the SDE's own
    # sd.VPSDE() samples down to 1e-3; its likelihood is log p_{1e-5}.  On the ring the two
    # densities differ by ~1e-3 nats/dim (the start bias, benchmarks/likelihood.py --parts biases)
    # while dopri5 at 1e-6 errs ~1e-5, so the estimate must sit 10x closer to log p_{1e-5}.
    sde = sd.VPSDE()
    gmm, x = _data("ring2d", 16, dtype=torch.float64)
    logp, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, solver="dopri5", rtol=1e-6, atol=1e-6)
    assert info.eps == 1e-5 and sde.eps == 1e-3
    off_paper = float((logp - gmm.log_prob(x, 1e-5, sde)).abs().mean())
    off_sampling = float((logp - gmm.log_prob(x, 1e-3, sde)).abs().mean())
    assert off_paper < off_sampling / 10


def test_error_estimate_is_reported_per_sample_and_bounds_the_solver_error():
    # info.error_estimate accumulates the absolute local errors of log p (the default solver="adams":
    # its corrector's difference mapped to log p by the score; the Runge--Kutta pairs: the embedded
    # estimates of the log-density and of the latent, weighted by the prior's gradient).  On the
    # random family's dev members at the default tolerance the true error was at most 25 % of it
    # (benchmarks/likelihood.py); here: above the solver's error on every sample, and not more than
    # 1000x above it on average (a useless bound would fail that).  It shrinks with the tolerance.
    sde = SDES["vp"]()
    gmm, x = _data("ring2d", 32, dtype=torch.float64)
    ref = gmm.log_prob(x, PAPER_EPS, sde)
    estimates = {}
    for tol in (1e-3, 1e-5):
        _, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, rtol=tol, atol=tol)
        solver_err = (_with_exact_terminal(gmm, sde, info) - ref).abs()
        assert info.error_estimate.shape == (32,) and (info.error_estimate >= solver_err).all()
        assert float(info.error_estimate.mean()) < 1000 * float(solver_err.mean())
        estimates[tol] = float(info.error_estimate.mean())
    assert estimates[1e-5] < estimates[1e-3] / 10
    _, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, solver="torchdiffeq:bosh3")
    assert info.error_estimate is None  # torchdiffeq does not expose its error estimates


def test_auto_divergence_and_hutchinson_standard_error():
    sde = SDES["vp"]()
    gmm16, x16 = _data("mix16", 4)
    _, info = sd.log_likelihood(gmm16.score_fn(sde), sde, x16)
    assert info.divergence == "exact" and info.stderr is None  # 16 dims: still "small"
    gmm, x = _data("mix64", 4, dtype=torch.float64)
    exact, _ = sd.log_likelihood(gmm.score_fn(sde), sde, x, divergence="exact", rtol=1e-4, atol=1e-4)
    est, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, rtol=1e-4, atol=1e-4,
                                  generator=torch.Generator().manual_seed(0))
    assert info.divergence == "hutchinson" and info.stderr.shape == (4,)
    # The default two probes' spread estimates the standard error with one degree of freedom each;
    # 32 probes give a sharp one: the estimate then lies within 4 of them of the exact value, and
    # their standard error is a few nats (0 would mean the probes are not kept apart).
    est, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, probes=32, rtol=1e-4, atol=1e-4,
                                  generator=torch.Generator().manual_seed(1))
    assert (info.stderr > 0.1).all()
    assert ((est - exact).abs() < 4 * info.stderr).all()


class _NoVmap(torch.autograd.Function):
    """``2 x`` through an autograd.Function without a vmap rule: torch.func cannot batch its backward."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def test_vjp_engine_falls_back_to_one_backward_per_vector():
    a = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0], [0.0, 0.0, 4.0]])
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    v = draw_probes(x, 4, "gaussian", torch.Generator().manual_seed(1))
    manual = torch.einsum("kbi,ij,kbj->kb", v, 2 * a, v)
    engine = VJPEngine()
    with pytest.warns(RuntimeWarning, match="one backward pass per vector"):
        out, terms = value_and_divergence_terms(lambda y: _NoVmap.apply(y) @ a.T, x, v, engine)
    assert not engine.batched and torch.allclose(terms, manual, atol=1e-5) and torch.allclose(out, 2 * x @ a.T)
    _, again = value_and_divergence_terms(lambda y: _NoVmap.apply(y) @ a.T, x, v, engine)  # no second warning
    assert torch.allclose(again, terms)


def test_torch_func_divergence_on_a_diffusers_unet_and_on_ncsnpp():
    # The old is_grads_batched path failed here ("NYI: querying is_contiguous inside of vmap",
    # GroupNorm's backward); torch.func's vjp + vmap gives the same VJPs as one backward per probe.
    diffusers = pytest.importorskip("diffusers", reason="diffusers (the interop extra) is not installed")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    ncsnpp = sd.nets.NCSNpp(in_channels=1, image_size=8, nf=8, ch_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=(4,)).eval()
    sde = SDES["vp"]()
    nets = {"unet": (lambda y, t: -unet(y, t * 999).sample / sde.sigma(t)[:, None, None, None], (2, 3, 8, 8)),
            "ncsnpp": (sd.score_fn_from_model(ncsnpp, sde, "eps"), (2, 1, 8, 8))}
    for name, (score_fn, shape) in nets.items():
        x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
        t = torch.full((2,), 0.5)
        v = draw_probes(x, 3, "rademacher", torch.Generator().manual_seed(3))
        engine = VJPEngine()
        _, terms = value_and_divergence_terms(lambda y, f=score_fn, t=t: f(y, t), x, v, engine)
        y = x.clone().requires_grad_(True)
        out = score_fn(y, t)
        loop = torch.stack([(torch.autograd.grad(out, y, vi, retain_graph=True)[0] * vi).flatten(1).sum(1) for vi in v])
        assert engine.batched, name
        torch.testing.assert_close(terms, loop, rtol=1e-4, atol=1e-4 * float(loop.abs().max()))
    # the front door end to end on the UNet (one image, loose tolerance: finiteness and the report)
    logp, info = sd.log_likelihood(nets["unet"][0], sde, torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5)),
                                   rtol=5e-2, atol=5e-2, generator=torch.Generator().manual_seed(4))
    assert torch.isfinite(logp).all() and info.divergence == "hutchinson" and torch.isfinite(info.stderr).all()


FAST_MEMBERS = (0, 2, 3, 8, 9, 11)  # the dev members of dimension <= 10 and the VP ones of 44 and 136 (benchmarks/likelihood.py DEV_SEEDS)


GOAL_MEMBERS = (0, 2, 3, 9)  # of FAST_MEMBERS, those where the default meets the goal of issue 19 (half the NFE)


@pytest.mark.parametrize("seed", FAST_MEMBERS)
def test_default_on_random_family_members_against_the_papers_estimator(seed):
    # The default (solver="adams") against the paper's estimator (scipy RK45 in t at 1e-5, Gaussian
    # prior) on the same points of a random mixture, both from the paper's eps = 1e-5: mean error
    # per dimension no larger, and at most 0.9x the NFE (measured on these members: 0.27-0.73x the
    # NFE at 0.03-0.98x the error); at most half the NFE, the goal of issue 19, where it was met
    # (BENCHMARKS.md: on 8 of the 12 dev members; here the VE member 3 at 0.27x, the VP members
    # 0 and 9 at 0.38x and 0.42x, errors 0.27x and 0.98x, and the sub-VP member 2 at 0.45x, 0.13x).
    bench = _benchmark()
    member = bench.random_member(seed)
    gmm, x = member["gmm"], member["x"]
    sde = bench.SDES[member["sde"]]()
    ref = gmm.log_prob(x, PAPER_EPS, sde)
    base, base_info = bench.paper_estimator(gmm.score_fn(sde), sde, x, 1e-5)
    ours, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, divergence="exact")  # as the benchmark (auto: exact to 16-D)
    assert info.eps == PAPER_EPS
    assert float((ours - ref).abs().mean()) <= float((base - ref).abs().mean())
    assert info.nfe <= (0.5 if seed in GOAL_MEMBERS else 0.9) * base_info.nfe
