"""Parameterizations and the Gaussian-mixture oracle against autograd, sampling and Bayes' rule.

Monte-Carlo checks allow ``K_SE = 4`` standard errors (false-failure probability 6e-5 for a
correct implementation; seeds are fixed, so runs are deterministic).  Each such check has a
control showing that a slightly wrong answer (the oracle at a wrong time) is rejected.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.score import PARAMETERIZATIONS

K_SE = 4.0
DT = torch.float64
SDES = [sd.VPSDE(), sd.VESDE(), sd.SubVPSDE(), sd.RectifiedFlow()]
SDE_IDS = ["vp", "ve", "subvp", "rf"]
RING = sd.GaussianMixture.named("ring2d")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def interior_times(n: int, sde, seed: int = 0, dtype=DT) -> torch.Tensor:
    return 0.05 + 0.9 * torch.rand(n, generator=gen(seed), dtype=dtype) * sde.T


def se(values: torch.Tensor) -> float:
    return float(values.std() / math.sqrt(values.numel()))


# -- parameterizations ----------------------------------------------------------------------------
@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("kind", PARAMETERIZATIONS)
@pytest.mark.parametrize("dtype, tol", [(DT, 1e-12), (torch.float32, 1e-6)])
def test_parameterization_round_trips(sde, kind, dtype, tol):
    param = sd.Parameterization(kind, sde)
    g = gen(1)
    x0 = torch.randn(64, 3, generator=g, dtype=dtype)
    noise = torch.randn(64, 3, generator=g, dtype=dtype)
    t = interior_times(64, sde, dtype=dtype)
    x = sde.marginal(x0, t, noise)
    out = param.target(x0, noise, t)
    x0_hat, eps_hat = param.x0_eps(out, x, t)
    # tolerances relative to the largest term in play (VE's sigma reaches 50)
    scale = float(torch.stack([x.abs().max(), x0.abs().max(), noise.abs().max()]).max())
    tols = {"rtol": tol * 50, "atol": tol * 50 * scale}
    torch.testing.assert_close(x0_hat, x0, **tols)
    torch.testing.assert_close(eps_hat, noise, **tols)
    torch.testing.assert_close(param.output(x0_hat, eps_hat, t), out, **tols)
    score = -noise / sde.sigma(t)[:, None]
    torch.testing.assert_close(param.score(out, x, t), score, **tols)
    torch.testing.assert_close(param.score(param.from_score(score, x, t), x, t), score, **tols)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_parameterization_targets_have_the_documented_forms(sde):
    g = gen(2)
    x0, noise = torch.randn(16, 2, generator=g, dtype=DT), torch.randn(16, 2, generator=g, dtype=DT)
    t = interior_times(16, sde)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    da, ds = sde.dalpha(t)[:, None], sde.dsigma(t)[:, None]
    x = a * x0 + s * noise
    expected = {"eps": noise, "score": -noise / s, "x0": x0, "v": a * noise - s * x0, "flow": da * x0 + ds * noise}
    for kind, target in expected.items():
        param = sd.Parameterization(kind, sde)
        torch.testing.assert_close(param.target(x0, noise, t), target, rtol=1e-12, atol=1e-12)
        # Tweedie: denoise = (x + sigma^2 s) / alpha
        torch.testing.assert_close(param.denoise(target, x, t), (x + s**2 * param.score(target, x, t)) / a)


def test_flow_parameterization_rejects_a_vanishing_determinant():
    # alpha sigma' - sigma alpha' = 0 when sigma / alpha is constant
    constant = sd.LinearSDE(alpha=torch.ones_like, sigma=lambda t: 0.5 * torch.ones_like(t))
    with pytest.raises(ValueError, match="sde"):
        sd.Parameterization("flow", constant)


# -- the oracle's score and density ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["ring2d", "mix16"])
@pytest.mark.parametrize("sde", [None, *SDES], ids=["p0", *SDE_IDS])
def test_oracle_score_equals_autograd_of_log_density(name, sde):
    gmm = sd.GaussianMixture.named(name)
    x, _ = gmm.sample(64, generator=gen(0), dtype=DT)
    t = None if sde is None else interior_times(64, sde)
    if sde is not None:
        x = sde.marginal(x, t, torch.randn(x.shape, generator=gen(1), dtype=DT))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.log_prob(xg, t, sde).sum(), xg)
    torch.testing.assert_close(gmm.score(x, t, sde), grad, rtol=1e-10, atol=1e-10)
    # class-conditional scores and the classifier-guidance gradient, by autograd too
    labels = torch.arange(64) % gmm.num_components
    comp_logp = torch.stack([gmm.component(k).log_prob(xg, t, sde) for k in range(gmm.num_components)], 1)
    (comp,) = torch.autograd.grad(comp_logp[torch.arange(64), labels].sum(), xg)
    torch.testing.assert_close(gmm.component_scores(x, t, sde)[torch.arange(64), labels], comp, rtol=1e-10, atol=1e-10)
    (guide,) = torch.autograd.grad(torch.log(gmm.posterior(xg, t, sde))[torch.arange(64), labels].sum(), xg)
    torch.testing.assert_close(gmm.grad_log_posterior(x, t, sde, labels), guide, rtol=1e-9, atol=1e-9)


def test_score_fn_and_diffused_mixture_agree_with_the_oracle():
    sde, t = sd.VPSDE(), 0.4
    x = torch.randn(32, 2, generator=gen(0), dtype=DT)
    diffused = RING.diffused(sde, t)
    torch.testing.assert_close(diffused.log_prob(x), RING.log_prob(x, t, sde))
    torch.testing.assert_close(RING.score_fn(sde)(x, torch.full((32,), t, dtype=DT)), RING.score(x, t, sde))
    torch.testing.assert_close(RING.score_fn(sde, label=3)(x, t), RING.component(3).score(x, t, sde))
    total = sum(RING.weights[k] * RING.component(k).log_prob(x, t, sde).exp() for k in range(8))
    torch.testing.assert_close(RING.log_prob(x, t, sde).exp(), total)


def kernel_samples(sde, t: float, n: int, seed: int) -> torch.Tensor:
    """The diffused marginal by its definition: the kernel applied to samples of the mixture."""
    g = gen(seed)
    x0, _ = RING.sample(n, generator=g, dtype=DT)
    return sde.marginal(x0, t, torch.randn(x0.shape, generator=g, dtype=DT))


@pytest.mark.parametrize("sde, t", [(sd.VPSDE(), 0.3), (sd.VESDE(0.01, 5.0), 0.4), (sd.RectifiedFlow(), 0.5)])
def test_kernel_samples_match_the_diffused_mixture(sde, t, sliced_w2):
    n = 10000
    x = kernel_samples(sde, t, n, seed=0)
    diffused = RING.diffused(sde, t)
    y, _ = diffused.sample(n, generator=gen(1), dtype=DT)
    # the log-density has the same mean under both samples (joint SE of two independent means)
    lx, ly = diffused.log_prob(x), diffused.log_prob(y)
    assert abs(float(lx.mean() - ly.mean())) < K_SE * math.hypot(se(lx), se(ly))
    # sliced W2 at the noise floor: below twice the floor, the mean distance between independent
    # oracle samples of the same size (single pairs measured 0.020-0.046, the kernel samples
    # 0.019-0.033); the oracle at a time shifted by 0.3 lands far above it (> 4x)
    floor = sum(sliced_w2(y, diffused.sample(n, generator=gen(s), dtype=DT)[0]) for s in (2, 3, 4)) / 3
    assert sliced_w2(x, y) < 2 * floor
    wrong, _ = RING.diffused(sde, t + 0.3).sample(n, generator=gen(5), dtype=DT)
    assert sliced_w2(x, wrong) > 3 * floor


# -- class posterior ------------------------------------------------------------------------------
def test_class_posterior_is_normalised_and_follows_bayes_rule():
    sde, t, n = sd.VPSDE(), 0.35, 40000
    g = gen(0)
    x0, labels = RING.sample(n, generator=g, dtype=DT)
    x_t = sde.marginal(x0, t, torch.randn(x0.shape, generator=g, dtype=DT))
    post = RING.posterior(x_t, t, sde)
    torch.testing.assert_close(post.sum(1), torch.ones(n, dtype=DT), rtol=1e-12, atol=1e-12)
    onehot = torch.nn.functional.one_hot(labels, 8).to(DT)
    # for the true posterior, E[(1{y=k} - p(k|x)) h(x)] = 0 for any h: with h = 1 (the posterior
    # averages to the label frequencies) and h = p(k|x) (calibration); K_SE per class
    for h in (torch.ones_like(post), post):
        resid = (onehot - post) * h
        assert bool((resid.mean(0).abs() < K_SE * resid.std(0) / math.sqrt(n)).all())
    # control: the posterior of the wrong time is rejected by the calibration check
    wrong = RING.posterior(x_t, t + 0.15, sde)
    resid = (onehot - wrong) * wrong
    assert bool((resid.mean(0).abs() > K_SE * resid.std(0) / math.sqrt(n)).any())


# -- inpainting conditionals ----------------------------------------------------------------------
def test_conditional_matches_rejection_sampling_on_the_ring():
    # condition on x_1 in a window around sqrt(2), where modes 1 (weight 2) and 3 (weight 4) sit
    c, half = math.sqrt(2.0), 0.05
    x, labels = RING.sample(400_000, generator=gen(0), dtype=DT)
    keep = (x[:, 1] - c).abs() < half
    kept, kept_labels = x[keep], labels[keep]
    m = kept.shape[0]
    # the oracle conditioned on each kept sample's own x_1 (so the window adds no bias)
    x_obs = kept[:, 1:]
    weights = RING.conditional_weights(x_obs, [1])
    torch.testing.assert_close(weights.sum(1), torch.ones(m, dtype=DT))
    # mode shares: mean conditional weight vs label frequency, binomial SE sqrt(p(1-p)/m) per mode
    freq = torch.bincount(kept_labels, minlength=8).to(DT) / m
    share = weights.mean(0)
    assert bool(((freq - share).abs() <= K_SE * torch.sqrt(share * (1 - share) / m) + 1e-12).all())
    assert float(share[3]) > 0.5 and float(share[1]) > 0.25  # the conditional is truly bimodal
    # histogram of the missing coordinate: exact conditional samples vs rejection samples,
    # per-bin difference of two binomial proportions within K_SE joint SE
    x_miss = RING.sample_conditional(x_obs, [1], generator=gen(1))
    assert x_miss.shape == (m, 1)
    edges = torch.linspace(-3, 3, 13, dtype=DT)
    h_rej = torch.histogram(kept[:, 0], edges).hist / m
    h_cond = torch.histogram(x_miss[:, 0], edges).hist / m
    bin_se = torch.sqrt((h_rej * (1 - h_rej) + h_cond * (1 - h_cond)) / m)
    assert bool(((h_rej - h_cond).abs() <= K_SE * bin_se + 1e-12).all())
    assert RING.missing_dims([1]).tolist() == [0]
    log_n = -0.5 * ((x_obs[:5] - RING.means[:, 1]) / 0.2) ** 2 - math.log(0.2 * math.sqrt(2 * math.pi))
    torch.testing.assert_close(
        RING.marginal_dims([1]).log_prob(x_obs[:5]), torch.logsumexp(torch.log(RING.weights) + log_n, 1)
    )


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: RING.score(torch.zeros(4, 3)), "x"),
        (lambda: RING.log_prob(torch.zeros(4)), "x"),
        (lambda: RING.score(torch.zeros(4, 2), 1.5, sd.VPSDE()), "t"),
        (lambda: RING.grad_log_posterior(torch.zeros(4, 2), 0.5, sd.VPSDE(), torch.tensor([0, 1, 8, 2])), "labels"),
        (lambda: RING.grad_log_posterior(torch.zeros(4, 2), 0.5, sd.VPSDE(), torch.tensor([0, 1])), "labels"),
        (lambda: RING.score_fn(sd.VPSDE(), label=-1)(torch.zeros(2, 2), torch.full((2,), 0.5)), "labels"),
        (lambda: sd.GaussianMixture(torch.ones(2), torch.zeros(3, 2), torch.ones(3, 2)), "weights"),
        (lambda: sd.GaussianMixture(torch.ones(3), torch.zeros(3), torch.ones(3)), "means"),
        (lambda: sd.GaussianMixture(torch.ones(3), torch.zeros(3, 2), torch.ones(3, 1)), "stds"),
        (lambda: sd.GaussianMixture(torch.ones(3), torch.zeros(3, 2), torch.zeros(3, 2)), "stds"),
        (lambda: sd.GaussianMixture.named("ring3d"), "mixture name"),
        (lambda: sd.Parameterization("logits", sd.VPSDE()), "parameterization"),
        (lambda: sd.Parameterization("eps", object()), "sde"),
        (lambda: sd.Parameterization("eps", sd.VPSDE()).score(torch.ones(4, 2), torch.ones(4, 2), torch.ones(3)),
         "t"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()
