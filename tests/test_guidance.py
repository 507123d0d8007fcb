"""Controllable generation checked against the Gaussian-mixture oracle.

Closed-form identities (the guided score with the exact posterior is the component score; the
reconstruction-guided score of a Gaussian is the exact conditional score; the decoupling matrix
is orthogonal) are checked to float64 round-off. Sampling tests compare with exact samples of
the target through the sliced-W2 noise floor (the spread of SW between independent exact sets of
the same size) and mode shares against their binomial standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.guidance import (
    AveragePool,
    CircularBlur,
    Mask,
    cfg_score,
    cfg_score_from_model,
    classifier_guided_score,
    colorize,
    decoupling_matrix,
    inpaint,
    mixture_log_posterior,
    projection_callback,
    reconstruction_guided_score,
    solve_inverse_problem,
    to_gray,
)
from scoresde.losses import LabelDropout, NoisyClassifierLoss
from scoresde.metrics import sliced_wasserstein

SDE = sd.VPSDE()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sw_floor(draw, n: int, reps: int = 20) -> float:
    """Noise-floor bound of sliced-W2 at sample size ``n`` from ``reps`` pairs of independent exact
    sample sets (``draw(n, generator)``): ``max(mean + 4 sd, 1.1 mean)``.

    An unbiased sampler's SW is one more draw of that distribution (on the ring: mean 0.022, sd
    0.004, max 0.033 over 30 pairs), so ``mean + 4 sd`` leaves room for its skewed tail. In 64-D
    the SW concentrates (sd about 3% of the mean) and the floor of a finite-step sampler sits a
    few sd above it; ``1.1 mean`` allows a sampler error below half the Monte-Carlo noise
    (squared SWs add: ``sqrt(1 + 0.45^2) = 1.1``). Wrong samples exceed both by far."""
    vals = torch.tensor([sliced_wasserstein(draw(n, gen(100 + r)), draw(n, gen(200 + r)), generator=gen(r))
                         for r in range(reps)])
    return float(max(vals.mean() + 4 * vals.std(), 1.1 * vals.mean()))


def component_draw(gmm: sd.GaussianMixture, k: int):
    comp = gmm.component(k)
    return lambda n, g: comp.sample(n, generator=g)[0]


# -- classifier guidance ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ring2d", "mix64"])
def test_exact_posterior_guidance_is_the_component_score(name):
    """``s + grad log p_t(k | x) = grad log N_k,t``: Bayes' rule, exact in float64; also under
    ``inference_mode`` (the gradient is taken in a local autograd context)."""
    gmm = sd.GaussianMixture.named(name)
    x = 2.0 * torch.randn(64, gmm.dim, generator=gen(0), dtype=torch.float64)
    t = torch.rand(64, generator=gen(1), dtype=torch.float64) * 0.9 + 0.05
    guided = classifier_guided_score(gmm.score_fn(SDE), mixture_log_posterior(gmm, SDE), 3, 1.0)
    with torch.inference_mode():
        out = guided(x, t)
    torch.testing.assert_close(out, gmm.score_fn(SDE, label=3)(x, t), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,k", [("ring2d", 2), ("mix64", 4)])
@pytest.mark.parametrize("method,steps", [("pc", 100), ("dpm-solver++", 25)])
def test_classifier_guided_sampling_hits_component(name, k, method, steps):
    """Acceptance: exact posterior as the classifier, w = 1 -> samples of component k."""
    gmm = sd.GaussianMixture.named(name)
    n = 500
    guided = classifier_guided_score(gmm.score_fn(SDE), mixture_log_posterior(gmm, SDE), k, 1.0)
    x, info = sd.sample(guided, SDE, shape=(n, gmm.dim), method=method, steps=steps, generator=gen(5))
    assert info.nfe > 0
    assert (gmm.assign(x) == k).float().mean() >= 0.97
    ref = component_draw(gmm, k)(n, gen(6))
    assert sliced_wasserstein(x, ref, generator=gen(7)) <= sw_floor(component_draw(gmm, k), n)


# -- classifier-free guidance -----------------------------------------------------------------------
def overlapping_pair() -> sd.GaussianMixture:
    """Two overlapping 2-D modes (means 0.8 apart, std 0.5): a share of ~0.77 without guidance,
    so the effect of the guidance scale on the share is measurable."""
    return sd.GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-0.4, 0.0], [0.4, 0.0]]),
                              torch.full((2, 2), 0.5))


def test_cfg_scale_zero_is_the_conditional_score():
    gmm = sd.GaussianMixture.named("ring2d")
    x, t = torch.randn(16, 2, dtype=torch.float64), torch.full((16,), 0.3, dtype=torch.float64)
    cond, uncond = gmm.score_fn(SDE, label=1), gmm.score_fn(SDE)
    torch.testing.assert_close(cfg_score(cond, uncond, 0.0)(x, t), cond(x, t))
    torch.testing.assert_close(cfg_score(cond, uncond, 2.0)(x, t), 3 * cond(x, t) - 2 * uncond(x, t))


def test_cfg_sampling_w0_at_floor_and_share_grows_with_w():
    gmm = overlapping_pair()
    n, k = 2000, 1
    shares = []
    for w in (0.0, 1.0, 3.0):
        score = cfg_score(gmm.score_fn(SDE, label=k), gmm.score_fn(SDE), w)
        x, _ = sd.sample(score, SDE, shape=(n, 2), method="dpm-solver++", steps=25, generator=gen(11))
        shares.append(float((gmm.assign(x) == k).float().mean()))
        if w == 0.0:
            ref = component_draw(gmm, k)(n, gen(12))
            assert sliced_wasserstein(x, ref, generator=gen(13)) <= sw_floor(component_draw(gmm, k), n)
    # the same noise drives each run, so the shares are paired; guidance must not lower them, and
    # here it raises them by far more than the binomial standard error sqrt(0.2 * 0.8 / 2000) = 0.009
    assert shares[0] <= shares[1] <= shares[2]
    assert shares[2] - shares[0] > 0.05


class OracleEpsNet(torch.nn.Module):
    """An eps-network built from the oracle: label ``K`` (the null label) is the unconditional model."""

    def __init__(self, gmm: sd.GaussianMixture) -> None:
        super().__init__()
        self.gmm, self.calls = gmm, 0

    def forward(self, x, t, labels=None):
        self.calls += 1
        comp = self.gmm.component_scores(x, t, SDE)[torch.arange(x.shape[0]), labels.clamp_max(self.gmm.num_components - 1)]
        score = torch.where((labels == self.gmm.num_components)[:, None], self.gmm.score(x, t, SDE), comp)
        return -SDE.sigma(t)[:, None] * score


def test_cfg_from_one_network_batches_both_scores():
    gmm = sd.GaussianMixture.named("ring2d")
    net = OracleEpsNet(gmm)
    x, t = torch.randn(8, 2, dtype=torch.float64), torch.full((8,), 0.4, dtype=torch.float64)
    out = cfg_score_from_model(net, SDE, labels=5, scale=2.0, null_label=8)(x, t)
    assert net.calls == 1
    torch.testing.assert_close(out, cfg_score(gmm.score_fn(SDE, label=5), gmm.score_fn(SDE), 2.0)(x, t))


def test_label_dropout_rate_and_null_label():
    seen = {}

    def spy_loss(model, x0, labels, generator=None):
        seen["labels"] = labels
        return torch.zeros(())

    n, p = 4000, 0.2
    LabelDropout(spy_loss, null_label=10, p_uncond=p)(None, torch.zeros(n, 2), torch.full((n,), 3), gen(0))
    labels = seen["labels"]
    assert set(labels.unique().tolist()) == {3, 10}
    # binomial standard error sqrt(p (1 - p) / n) = 0.0063; 4 of them
    assert abs(float((labels == 10).float().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)


# -- the noise-conditional classifier loss --------------------------------------------------------
def test_classifier_loss_perturbs_with_the_kernel_and_rewards_the_exact_posterior():
    gmm = sd.GaussianMixture.named("ring2d")
    x0, labels = gmm.sample(4000, generator=gen(1), dtype=torch.float64)
    loss = NoisyClassifierLoss(SDE)
    seen = {}

    def spy(x, t):
        seen["x"], seen["t"] = x, t
        return torch.zeros(x.shape[0], gmm.num_components, dtype=x.dtype)

    uniform = loss(spy, x0, labels, gen(2))
    assert abs(float(uniform) - math.log(8)) < 1e-9  # uniform logits: cross-entropy log K exactly
    t = seen["t"]
    assert SDE.eps <= float(t.min()) and float(t.max()) <= SDE.T
    z = (seen["x"] - SDE.alpha(t)[:, None] * x0) / SDE.sigma(t)[:, None]
    # noise moments of 8000 N(0, 1) draws: standard errors 0.011 (mean) and 0.016 (variance)
    assert abs(float(z.mean())) < 0.05 and abs(float(z.var()) - 1) < 0.07
    exact = loss(mixture_log_posterior(gmm, SDE), x0, labels, gen(2))
    assert float(exact) < math.log(8) - 0.5  # the Bayes classifier beats chance by a wide margin


# -- inpainting -------------------------------------------------------------------------------------
def test_inpainting_mix64_half_observed_matches_exact_conditional():
    """Replacement (an explicit option) through PC (400 steps: at 100-200 steps its discretisation error shows as
    SW a few sd above the floor)."""
    gmm = sd.GaussianMixture.named("mix64")
    n, obs = 500, list(range(32))
    x_true, _ = gmm.sample(n, generator=gen(3))
    mask = torch.zeros(64, dtype=torch.bool)
    mask[obs] = True
    x, info = inpaint(gmm.score_fn(SDE), SDE, x_true, mask, method="replacement", sampler="pc", steps=400, generator=gen(4))
    assert torch.equal(x[:, mask], x_true[:, mask]) and info.nfe > 0
    miss = gmm.missing_dims(obs)
    draw = lambda m, g: gmm.sample_conditional(x_true[:m, obs], obs, generator=g)
    assert sliced_wasserstein(x[:, miss], draw(n, gen(5)), generator=gen(6)) <= sw_floor(draw, n)
    expected = gmm.conditional_weights(x_true[:, obs].double(), obs).mean(0)
    shares = torch.bincount(gmm.assign(x), minlength=10).double() / n
    # the acceptance bound; the posterior over modes is near-certain, so each sample's mode is
    # nearly fixed by its test point (measured 0.002-0.012 over seeds)
    assert (shares - expected).abs().max() <= 0.02


def test_projection_callback_replaces_observed_entries_by_the_diffused_data():
    x_obs = torch.randn(4, 3, 5, 5, generator=gen(0))
    mask = torch.rand(3, 5, 5, generator=gen(1)) > 0.5
    op = Mask(mask)
    op.check(x_obs)
    x = torch.randn(4, 3, 5, 5, generator=gen(2))
    t = torch.tensor(0.5)
    out = projection_callback(SDE, op(x_obs), op, gen(3))(0, t, x)
    z = torch.randn(x.shape, generator=gen(3))
    expected = torch.where(mask, SDE.alpha(t) * x_obs + SDE.sigma(t) * z, x)
    torch.testing.assert_close(out, expected)


def test_average_pool_pseudo_inverse():
    op = AveragePool(2)
    x = torch.randn(3, 2, 4, 6, generator=gen(0), dtype=torch.float64)
    y = op(x)
    assert y.shape == (3, 2, 2, 3)
    torch.testing.assert_close(op(op.pinv(y)), y)  # A A^+ = I
    p = op.pinv(op(x))
    torch.testing.assert_close(op.pinv(op(p)), p)  # A^+ A idempotent
    v = torch.randn_like(x)
    # symmetric: <P x, v> = <x, P v>
    torch.testing.assert_close((p * v).sum(), (x * op.pinv(op(v))).sum())
    torch.testing.assert_close(op(op.project(v, y)), y)


def test_circular_blur_pseudo_inverse():
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64) / 16
    op = CircularBlur(kernel, tol=0.05)
    x = torch.randn(2, 1, 6, 6, generator=gen(0), dtype=torch.float64)
    # the forward map is the circular convolution, written out with rolls
    direct = sum(kernel[i, j] * x.roll((1 - i, 1 - j), dims=(-2, -1)) for i in range(3) for j in range(3))
    torch.testing.assert_close(op(x), direct)
    p = op.pinv(op(x))
    torch.testing.assert_close(op.pinv(op(p)), p)  # A^+ A idempotent
    v = torch.randn_like(x)
    torch.testing.assert_close((p * v).sum(), (x * op.pinv(op(v))).sum())  # and symmetric
    torch.testing.assert_close(op(op.pinv(op(p))), op(p))  # A A^+ A = A


@pytest.mark.parametrize("sigma_y", [0.0, 0.3])
def test_reconstruction_guidance_is_exact_for_a_gaussian(sigma_y):
    """For isotropic Gaussian data ``N(mu, c^2 I)`` the posterior p(x0 | x_t) is Gaussian with
    variance r_t^2, so ``s + grad log N(y; A x0_hat, sigma_y^2 + r_t^2)`` is the exact score of
    ``p_t(x_t | y)`` for ``y = A x0 + sigma_y n``: on an observed coordinate
    ``-(x - alpha m) / (alpha^2 v + sigma^2)`` with ``(m, v)`` the posterior of x0_i given y_i
    (``m = y``, ``v = 0`` when sigma_y = 0), on a missing one the marginal score."""
    c, mu = 0.7, torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
    gmm = sd.GaussianMixture(torch.ones(1), mu, torch.full((1, 3), c, dtype=torch.float64))
    mask = torch.tensor([True, False, True])
    y = Mask(mask)(torch.tensor([[1.0, 0.0, -0.5]], dtype=torch.float64).expand(5, 3))
    x, t = torch.randn(5, 3, generator=gen(0), dtype=torch.float64), torch.full((5,), 0.35, dtype=torch.float64)
    with torch.inference_mode():  # a sampler's context must not break the inner autograd
        out = reconstruction_guided_score(gmm.score_fn(SDE), SDE, y, Mask(mask), 1.0, sigma_y, data_std=c)(x, t)
    a, s = SDE.alpha(t)[:, None], SDE.sigma(t)[:, None]
    if sigma_y == 0.0:
        m, v = y, torch.zeros_like(y)
    else:
        v = torch.full_like(y, 1 / (1 / c**2 + 1 / sigma_y**2))
        m = v * (mu / c**2 + y / sigma_y**2)
    expected = torch.where(mask, -(x - a * m) / (a**2 * v + s**2), gmm.score(x, t, SDE))
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_super_resolution_of_a_gaussian_matches_the_exact_conditional():
    """y = 2x2 block means of images from N(mu, c^2 I). A^+ A projects orthogonally on
    block-constant images, so for isotropic data the complement ``(I - A^+ A) x`` is independent
    of y with law N((I - P) mu, c^2 (I - P)): the projection method is exact here. Checked:
    ``A x = y`` exactly, and the complement's per-pixel mean and variance (1000 samples: standard
    errors about 0.02 and 0.01; bounds at 5 of them, plus the sampler's small bias)."""
    c = 0.5
    mu = torch.randn(1, 4, 4, generator=gen(0), dtype=torch.float64)
    gmm = sd.GaussianMixture(torch.ones(1), mu.reshape(1, -1), torch.full((1, 16), c, dtype=torch.float64))
    op, n = AveragePool(2), 1000
    x_true = gmm.sample(n, generator=gen(1))[0].reshape(n, 1, 4, 4)
    y = op(x_true)
    x, info = solve_inverse_problem(gmm.score_fn(SDE), SDE, y, op, (n, 1, 4, 4), method="replacement", steps=200, generator=gen(2))
    torch.testing.assert_close(op(x), y, rtol=1e-5, atol=1e-5)
    rest = x - op.pinv(op(x))
    mean_rest = (mu - op.pinv(op(mu[None])))[0].float()
    var_rest = c**2 * 3 / 4  # diagonal of c^2 (I - P): each 2x2 block loses 1/4 of the variance
    assert (rest.mean(0) - mean_rest).abs().max() < 5 * math.sqrt(var_rest / n)
    assert (rest.var(0) / var_rest - 1).abs().max() < 5 * math.sqrt(2 / n) + 0.05


# -- colorization -----------------------------------------------------------------------------------
def pixel_isotropic_mixture(k: int, seed: int) -> tuple[sd.GaussianMixture, sd.GaussianMixture]:
    """A mixture of ``k`` components on images (3, 2, 2) with one std per pixel shared by the 3
    channels, and the same mixture seen in the decoupled space ``u = M x``: rotating the channels
    keeps each component diagonal, so the decoupled mixture is again a GaussianMixture."""
    g = gen(seed)
    stds = (0.15 + 0.2 * torch.rand(k, 1, 2, 2, generator=g, dtype=torch.float64)).expand(k, 3, 2, 2).reshape(k, -1)
    means = torch.randn(k, 3, 2, 2, generator=g, dtype=torch.float64)
    weights = torch.arange(1, k + 1, dtype=torch.float64)
    rotated_means = torch.einsum("ij,kjhw->kihw", decoupling_matrix(3), means).reshape(k, -1)
    return sd.GaussianMixture(weights, means.reshape(k, -1), stds), sd.GaussianMixture(weights, rotated_means, stds)


def test_colorization_of_a_gaussian_matches_the_exact_conditional():
    """One component: the decoupled color channels are independent of the gray one, so the
    replacement method is exact and only the sampler's error remains (PC, 200 steps)."""
    gmm, rotated = pixel_isotropic_mixture(1, seed=3)
    n = 800
    gray = to_gray(gmm.sample(n, generator=gen(1))[0].reshape(n, 3, 2, 2))
    x, _ = colorize(gmm.score_fn(SDE), SDE, gray, method="replacement", steps=200, generator=gen(2))
    u_obs = (math.sqrt(3) * gray).reshape(n, 4)
    draw = lambda m, g: rotated.sample_conditional(u_obs[:m], list(range(4)), generator=g)
    u = torch.einsum("ij,bjhw->bihw", decoupling_matrix(3).float(), x).reshape(n, -1)[:, 4:]
    assert sliced_wasserstein(u, draw(n, gen(3)), generator=gen(4)) <= sw_floor(draw, n)


# -- command-line helpers ----------------------------------------------------------------------------
def test_make_mask_kinds(tmp_path):
    from PIL import Image

    from scoresde.cli.guidance import make_mask

    half = make_mask("half", (1, 8, 8))
    assert half[:, :4].all() and not half[:, 4:].any()
    box = make_mask("box", (3, 8, 8))
    assert (~box).sum() == 3 * 16 and not box[:, 2:6, 2:6].any()
    assert make_mask("half", (6,)).tolist() == [True] * 3 + [False] * 3
    png = tmp_path / "mask.png"
    Image.fromarray((torch.eye(4) * 255).byte().numpy()).save(png)  # 4x4, resized to 8x8
    from_png = make_mask(str(png), (2, 8, 8))
    assert from_png.shape == (2, 8, 8) and int(from_png.sum()) == 2 * 16 and from_png[:, 0, 1].all()
    with pytest.raises(ValueError, match="mask"):
        make_mask("nonsense", (1, 8, 8))


# -- bad input ----------------------------------------------------------------------------------------
def test_bad_input_raises_value_error():
    gmm = sd.GaussianMixture.named("ring2d")
    score, logp = gmm.score_fn(SDE), mixture_log_posterior(gmm, SDE)
    x, t = torch.randn(4, 2), torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="scale"):
        classifier_guided_score(score, logp, 1, -1.0)
    with pytest.raises(ValueError, match="scale"):
        cfg_score(score, score, -0.5)
    with pytest.raises(ValueError, match="labels"):
        classifier_guided_score(score, logp, 8, 1.0)(x, t)  # 8 classes: 0..7
    with pytest.raises(ValueError, match="labels"):
        classifier_guided_score(score, logp, 9, 1.0, num_classes=8)
    with pytest.raises(ValueError, match="labels"):
        cfg_score_from_model(OracleEpsNet(gmm), SDE, labels=8, scale=1.0, null_label=8)
    with pytest.raises(ValueError, match="mask"):
        inpaint(score, SDE, x, torch.ones(3, dtype=torch.bool), steps=2)
    with pytest.raises(ValueError, match="p_uncond"):
        LabelDropout(lambda *a: 0, null_label=8, p_uncond=1.5)
    with pytest.raises(ValueError, match="y must have shape"):
        solve_inverse_problem(score, SDE, torch.zeros(4, 1, 2, 2), AveragePool(2), (4, 1, 2, 2), steps=2)


def test_cli_commands_end_to_end(tmp_path):
    """train (tiny, with a null label) -> train-classifier -> guide (both kinds) -> inpaint;
    colorize refuses gray data. Checks exit codes, files, the labels and the observed pixels."""
    import numpy as np

    from scoresde import cli
    from scoresde import config as C

    run, clf = str(tmp_path / "run"), str(tmp_path / "clf")
    tiny = ["model.nf=8", "training.steps=2", "training.batch_size=8", "training.checkpoint_every=2"]
    assert cli.main(["train", "digits-vp", *tiny, "model.num_classes=10", "model.null_class=true", "--out", run, "--quiet"]) == 0
    assert cli.main(["train-classifier", "digits-vp", *tiny, "--steps", "2", "--nf", "8", "--out", clf, "--quiet"]) == 0
    assert (tmp_path / "clf" / "accuracy.json").is_file()
    for kind in (["--cfg"], ["--classifier", clf]):
        png = tmp_path / f"guide{len(kind)}.png"
        assert cli.main(["guide", run, *kind, "--scale", "2", "-n", "20", "--steps", "2", "--out", str(png), "--quiet"]) == 0
        with np.load(png.with_suffix(".npz")) as arc:
            assert arc["x"].shape == (20, 1, 8, 8) and arc["labels"].tolist() == sorted(list(range(10)) * 2)
    png = tmp_path / "inpaint.png"
    assert cli.main(["inpaint", run, "--mask", "box", "-n", "3", "--steps", "3", "--out", str(png), "--quiet"]) == 0
    with np.load(png.with_suffix(".npz")) as arc:
        out, mask = torch.as_tensor(arc["inpainted"]), torch.as_tensor(arc["mask"])
    test = C.build_dataset(C.load_config("digits-vp"), "test").x[:3]
    assert mask.shape == (1, 8, 8) and int((~mask).sum()) == 16
    assert torch.equal(out[:, mask], test[:, mask])
    assert cli.main(["colorize", run, "-n", "2", "--out", str(tmp_path / "c.png"), "--quiet"]) == 2


def test_failed_classifier_training_leaves_no_trace(tmp_path, monkeypatch):
    """A failure inside training removes the folder it made; the same command then runs afresh and
    its log holds each step once (it appended to the failed run's log before)."""
    import json

    from scoresde import config as C
    from scoresde.cli.runs import train_classifier

    cfg = C.load_config("digits-vp", ["model.nf=8", "training.batch_size=8", "training.log_every=1"])
    out = tmp_path / "new" / "clf"
    fit = sd.Trainer.fit

    def failing_fit(self, steps):
        fit(self, 1)
        raise RuntimeError("killed")

    monkeypatch.setattr(sd.Trainer, "fit", failing_fit)
    with pytest.raises(RuntimeError, match="killed"):
        train_classifier(cfg, out, 2, progress=False, nf=8)
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(sd.Trainer, "fit", fit)
    train_classifier(cfg, out, 2, progress=False, nf=8)
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_cli_colorize_keeps_the_gray_image(tmp_path):
    import numpy as np

    from scoresde import cli

    x = np.random.RandomState(0).uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32)
    data, run, png = tmp_path / "rgb.npz", str(tmp_path / "run"), tmp_path / "c.png"
    np.savez(data, x=x)
    assert cli.main(["train", "digits-vp", "data.source=npz", f"data.path={data}", "model.in_channels=3", "model.nf=8",
                     "training.steps=2", "training.batch_size=8", "training.checkpoint_every=2", "--out", run, "--quiet"]) == 0
    assert cli.main(["colorize", run, "--input", str(data), "-n", "3", "--steps", "3", "--out", str(png), "--quiet"]) == 0
    with np.load(png.with_suffix(".npz")) as arc:
        out = torch.as_tensor(arc["colorized"])
    assert out.shape == (3, 3, 8, 8)
    torch.testing.assert_close(to_gray(out), to_gray(torch.as_tensor(x[:3])), rtol=1e-5, atol=1e-5)
    gray = tmp_path / "gray.npz"  # a 1-channel input: the colorized images keep it as their gray
    np.savez(gray, x=x[:2].mean(axis=1, keepdims=True))
    assert cli.main(["colorize", run, "--input", str(gray), "-n", "2", "--steps", "3", "--particles", "4",
                     "--out", str(png), "--quiet"]) == 0
    with np.load(png.with_suffix(".npz")) as arc:
        out = torch.as_tensor(arc["colorized"])
    torch.testing.assert_close(to_gray(out), torch.as_tensor(x[:2]).mean(1, keepdim=True), rtol=1e-5, atol=1e-5)
    assert cli.main(["restore", run, "--input", str(data), "--op", "avgpool:2", "--noise", "0.05", "-n", "2",
                     "--steps", "3", "--particles", "4", "--out", str(tmp_path / "r.png"), "--quiet"]) == 0
    with np.load(tmp_path / "r.npz") as arc:
        assert arc["restored"].shape == (2, 3, 8, 8) and arc["measured"].shape == (2, 3, 4, 4)
