"""Conditional sampling given linear measurements, against the exact posterior of the oracle.

A Gaussian-mixture prior with a linear-Gaussian likelihood has a closed-form mixture posterior
(:meth:`GaussianMixture.linear_gaussian_posterior`). Each sampler's output (one sample per row, all
rows with the same observation) is compared with it in three statistics, each within ``4``
standard errors of the sampler's sample size ``n`` (a false alarm rate below 1e-4 per statistic):

* component shares (samples assigned to the prior's components): binomial SE ``sqrt(p (1 - p) / n)``,
  plus 0.01 for the Monte-Carlo error of the exact reference shares (20 000 draws: SE <= 0.0035);
* the mean per coordinate: SE ``sqrt(Var / n)`` with the exact posterior variance;
* the spread within the dominant component: SE of a standard deviation ``std sqrt(1 / (2 n_k))``.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.guidance import (
    AveragePool,
    CircularBlur,
    ConditionalInfo,
    Grayscale,
    LinearOperator,
    Mask,
    colorize,
    decoupling_matrix,
    inpaint,
    solve_inverse_problem,
    to_gray,
)
from scoresde.sampling.grids import make_grid

SDE = sd.VPSDE()
N_SE = 4.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dense(op: LinearOperator, shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix ``(m, d)`` of ``op`` on flattened float64 samples of ``shape``."""
    return op.matrix(torch.zeros((1, *shape), dtype=torch.float64))


def assert_matches_posterior(x: torch.Tensor, post, gmm: sd.GaussianMixture) -> None:
    """The three statistics of the module docstring; ``post`` holds one row."""
    n = x.shape[0]
    x = x.reshape(n, -1).double()
    ref, _ = post.sample(gen(99), repeats=20000)
    got_k, ref_k = gmm.assign(x), gmm.assign(ref)
    K = gmm.num_components
    share = torch.bincount(got_k, minlength=K).double() / n
    exact = torch.bincount(ref_k, minlength=K).double() / ref.shape[0]
    bound = N_SE * (exact * (1 - exact) / n).sqrt() + 0.01
    assert ((share - exact).abs() <= bound).all(), f"shares {share.tolist()} vs exact {exact.tolist()}"
    var = ref.var(0)
    mean_err = (x.mean(0) - post.mean()[0]).abs()
    assert (mean_err <= N_SE * (var / n).sqrt() + 1e-3).all(), f"mean error {mean_err.tolist()}"
    k = int(exact.argmax())
    mine, theirs = x[got_k == k], ref[ref_k == k]
    free = theirs.std(0) > 1e-3  # observed coordinates have no spread
    ratio = mine.std(0)[free] / theirs.std(0)[free]
    assert ((ratio - 1).abs() <= N_SE * math.sqrt(1 / (2 * mine.shape[0]))).all(), f"spread ratio {ratio.tolist()}"


# -- the operators' SVDs ------------------------------------------------------------------------------
def _random_operator() -> LinearOperator:
    W = torch.randn(5, 12, generator=gen(3), dtype=torch.float64)
    return LinearOperator(lambda x: (x.reshape(x.shape[0], -1).double() @ W.T).to(x.dtype),
                          lambda y: (y.double() @ torch.linalg.pinv(W).T).reshape(y.shape[0], 3, 2, 2).to(y.dtype))


OPERATORS = {
    "mask": lambda: Mask(torch.rand(3, 2, 2, generator=gen(0)) > 0.5),
    "avgpool": lambda: AveragePool(2),
    "gray": lambda: Grayscale(3),
    "blur": lambda: CircularBlur(torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16, tol=0.05),
    "dense": _random_operator,
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_spectrum_is_a_singular_value_decomposition(name):
    """``U^T A x = S V^T x`` and ``V V^T = I`` (the basis is complete and orthonormal; the dense
    fallback spans the row space), to float64 round-off; the spectrum's ``s`` agree with the
    dense matrix's singular values."""
    op = OPERATORS[name]()
    shape = (3, 4, 4) if name in ("avgpool", "blur") else (3, 2, 2)
    x = torch.randn(4, *shape, generator=gen(1), dtype=torch.float64)
    spec = op.svd(x)
    c = spec.coef(x)
    back = op.pinv(op(x)) if name == "dense" else x  # the dense fallback keeps the row space only
    torch.testing.assert_close(spec.expand(c).double(), back)
    torch.testing.assert_close(spec.observe(op(x)), spec.s * c)
    torch.testing.assert_close(torch.linalg.norm(c.reshape(4, -1), dim=1).double(), torch.linalg.norm(back.reshape(4, -1), dim=1))
    s = torch.linalg.svdvals(dense(op, shape))
    kept = torch.sort(spec.s.expand(c[:1].shape).reshape(-1).abs().double(), descending=True).values[: s.numel()]
    if name == "blur":  # the threshold zeroes the frequencies below tol * max
        s = torch.where(s > 0.05 * s.max(), s, torch.zeros_like(s))
    torch.testing.assert_close(kept, s, rtol=1e-6, atol=1e-9)


# -- the oracle's posterior ---------------------------------------------------------------------------
def test_linear_gaussian_posterior_of_a_mask_is_the_diagonal_conditional():
    """A mask: the closed form's weights equal ``conditional_weights`` (float64 round-off), and its
    samples match ``sample_conditional`` in mean and spread (4 SE of 20 000 draws)."""
    gmm = sd.GaussianMixture.named("ring2d")
    A = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # a mask with its zero row
    post = gmm.linear_gaussian_posterior(A, torch.tensor([[1.41, 0.0]]))
    torch.testing.assert_close(post.weights, gmm.conditional_weights(torch.tensor([[1.41]], dtype=torch.float64), [0]))
    x, _ = post.sample(gen(0), repeats=20000)
    ref = gmm.sample_conditional(torch.full((20000, 1), 1.41, dtype=torch.float64), [0], generator=gen(1))
    torch.testing.assert_close(x[:, 0], torch.full((20000,), 1.41, dtype=torch.float64), rtol=0, atol=1e-6)  # y was float32
    sd_ = float(ref.std())
    assert abs(float(x[:, 1].mean() - ref.mean())) < N_SE * sd_ * math.sqrt(2 / 20000)
    assert abs(float(x[:, 1].std()) / sd_ - 1) < N_SE * math.sqrt(1 / 20000)


def test_linear_gaussian_posterior_with_noise_matches_importance_weights():
    """``y = x_1 + x_2 + 0.3 n``: the closed-form mean against self-normalised importance weights
    ``N(y; x_1 + x_2, 0.3^2)`` on 400 000 prior draws (ESS about 50 000: SE below 0.01)."""
    gmm = sd.GaussianMixture.named("ring2d")
    post = gmm.linear_gaussian_posterior(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.5]]), 0.3)
    xs, _ = gmm.sample(400000, generator=gen(1), dtype=torch.float64)
    w = torch.exp(-0.5 * ((xs.sum(1) - 1.5) / 0.3) ** 2)
    torch.testing.assert_close(post.mean()[0], (w[:, None] * xs).sum(0) / w.sum(), rtol=0, atol=0.04)


# -- the defaults reproduce the exact conditional ----------------------------------------------------
@pytest.mark.parametrize("x1", [-2.0, 1.41], ids=["inside-a-mode", "between-modes"])
def test_default_inpaint_reproduces_the_exact_conditional(x1):
    """ring2d with x_1 observed: at -2 the mode at angle pi holds ~97 %; at 1.41 the modes at
    +-pi/4 (weights 2 and 8) share it."""
    gmm = sd.GaussianMixture.named("ring2d")
    n = 300
    x_obs = torch.zeros(n, 2)
    x_obs[:, 0] = x1
    mask = torch.tensor([True, False])
    x, info = inpaint(gmm.score_fn(SDE), SDE, x_obs, mask, generator=gen(1))
    assert torch.equal(x[:, 0], x_obs[:, 0]) and info.method == "smc" and info.nfe == info.particles * 100 + 1
    post = gmm.linear_gaussian_posterior(dense(Mask(mask), (2,)), Mask(mask)(x_obs[:1]).double())
    assert_matches_posterior(x, post, gmm)


def pixel_mixture(k: int, seed: int) -> sd.GaussianMixture:
    """``k`` components on images (3, 2, 2), one std per pixel shared by the channels."""
    g = gen(seed)
    stds = (0.15 + 0.2 * torch.rand(k, 1, 2, 2, generator=g, dtype=torch.float64)).expand(k, 3, 2, 2).reshape(k, -1)
    means = torch.randn(k, 3, 2, 2, generator=g, dtype=torch.float64)
    return sd.GaussianMixture(torch.arange(1, k + 1, dtype=torch.float64), means.reshape(k, -1), stds)


@pytest.mark.parametrize("between", [False, True], ids=["inside-a-mode", "between-modes"])
def test_default_colorize_reproduces_the_exact_conditional(between):
    """Three colour modes; the gray image of mode 2's mean (inside), or the average of the gray
    images of modes 0 and 1 (between: both keep a share)."""
    gmm = pixel_mixture(3, seed=0)
    means = gmm.means.reshape(3, 3, 2, 2).float()
    A = dense(Grayscale(3), (3, 2, 2))
    if between:  # the point on the segment between the two gray means where their weights balance
        grays = [to_gray(means[:1] + u * (means[1:2] - means[:1])) for u in torch.linspace(0, 1, 41).tolist()]
        weights = [gmm.linear_gaussian_posterior(A, g.reshape(1, -1).double()).weights[0] for g in grays]
        gray = grays[min(range(41), key=lambda i: float((weights[i][0] - weights[i][1]).abs()))]
    else:
        gray = to_gray(means[2:3])
    n = 300
    x, info = colorize(gmm.score_fn(SDE), SDE, gray.expand(n, 1, 2, 2), generator=gen(2))
    torch.testing.assert_close(to_gray(x), gray.expand(n, 1, 2, 2), rtol=1e-5, atol=1e-5)
    post = gmm.linear_gaussian_posterior(A, gray.reshape(1, -1).double())
    if between:
        assert (post.weights[0, :2] > 0.2).all()
    assert_matches_posterior(x, post, gmm)


def mixture_twist(gmm: sd.GaussianMixture, A: torch.Tensor, y: torch.Tensor):
    """The oracle's exact ``log p(A x_0 = y | x_t)``: ``sum_k p(k | x_t) N(y; A m_k, A V_k A^T)``
    with ``m_k, V_k`` the mean and (diagonal) covariance of ``x_0`` given ``x_t`` and component k."""
    w = torch.log(gmm.weights)

    def twist(x, x0, t):
        a, s = (float(v) for v in (SDE.alpha(torch.tensor(t)), SDE.sigma(torch.tensor(t))))
        xt = x.reshape(-1, 1, gmm.dim).double()
        var_t = a**2 * gmm.stds**2 + s**2  # (K, d): x_t given component k
        log_r = w - 0.5 * (((xt - a * gmm.means) ** 2) / var_t + torch.log(var_t)).sum(-1)
        m = gmm.means + a * gmm.stds**2 / var_t * (xt - a * gmm.means)  # (N, K, d)
        cov = A * (gmm.stds**2 * s**2 / var_t)[:, None, :] @ A.T  # (K, m, m): A x_0 given x_t and k
        r = y.reshape(-1).double() - m @ A.T
        log_n = -0.5 * (torch.einsum("nki,kij,nkj->nk", r, torch.linalg.inv(cov), r) + torch.logdet(cov))
        return (torch.log_softmax(log_r, dim=1) + log_n).logsumexp(1).reshape(x.shape[:2])

    return twist


def test_a_user_twist_with_the_exact_likelihood_reproduces_the_exact_conditional():
    """``twist=``: the oracle's exact ``p(y | x_t)`` as ``psi_t`` (any twist keeps the target) on a
    colorization between modes drawn at seed 2000, where ``y`` lies in both modes' tails (exact
    shares 0.20 / 0.80; resampling every row at once gave 0.53 / 0.47 with the default twist,
    BENCHMARKS.md): 64 particles x 100 steps reproduce the exact conditional (tolerances as above)."""
    gmm = pixel_mixture(3, seed=2000)
    A = dense(Grayscale(3), (3, 2, 2))
    means = gmm.means.reshape(3, 3, 2, 2).float()
    grays = [to_gray(means[:1] + u * (means[1:2] - means[:1])) for u in torch.linspace(0, 1, 41).tolist()]
    weights = [gmm.linear_gaussian_posterior(A, g.reshape(1, -1).double()).weights[0] for g in grays]
    gray = grays[min(range(41), key=lambda i: float((weights[i][0] - weights[i][1]).abs()))]
    post = gmm.linear_gaussian_posterior(A, gray.reshape(1, -1).double())
    assert 0.15 < float(post.weights[0, 0]) < 0.25  # the problem the docstring names
    n = 200
    x, info = colorize(gmm.score_fn(SDE), SDE, gray.expand(n, 1, 2, 2), twist=mixture_twist(gmm, A, gray), generator=gen(2))
    assert info.nfe == 64 * 100 + 1
    assert_matches_posterior(x, post, gmm)


@pytest.mark.parametrize("sigma_y", [0.0, 0.1])
@pytest.mark.parametrize("between", [False, True], ids=["inside-a-mode", "between-modes"])
def test_default_super_resolution_reproduces_the_exact_conditional(sigma_y, between):
    """mix16 as (1, 4, 4) images, 2x2 average pooling, exact or noisy (sigma_y = 0.1): the pooled
    mean of one mode, or midway between two."""
    gmm = sd.GaussianMixture.named("mix16")
    op, n = AveragePool(2), 300
    means = gmm.means.reshape(4, 1, 4, 4).float()
    y = op(0.5 * (means[0:1] + means[1:2]) if between else means[2:3])
    x, info = solve_inverse_problem(gmm.score_fn(SDE), SDE, y.expand(n, 1, 2, 2), op, (n, 1, 4, 4),
                                    sigma_y=sigma_y, particles=32, steps=100, generator=gen(3))
    if sigma_y == 0.0:
        torch.testing.assert_close(op(x), y.expand(n, 1, 2, 2), rtol=1e-5, atol=1e-5)
    post = gmm.linear_gaussian_posterior(dense(op, (1, 4, 4)), y.reshape(1, -1).double(), sigma_y)
    assert_matches_posterior(x, post, gmm)


def test_a_user_operator_with_noise_reproduces_the_exact_conditional():
    """``LinearOperator(forward, pinv)`` with neither a mask nor a named SVD (its spectrum from the
    dense matrix): ``y = x_1 + x_2 + 0.3 n = 1.5`` on the ring, where two modes share the posterior."""
    gmm = sd.GaussianMixture.named("ring2d")
    op = LinearOperator(lambda x: x.sum(1, keepdim=True), lambda y: y.expand(-1, 2) / 2)
    n = 300
    y = torch.full((n, 1), 1.5)
    x, info = solve_inverse_problem(gmm.score_fn(SDE), SDE, y, op, (n, 2), sigma_y=0.3, generator=gen(8))
    post = gmm.linear_gaussian_posterior(dense(op, (2,)), y[:1].double(), 0.3)
    assert (torch.sort(post.weights[0], descending=True).values[:2] > 0.2).all()
    assert_matches_posterior(x, post, gmm)


def test_noisy_deblurring_fits_the_measurement_to_the_noise_level():
    """``y = A x + sigma_y n`` with x from the prior: posterior samples ``x'`` given ``y`` make
    ``(x', y)`` distributed as ``(x, y)``, so ``y - A x'`` has the law of ``sigma_y n``: mean square
    ``sigma_y^2`` within 4 SE (``sigma_y^2 sqrt(2 / (n m))``, ``n m = 200 * 16`` residuals)."""
    gmm = sd.GaussianMixture.named("mix16")
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    op, n, sigma_y = CircularBlur(kernel, tol=1e-6), 200, 0.05
    x_true = gmm.sample(n, generator=gen(4))[0].reshape(n, 1, 4, 4)
    y = op(x_true) + sigma_y * torch.randn(n, 1, 4, 4, generator=gen(5))
    grid = make_grid(SDE, 100, "log-snr")
    x, info = solve_inverse_problem(gmm.score_fn(SDE), SDE, y, op, (n, 1, 4, 4), sigma_y=sigma_y, particles=32,
                                    grid=grid, generator=gen(6))
    ms = float(((y - op(x)) ** 2).mean())
    assert abs(ms / sigma_y**2 - 1) < N_SE * math.sqrt(2 / (n * 16)), ms / sigma_y**2
    assert info.nfe < info.particles * info.steps  # below the last observation time one particle continues


# -- the replacement method: available, fast, and biased ---------------------------------------------
def test_replacement_stays_available_and_its_bias_shows():
    """x_1 = 2 observed on the ring: the exact conditional puts 0.88 on the mode at angle 0; the
    replacement method (Euler-Maruyama, 500 steps) sends about half the samples to the heavier
    neighbours (measured 0.50-0.55 over seeds): far outside 4 SE (0.04 at n = 300)."""
    gmm = sd.GaussianMixture.named("ring2d")
    n = 300
    x_obs = torch.zeros(n, 2)
    x_obs[:, 0] = 2.0
    x, info = inpaint(gmm.score_fn(SDE), SDE, x_obs, torch.tensor([True, False]), method="replacement",
                      sampler="euler-maruyama", steps=500, generator=gen(7))
    assert isinstance(info, ConditionalInfo) and info.method == "replacement" and info.nfe == 500
    exact = float(gmm.conditional_weights(torch.tensor([[2.0]], dtype=torch.float64), [0])[0, 0])
    share = float((gmm.assign(x) == 0).double().mean())
    assert exact - share > N_SE * math.sqrt(exact * (1 - exact) / n) + 0.1


def test_replacement_colorization_is_the_decoupled_imputation_in_law():
    """For one Gaussian the replacement method is exact (the decoupled colour channels are
    independent of the gray one): PC, 200 steps, mean and spread within 4 SE (n = 400)."""
    gmm = pixel_mixture(1, seed=3)
    n = 400
    gray = to_gray(gmm.sample(1, generator=gen(1))[0].reshape(1, 3, 2, 2)).expand(n, 1, 2, 2)
    x, _ = colorize(gmm.score_fn(SDE), SDE, gray, method="replacement", steps=200, generator=gen(2))
    post = gmm.linear_gaussian_posterior(dense(Grayscale(3), (3, 2, 2)), gray[:1].reshape(1, -1).double())
    assert_matches_posterior(x, post, gmm)
    M = decoupling_matrix(3)
    torch.testing.assert_close(M @ M.T, torch.eye(3, dtype=torch.float64))


# -- bad input ----------------------------------------------------------------------------------------
def test_bad_input_raises_value_error():
    gmm = sd.GaussianMixture.named("ring2d")
    score, x = gmm.score_fn(SDE), torch.randn(4, 2)
    with pytest.raises(ValueError, match="mask"):
        inpaint(score, SDE, x, torch.ones(3, dtype=torch.bool), steps=2)
    with pytest.raises(ValueError, match="method"):
        inpaint(score, SDE, x, torch.tensor([True, False]), method="pc")
    with pytest.raises(ValueError, match="particles"):
        inpaint(score, SDE, x, torch.tensor([True, False]), particles=0)
    with pytest.raises(ValueError, match="sigma_y"):
        inpaint(score, SDE, x, torch.tensor([True, False]), sigma_y=-1.0)
    with pytest.raises(ValueError, match="replacement"):
        inpaint(score, SDE, x, torch.tensor([True, False]), eta=1.0)
    with pytest.raises(ValueError, match="y must have shape"):
        solve_inverse_problem(score, SDE, torch.zeros(4, 1, 2, 2), AveragePool(2), (4, 1, 2, 2), steps=2)
    with pytest.raises(ValueError, match="channels"):
        Grayscale(1)
