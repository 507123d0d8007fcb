"""Flow matching and rectified flow as members of the linear-SDE family, against closed forms.

The reference for every check is the Gaussian-mixture oracle.  Besides its score we use the
exact posterior of ``x_0`` given ``x_t`` (per component ``k`` a Gaussian with mean
``mu_k + a S_k (x - a mu_k) / (a^2 S_k + s^2)`` and variance ``S_k s^2 / (a^2 S_k + s^2)``, per axis),
which gives the marginal velocity ``E[alpha' x_0 + sigma' eps | x_t]`` without the score, stays
finite at ``t = 1`` of the rectified flow, and can be sampled for Monte-Carlo checks.

Monte-Carlo checks allow ``K_SE = 4`` standard errors (a correct routine fails with probability
about 6e-5 per check; the seeds are fixed, so each run is deterministic anyway).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import scoresde as sd
from scoresde.metrics import sliced_wasserstein
from scoresde.reflow import ReflowLoss, draw_couplings, euler_flow, straightness, velocity_fn_from_score
from scoresde.sampling.grids import default_t_max

K_SE = 4.0
DT = torch.float64
RING = sd.GaussianMixture.named("ring2d")
GAUSS = sd.GaussianMixture.named("gauss2d")
SDES = [sd.RectifiedFlow(), sd.VPSDE(), sd.VESDE(), sd.SubVPSDE()]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def coefficients(sde: sd.LinearSDE, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``alpha, sigma, alpha', sigma'`` at ``t`` ``(B,)``, shaped ``(B, 1, 1)`` against ``(B, K, d)``."""
    return tuple(c(t)[:, None, None] for c in (sde.alpha, sde.sigma, sde.dalpha, sde.dsigma))


def x0_posterior(gmm: sd.GaussianMixture, sde: sd.LinearSDE, x: torch.Tensor, t: torch.Tensor):
    """``p(k | x_t)`` ``(B, K)`` and the mean and variance of ``x_0 | x_t, k`` ``(B, K, d)``."""
    a, s, _, _ = coefficients(sde, t)
    mu, var0 = gmm.means[None], gmm.stds[None] ** 2
    var_t = a**2 * var0 + s**2
    mean = mu + a * var0 * (x[:, None] - a * mu) / var_t
    return gmm.posterior(x, t, sde), mean, var0 * s**2 / var_t


def oracle_velocity(gmm: sd.GaussianMixture, sde: sd.LinearSDE):
    """``E[alpha' x_0 + sigma' eps | x_t]`` from the posterior of ``x_0`` (no score involved);
    ``eps = (x_t - alpha x_0) / sigma`` is affine in ``x_0``, so its posterior mean is exact."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s, da, ds = coefficients(sde, t)
        post, mean, _ = x0_posterior(gmm, sde, x, t)
        u_k = da * mean + ds * (x[:, None] - a * mean) / s
        return (post[..., None] * u_k).sum(1)

    return velocity


def diffused_sample(gmm, sde, n, t, seed):
    """``n`` exact samples of ``p_t`` at the times ``t`` ``(n,)`` (float64)."""
    x0, _ = gmm.sample(n, generator=gen(seed), dtype=DT)
    return sde.marginal(x0, t, torch.randn(x0.shape, generator=gen(seed + 1), dtype=DT))


# -- the flow parameterization --------------------------------------------------------------------
@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_flow_conversions_round_trip(sde):
    param = sd.Parameterization("flow", sde)
    g = gen(0)
    n = 512
    # times inside [eps, 0.99 T]: the score conversion divides by alpha, which is 0 at t = 1 for RF
    t = sde.eps + (0.99 * sde.T - sde.eps) * torch.rand(n, generator=g, dtype=DT)
    x0 = torch.randn(n, 2, generator=g, dtype=DT)
    eps = torch.randn(n, 2, generator=g, dtype=DT)
    x = sde.marginal(x0, t, eps)
    u = param.target(x0, eps, t)
    # the target is the time derivative of the path alpha x0 + sigma eps (central difference, h = 1e-6:
    # truncation O(h^2 |x'''|) and rounding O(1e-16 |x| / h) both < 1e-8 relative)
    h = 1e-6
    fd = (sde.marginal(x0, t + h, eps) - sde.marginal(x0, t - h, eps)) / (2 * h)
    torch.testing.assert_close(u, fd, rtol=1e-6, atol=1e-6)
    # (x0, eps) -> u -> (x0, eps) and u -> score -> u, to 1e-6 relative (float64; the 2x2 systems are
    # well conditioned on [eps, 0.99 T], so rounding stays many orders below)
    x0_hat, eps_hat = param.x0_eps(u, x, t)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(param.from_score(param.score(u, x, t), x, t), u, rtol=1e-6, atol=1e-9)
    # every other parameterization reaches the same velocity through the score
    for kind in ("eps", "score", "x0", "v"):
        other = sd.Parameterization(kind, sde)
        out = other.target(x0, eps, t)
        torch.testing.assert_close(param.from_score(other.score(out, x, t), x, t), u, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sde", SDES + [sd.CosineVPSDE()], ids=lambda s: type(s).__name__)
def test_oracle_velocity_is_probability_flow_drift(sde):
    n = 2000
    t = sde.eps + (0.99 * sde.T - sde.eps) * torch.rand(n, generator=gen(1), dtype=DT)
    x = diffused_sample(RING, sde, n, t, seed=2)
    score = RING.score(x, t, sde)
    drift = sde.probability_flow_drift(x, t, score)
    # Tweedie route: u = alpha' x0_hat + sigma' eps_hat with x0_hat = (x + sigma^2 s) / alpha
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    x0_hat = (x + s**2 * score) / a
    u_tweedie = sde.dalpha(t)[:, None] * x0_hat + sde.dsigma(t)[:, None] * (x - a * x0_hat) / s
    scale = drift.abs().max()
    torch.testing.assert_close(u_tweedie, drift, rtol=1e-8, atol=1e-10 * scale)
    torch.testing.assert_close(velocity_fn_from_score(RING.score_fn(sde), sde)(x, t), drift, rtol=1e-8, atol=1e-10 * scale)
    # the posterior route (no score): equal up to float64 rounding of the two formulas
    torch.testing.assert_close(oracle_velocity(RING, sde)(x, t), drift, rtol=1e-7, atol=1e-9 * scale)


@pytest.mark.parametrize("sde", [sd.RectifiedFlow(), sd.VPSDE()], ids=lambda s: type(s).__name__)
def test_marginal_velocity_by_monte_carlo_over_the_posterior(sde):
    # E[u | x_t] estimated by sampling (k, x0) ~ p(k, x0 | x_t), eps = (x_t - alpha x0) / sigma,
    # u = alpha' x0 + sigma' eps; compared with the probability-flow drift f x - g^2 s / 2 per
    # coordinate within K_SE standard errors (the MC mean of m iid draws)
    n, m = 16, 20000
    t = torch.linspace(0.05, 0.95, n, dtype=DT)
    x = diffused_sample(RING, sde, n, t, seed=3)
    post, mean, var = x0_posterior(RING, sde, x, t)
    g = gen(4)
    k = torch.multinomial(post, m, replacement=True, generator=g)  # (n, m)
    pick = lambda v: torch.gather(v, 1, k[..., None].expand(n, m, 2))  # noqa: E731
    x0 = pick(mean) + pick(var).sqrt() * torch.randn(n, m, 2, generator=g, dtype=DT)
    a, s, da, ds = coefficients(sde, t)
    u = da * x0 + ds * (x[:, None] - a * x0) / s
    mc, se = u.mean(1), u.std(1) / math.sqrt(m)
    drift = sde.probability_flow_drift(x, t, RING.score(x, t, sde))
    z = (mc - drift) / se
    assert float(z.abs().max()) < K_SE, z


# -- the flow-matching loss at the oracle ---------------------------------------------------------
def test_flow_matching_loss_at_oracle_velocity_is_the_irreducible_value_on_the_ring():
    # irreducible value per sample: E[|u - E[u|x_t]|^2 | x_t] = (det / sigma)^2 tr Var(x0 | x_t)
    # (u = (sigma'/sigma) x_t - (det/sigma) x0 given x_t), with the mixture's conditional variance
    # sum_k p_k (V_k + m_k^2) - (sum_k p_k m_k)^2; paired with the loss's own draws, the difference
    # has mean 0 and we allow K_SE standard errors
    sde = sd.RectifiedFlow()
    loss = sd.FlowMatchingLoss(sde, reduce="sum")
    n = 20000
    x0, _ = RING.sample(n, generator=gen(5), dtype=DT)
    g = gen(6)
    t, _ = loss.sample_time(n, g, x0)
    noise = torch.randn(x0.shape, generator=g, dtype=DT)
    model = oracle_velocity(RING, sde)
    at_oracle = loss.per_sample(model, x0, t, noise)
    x_t = sde.marginal(x0, t, noise)
    post, mean, var = x0_posterior(RING, sde, x_t, t)
    cond_var = (post[..., None] * (var + mean**2)).sum(1) - (post[..., None] * mean).sum(1) ** 2
    det = sde.alpha(t) * sde.dsigma(t) - sde.sigma(t) * sde.dalpha(t)
    irreducible = (det / sde.sigma(t)) ** 2 * cond_var.sum(1)
    diff, se = mean_se(at_oracle - irreducible)
    assert abs(diff) < K_SE * se, (diff, se)
    assert float(at_oracle.mean()) > 10 * se  # the value itself is far from 0: the check has teeth
    # a perturbed field delta(x) costs E|delta|^2 more (the cross term has mean 0)
    delta = lambda x: 0.2 * torch.tanh(x.flip(1))  # noqa: E731
    perturbed = loss.per_sample(lambda x, t: model(x, t) + delta(x), x0, t, noise)
    excess, excess_se = mean_se(perturbed - at_oracle)
    expected, expected_se = mean_se((delta(x_t) ** 2).sum(1))
    assert excess > K_SE * excess_se
    assert abs(excess - expected) < K_SE * math.hypot(excess_se, expected_se)


# -- straightness and reflow ---------------------------------------------------------------------
def gaussian_straightness_weights(gmm: sd.GaussianMixture) -> torch.Tensor:
    """Closed form for data ``N(mu, diag c^2)`` under the rectified flow.  The flow keeps the
    standardised coordinate ``z``: ``x_t = (1 - t) mu + s_t z`` with ``s_t^2 = (1-t)^2 c^2 + t^2``,
    so ``u = -mu + s_t' z``, ``x_1 - x_0 = -mu + (1 - c) z`` and the straightness of the path from
    ``z`` is ``sum_j k_j z_j^2`` with ``k_j = int_0^1 (1 - c_j - s_t'(c_j))^2 dt`` (returned, ``(d,)``;
    midpoint rule on 200000 cells, error ~1e-11 for this smooth integrand)."""
    c = gmm.stds[0]
    t = (torch.arange(200_000, dtype=DT) + 0.5) / 200_000
    s = torch.sqrt((1 - t[:, None]) ** 2 * c**2 + t[:, None] ** 2)
    ds = (t[:, None] - (1 - t[:, None]) * c**2) / s
    return ((1 - c - ds) ** 2).mean(0)


def test_straightness_of_the_gaussian_flow_matches_its_closed_form():
    sde = sd.RectifiedFlow()
    n = 1000
    x_noise = torch.randn(n, 2, generator=gen(7), dtype=DT)
    velocity = oracle_velocity(GAUSS, sde)
    exact = float((gaussian_straightness_weights(GAUSS) * x_noise**2).sum(1).mean())  # on the same z
    errors = {}
    for steps in (200, 400):
        path = euler_flow(velocity, x_noise, steps)
        assert path.nfe == steps and path.states.shape == (steps + 1, n, 2)
        errors[steps] = straightness(velocity, x_noise, steps=steps) - exact
        # the end point is the Gaussian flow map x_0 = mu + c z up to Euler's O(1/N) error
        end_err = (path.end - (GAUSS.means[0] + GAUSS.stds[0] * x_noise)).abs() / (1 + x_noise.abs())
        assert float(end_err.max()) < 1.0 / steps
    # first order: the discretisation error is below 2% at N = 200 and halves with N (ratio in [1.8, 2.2])
    assert abs(errors[200]) < 0.02 * exact
    assert 1.8 < errors[200] / errors[400] < 2.2, errors


def test_straightness_vanishes_for_straight_paths_and_not_for_curved():
    # data concentrated at mu: u(x, t) = (x - mu) / t, paths are straight lines at constant speed
    mu = torch.tensor([0.7, -1.2], dtype=DT)
    x_noise = torch.randn(100, 2, generator=gen(8), dtype=DT)
    straight = lambda x, t: (x - mu) / t[:, None]  # noqa: E731
    assert straightness(straight, x_noise, steps=7) < 1e-20
    one_step = euler_flow(straight, x_noise, 1).end
    torch.testing.assert_close(one_step, mu.expand_as(one_step), rtol=0, atol=1e-12)
    # a rotating field has curved paths: S = E|x_1 - x_0 - u|^2 > 0; with a given x_data the chord changes
    rotate = lambda x, t: x.flip(1) * torch.tensor([1.0, -1.0], dtype=DT)  # noqa: E731
    assert straightness(rotate, x_noise, steps=50) > 0.1
    assert straightness(straight, x_noise, x_data=(mu + 0.1).expand_as(x_noise), steps=7) == pytest.approx(0.02, rel=1e-9)


def test_reflow_straightens_the_gaussian_flow():
    # 1-RF on N(mu, diag c^2) has curved paths (closed form above). Its flow map is x_data = mu + c z,
    # an invertible affine coupling, so the reflowed (2-RF) field is the straight one:
    # x_t = (1 - t)(mu + c z) + t z  =>  z = (x_t - (1 - t) mu) / ((1 - t) c + t),  u_2 = z - mu - c z.
    # ReflowLoss vanishes at u_2 (its unique minimiser: the coupling is deterministic) and not at u_1,
    # and u_2's straightness is 0 where u_1's is the closed form.
    sde = sd.RectifiedFlow()
    mu, c = GAUSS.means[0], GAUSS.stds[0]
    z = torch.randn(2000, 2, generator=gen(21), dtype=DT)
    pairs = torch.stack([mu + c * z, z], dim=1)

    def u2(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(-1, 1)
        zz = (x - (1 - tt) * mu) / ((1 - tt) * c + tt)
        return zz - mu - c * zz

    u1 = oracle_velocity(GAUSS, sde)
    loss = ReflowLoss()
    before, after = float(loss(u1, pairs, generator=gen(1))), float(loss(u2, pairs, generator=gen(1)))
    assert after < 1e-20 and before > 1e-3  # float64: u_2 is exact up to round-off
    exact_before = float((gaussian_straightness_weights(GAUSS) * z**2).sum(1).mean())
    assert exact_before > 0.05 and straightness(u2, z, steps=5) < 1e-20
    assert straightness(u1, z, steps=400) == pytest.approx(exact_before, rel=0.02)  # Euler's O(1/N) error


def test_reflow_loss_is_flow_matching_on_the_coupling():
    sde = sd.RectifiedFlow()
    g = gen(9)
    x_data = torch.randn(256, 3, generator=g, dtype=DT)
    shift = torch.tensor([0.5, -1.0, 2.0], dtype=DT)
    pairs = torch.stack([x_data, x_data + shift], dim=1)  # a translation coupling: u = shift exactly
    loss = ReflowLoss(reduce="sum")
    assert loss.parameterization.kind == "flow" and isinstance(loss.sde, sd.RectifiedFlow)
    assert float(loss(lambda x, t: shift.expand_as(x), pairs, generator=gen(0))) < 1e-24
    # with a wrong constant field the loss is exactly |error|^2 at every t
    err = torch.tensor([0.1, 0.2, -0.3], dtype=DT)
    value = float(loss(lambda x, t: (shift + err).expand_as(x), pairs, generator=gen(0)))
    assert value == pytest.approx(float((err**2).sum()), rel=1e-12)
    # x_t = (1 - t) x_data + t x_noise reaches the model, t drawn exactly as FlowMatchingLoss draws it
    seen = {}

    def probe(x, t):
        seen["x"], seen["t"] = x, t
        return torch.zeros_like(x)

    loss(probe, pairs, generator=gen(3))
    t, _ = sd.FlowMatchingLoss(sde).sample_time(256, gen(3), x_data)
    torch.testing.assert_close(seen["t"], t)
    torch.testing.assert_close(seen["x"], (1 - t[:, None]) * x_data + t[:, None] * (x_data + shift))
    with pytest.raises(ValueError, match="pairs"):
        loss(probe, x_data)


# -- bad input -----------------------------------------------------------------------------------
def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="eta"):
        sd.sample(RING.score_fn(sd.RectifiedFlow()), sd.RectifiedFlow(), (4, 2), method="ddim", steps=2, eta=-0.5)
    with pytest.raises(ValueError, match="eta"):
        sd.RectifiedFlow().reverse_drift(torch.zeros(2, 2), torch.full((2,), 0.5), torch.zeros(2, 2), eta=-0.5)
    # alpha = 2 sigma: the log-SNR is constant and alpha sigma' - sigma alpha' = 0
    degenerate = sd.LinearSDE(alpha=lambda t: 1 + 2 * t, sigma=lambda t: 0.5 + t)
    with pytest.raises(ValueError, match="sde"):
        sd.Parameterization("flow", degenerate)
    with pytest.raises(ValueError, match="sde"):
        sd.FlowMatchingLoss(degenerate)
    rf = sd.RectifiedFlow()
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="^t must lie"):
        rf.marginal(x, torch.tensor([0.5, 1.5, 0.2]), x)
    with pytest.raises(ValueError, match="^t must lie"):
        sd.FlowMatchingLoss(rf).per_sample(lambda x, t: x, x, torch.tensor([-0.1, 0.5, 0.5]), x)
    with pytest.raises(ValueError, match="^t must lie"):
        RING.score(x, 1.5, rf)
    with pytest.raises(ValueError, match="steps"):
        straightness(lambda x, t: x, x, steps=0)
    with pytest.raises(ValueError, match="x_data"):
        straightness(lambda x, t: x, x, x_data=torch.zeros(3, 3))


# -- sampling, couplings and likelihood through the generic routines -----------------------------
DETERMINISTIC = ["ode", "ode-euler", "ode-heun", "ode-midpoint", "ode-rk4", "ddim", "heun", "dpm-solver++", "dpm-solver++2m", "unipc"]


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_rectified_flow_sampling_stays_finite(method):
    sde = sd.RectifiedFlow()
    x, info = sd.sample(RING.score_fn(sde), sde, (256, 2), method=method, steps=None if method == "ode" else 20,
                        generator=gen(10), trajectory=True)
    assert info.nfe > 0 and len(info.trajectory) > 0
    assert all(bool(torch.isfinite(s).all()) for s in info.trajectory) and bool(torch.isfinite(x).all())
    # 20 steps of any of these solvers already land near the ring (radius 2, std 0.2): a divergent
    # or sign-flipped step would not
    assert abs(float(x.norm(dim=1).median()) - 2.0) < 0.3


def test_rectified_flow_reaches_the_noise_floor_with_the_adaptive_ode():
    # n exact samples of p_eps vs n ODE samples from the same number of prior draws:
    # (1) mode shares: each of the 8 within K_SE binomial SE sqrt(w (1 - w) / n) of its weight;
    # (2) mean log-density under p_eps: within K_SE SE of the exact E log p_eps (the SE of the ODE
    #     sample's mean, from its own spread; the exact mean from 10x more exact draws);
    # (3) sliced-W2 to a reference set: no more than the largest of 5 exact-vs-reference values
    #     plus 10% (the floor of finite samples; a biased sampler sits far above it)
    sde = sd.RectifiedFlow()
    n = 2000
    x, info = sd.sample(RING.score_fn(sde), sde, (n, 2), method="ode", dtype=DT, generator=gen(11))
    target = RING.diffused(sde, sde.eps)
    shares = torch.bincount(target.assign(x), minlength=8).to(DT) / n
    w = RING.weights
    assert bool(((shares - w).abs() < K_SE * (w * (1 - w) / n).sqrt()).all()), shares
    logp, logp_se = mean_se(target.log_prob(x))
    exact, exact_se = mean_se(target.log_prob(target.sample(10 * n, generator=gen(12), dtype=DT)[0]))
    assert abs(logp - exact) < K_SE * math.hypot(logp_se, exact_se), (logp, exact)
    ref = target.sample(n, generator=gen(13), dtype=DT)[0]
    floor = max(sliced_w2_of(target.sample(n, generator=gen(20 + i), dtype=DT)[0], ref) for i in range(5))
    assert sliced_w2_of(x, ref) < 1.1 * floor
    assert info.nfe < 200


def sliced_w2_of(x: torch.Tensor, y: torch.Tensor) -> float:
    return sliced_wasserstein(x, y, n_projections=128, generator=gen(0))


def test_draw_couplings_follow_the_gaussian_flow_map():
    # for Gaussian data the probability-flow map keeps z = (x_t - m_t) / s_t, with m_t = (1 - t) mu and
    # s_t^2 = (1 - t)^2 c^2 + t^2; the sampler starts its grid at t0 (T - eps for RF, where the log-SNR is
    # finite), so x_data = m_eps + s_eps (x_noise - m_t0) / s_t0; the adaptive solve at rtol = atol = 1e-6
    # is accurate to ~1e-5, and we allow 1e-4
    sde = sd.RectifiedFlow()
    couplings = draw_couplings(GAUSS.score_fn(sde), sde, (500, 2), method="ode", rtol=1e-6, atol=1e-6,
                               generator=gen(15), dtype=DT)
    assert len(couplings) == 500 and couplings.nfe > 0 and couplings.pairs().shape == (500, 2, 2)
    mu, c = GAUSS.means[0], GAUSS.stds[0]
    m = lambda t: (1 - t) * mu  # noqa: E731
    s = lambda t: torch.sqrt((1 - t) ** 2 * c**2 + t**2)  # noqa: E731
    t0, t1 = default_t_max(sde), sde.eps
    expected = m(t1) + s(t1) * (couplings.x_noise - m(t0)) / s(t0)
    torch.testing.assert_close(couplings.x_data, expected, rtol=0, atol=1e-4)
    # the pairs are ReflowLoss's input: data first, noise second
    torch.testing.assert_close(ReflowLoss.split(couplings.pairs())[1], couplings.x_noise)


def test_rectified_flow_likelihood_through_a_velocity_model_matches_the_closed_form():
    # the oracle velocity as a "flow" network, read by the generic likelihood routine (no RF case in it);
    # error budget: dopri5 at rtol = atol = 1e-6 (measured max 2.4e-4 nats, at a point between modes; the
    # batch-RMS error control lets such outliers reach 9e-3 at 1e-5) plus the prior applied where
    # lambda = -10, which moves log p by ~|x| alpha/sigma = 2 e^-10 ~ 1e-4; so the likelihood tests'
    # RF tolerance, 1e-3 nats/dim, holds with margin
    sde = sd.RectifiedFlow()
    x, _ = RING.sample(100, generator=gen(14), dtype=DT)
    score_fn = sd.score_fn_from_model(oracle_velocity(RING, sde), sde, "flow")
    logp, info = sd.log_likelihood(score_fn, sde, x, divergence="exact", solver="dopri5", rtol=1e-6, atol=1e-6)
    exact = RING.log_prob(x, sde.eps, sde)
    assert float((logp - exact).abs().max()) / 2 < 1e-3, (logp - exact).abs().max()
    assert bool(torch.isfinite(info.z).all()) and 0 < info.nfe < 400


def test_rectified_flow_encode_decode_follow_the_gaussian_flow_map():
    # encode maps x(eps) to x(t_max) along the probability-flow ODE; for Gaussian data that map keeps
    # z = (x_t - m_t) / s_t (see test_draw_couplings_follow_the_gaussian_flow_map); adaptive solves at
    # rtol = atol = 1e-6 are accurate to ~1e-5 and we allow 1e-4
    sde = sd.RectifiedFlow()
    score_fn = GAUSS.score_fn(sde)
    x = GAUSS.diffused(sde, sde.eps).sample(300, generator=gen(16), dtype=DT)[0]
    z, info = sd.encode(score_fn, sde, x, rtol=1e-6, atol=1e-6)
    mu, c = GAUSS.means[0], GAUSS.stds[0]
    std = lambda t: torch.sqrt((1 - t) ** 2 * c**2 + t**2)  # noqa: E731
    t0, t1 = sde.eps, default_t_max(sde)
    torch.testing.assert_close(z, (1 - t1) * mu + std(t1) * (x - (1 - t0) * mu) / std(t0), rtol=0, atol=1e-4)
    x_back, _ = sd.decode(score_fn, sde, z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-4)
    assert info.nfe > 0


def test_classifier_guidance_on_the_rectified_flow_samples_the_chosen_mode():
    # with the exact noisy classifier p_t(y | x) the guided score at scale 1 is the class-conditional
    # score (Bayes), at every t including near t = 1 of the rectified flow; sampling it lands in mode y
    sde = sd.RectifiedFlow()
    log_prob = lambda x, t: torch.log(RING.posterior(x, t, sde))  # noqa: E731
    guided = sd.classifier_guided_score(RING.score_fn(sde), log_prob, labels=2, scale=1.0)
    x = diffused_sample(RING, sde, 200, torch.full((200,), 0.5, dtype=DT), seed=17)
    for t in (0.01, 0.5, default_t_max(sde)):
        tt = torch.full((200,), t, dtype=DT)
        torch.testing.assert_close(guided(x, tt), RING.score_fn(sde, label=2)(x, tt), rtol=1e-6, atol=1e-8)
    samples, _ = sd.sample(guided, sde, (200, 2), method="dpm-solver++", steps=20, generator=gen(18), dtype=DT)
    assert bool((RING.assign(samples) == 2).all())


def test_digits_rf_preset_is_digits_vp_with_the_rectified_flow():
    from scoresde import config as C

    rf, vp = C.load_config("digits-rf"), C.load_config("digits-vp")
    sde = C.build_sde(rf)
    loss = C.build_loss(rf, sde)
    assert isinstance(sde, sd.RectifiedFlow) and type(loss) is sd.FlowMatchingLoss
    # the same budget: network, data, training, sampler and evaluation sections are digits-vp's
    for section in ("data", "model", "training", "sampling", "evaluation"):
        assert getattr(rf, section) == getattr(vp, section), section


def test_reflow_command_retrains_a_rectified_flow_run_on_its_couplings(tmp_path):
    from safetensors.torch import load_file

    from scoresde import cli, load_run
    from scoresde.cli.runs import train_run
    from scoresde import config as C
    from scoresde.cli.reflow import COUPLINGS_FILE
    from scoresde.runs import CONFIG_FILE

    raw = {"data": {"source": "toy", "name": "8gaussians", "n": 500}, "sde": {"name": "rf"},
           "model": {"name": "mlp", "dim": 2, "width": 16, "depth": 1}, "loss": {"name": "fm"},
           "training": {"steps": 10, "batch_size": 64, "lr": 1e-3, "checkpoint_every": 10, "log_every": 5}}
    train_run(C.load_config(raw), tmp_path / "rf", progress=False)
    argv = ["reflow", str(tmp_path / "rf"), "--out", str(tmp_path / "rf2"), "--couplings", "64",
            "--method", "ddim", "--sampler-steps", "4", "--steps", "6", "--quiet"]
    assert cli.main(argv) == 0
    run = load_run(tmp_path / "rf2")
    assert run.step == 6 and isinstance(run.sde, sd.RectifiedFlow) and run.loss.parameterization.kind == "flow"
    # the stored couplings are the source run's DDIM map of the stored noise
    stored = load_file(str(tmp_path / "rf2" / COUPLINGS_FILE))
    source = load_run(tmp_path / "rf")
    x, _ = sd.sample(source.score_fn, source.sde, x_T=stored["x_noise"], method="ddim", steps=4)
    torch.testing.assert_close(stored["x_data"], x)
    report = json.loads((tmp_path / "rf2" / "reflow.json").read_text())
    assert report["couplings"] == 64
    # the report's straightness is the source network's, on the command's noise (seed + 1)
    x_noise = source.sde.prior_sample((256,) + source.sample_shape, generator=torch.Generator().manual_seed(1))
    assert report["straightness_before"] == pytest.approx(straightness(source.model, x_noise, steps=100), rel=1e-5)
    # a second writer on the folder is refused while the first holds it (the lock of `train`)
    from scoresde import checkpoint

    with checkpoint.lock_directory(tmp_path / "rf2"):
        assert cli.main(argv[:-3] + ["--steps", "8", "--resume", "--quiet"]) == 2
    # --resume continues the same run on the same couplings; a VP run is refused
    assert cli.main(argv[:-3] + ["--steps", "8", "--resume", "--quiet"]) == 0
    assert load_run(tmp_path / "rf2").step == 8
    torch.testing.assert_close(load_file(str(tmp_path / "rf2" / COUPLINGS_FILE))["x_noise"], stored["x_noise"])
    # a start that fails before its first checkpoint leaves config.yaml and the couplings: --resume
    # then starts from step 0 on those couplings instead of finding no checkpoint
    failing = argv[:3] + [str(tmp_path / "rf3")] + argv[4:]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sd.Trainer, "fit", lambda self, steps: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):
            cli.main(failing)
    assert (tmp_path / "rf3" / CONFIG_FILE).is_file() and (tmp_path / "rf3" / COUPLINGS_FILE).is_file()
    assert cli.main(failing) == 2  # without --resume the folder is refused: it holds a run
    assert cli.main(failing + ["--resume"]) == 0
    assert load_run(tmp_path / "rf3").step == 6
    vp = {**raw, "sde": {"name": "vp"}, "loss": {"name": "dsm"}}
    train_run(C.load_config(vp), tmp_path / "vp", progress=False)
    assert cli.main(["reflow", str(tmp_path / "vp"), "--out", str(tmp_path / "vp2"), "--quiet"]) == 2
