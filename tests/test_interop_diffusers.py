"""diffusers models as scoresde runs: the SDE through the discrete chain, the DDIM loop against
diffusers' own, v-prediction, the VE score and predictor step, the run folder, the likelihood."""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.score import clip_denoised
from scoresde.interop.diffusers import DiffusersUNet, DiscreteVPSDE, import_pipeline, map_scheduler

diffusers = pytest.importorskip("diffusers")

SHAPE = (3, 8, 8)


def tiny_unet(fourier: bool = False) -> torch.nn.Module:
    """A random UNet2DModel of 8x8 RGB images (two levels, attention at the lower one); with
    ``fourier`` the NCSN++-style Gaussian-Fourier time embedding of the VE models."""
    torch.manual_seed(0)
    extra = {"time_embedding_type": "fourier", "flip_sin_to_cos": False} if fourier else {}
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), **extra).eval()


def save_pipeline(tmp_path, unet, scheduler, cls=None):
    """``save_pretrained`` of the pipeline (DDPM by default) into ``tmp_path/pipe``."""
    folder = tmp_path / "pipe"
    (cls or diffusers.DDPMPipeline)(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def in_float64(scheduler):
    """The scheduler with its coefficient tensors (the same float32 values) in float64, so that its
    step does float64 arithmetic on float64 states (diffusers keeps them in float32 otherwise)."""
    for name in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod"):
        if isinstance(getattr(scheduler, name, None), torch.Tensor):
            setattr(scheduler, name, getattr(scheduler, name).double())
    return scheduler


def diffusers_ddim(unet, scheduler, x_T: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' own DDIM loop (eta = 0, no clipping) from ``x_T``, with float64 coefficients for
    float64 states; returns ``(x_0, timesteps)``."""
    ddim = diffusers.DDIMScheduler.from_config(scheduler.config, clip_sample=False)
    if x_T.dtype == torch.float64:
        in_float64(ddim)
    ddim.set_timesteps(steps)
    x = x_T
    with torch.no_grad():
        for n in ddim.timesteps:
            x = ddim.step(unet(x, n).sample, n, x, eta=0.0).prev_sample
    return x, ddim.timesteps


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_sde_passes_through_every_discrete_step(schedule):
    scheduler = diffusers.DDPMScheduler(beta_schedule=schedule)
    sde = map_scheduler(scheduler).build_sde()
    abar = scheduler.alphas_cumprod.double()
    t = sde.step_time(torch.arange(len(abar)))
    # float64 rounding of log/sigmoid/sqrt: a few ulp
    torch.testing.assert_close(sde.alpha(t) ** 2, abar, rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.sigma(t) ** 2, 1 - abar, rtol=1e-13, atol=0)
    # between the steps: the drift and diffusion are the kernel's (central differences of the
    # cubic, error O(h^2) ~ 1e-12 relative, far below 1e-6) and g^2 > 0 (a monotone log-SNR)
    tt = torch.linspace(0.0013, 0.9987, 97, dtype=torch.float64)
    h = 1e-6
    torch.testing.assert_close(sde.dlog_snr(tt), (sde.log_snr(tt + h) - sde.log_snr(tt - h)) / (2 * h), rtol=1e-6, atol=0)
    assert (sde.g2(tt) > 0).all()
    # the inverse of the log-SNR (safeguarded Newton) lands back on the steps and between them
    for times in (t, tt):
        torch.testing.assert_close(sde.t_of_log_snr(sde.log_snr(times)), times, rtol=0, atol=1e-12)


def test_discrete_sde_rejects_bad_chains():
    with pytest.raises(ValueError, match="strictly decrease"):
        DiscreteVPSDE([0.9, 0.95, 0.5])
    with pytest.raises(ValueError, match="zero terminal SNR"):
        DiscreteVPSDE([0.9, 0.5, 0.0])


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ddim_matches_diffusers_loop(tmp_path, prediction, dtype):
    """A DDPMPipeline (epsilon) or DDIMPipeline (v, x0) folder, imported and sampled by scoresde."""
    ddpm = prediction == "epsilon"
    scheduler = (diffusers.DDPMScheduler if ddpm else diffusers.DDIMScheduler)(prediction_type=prediction)
    folder = save_pipeline(tmp_path, tiny_unet(), scheduler, None if ddpm else diffusers.DDIMPipeline)
    run = sd.load_run(import_pipeline(folder, tmp_path / "run"))
    assert run.sample_shape == SHAPE and run.config.model.name == "diffusers-unet2d"
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval().to(dtype)
    run.model.to(dtype)
    x_T = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(1), dtype=dtype)
    want, timesteps = diffusers_ddim(unet, scheduler, x_T, steps=10)
    # diffusers' last step goes to abar = 1 (its x0 prediction at step 0): scoresde's final
    # Tweedie step at t = 0; the grid is diffusers' timesteps 900, 800, ..., 0 at t = n / 999
    got, info = sd.sample(run.score_fn, run.sde, x_T=x_T, grid=run.sde.step_time(timesteps), method="ddim",
                          denoise=True)
    assert info.nfe == len(timesteps) == 10
    # The same arithmetic: in float64 the two agree to rounding (observed 1e-15 of max|x|; the
    # time n / 999 reaches the embedding, computed in float32, as exactly n).  In float32 diffusers
    # keeps its coefficients in float32 and the time reaches the network as n +- 6e-5: observed at
    # most 1e-6 of max|x|, and the bound 4e-6 is still 1e3 below what a wrong time map does
    # (timestep t N instead of t (N - 1): 3e-3 to 2e-2 of max|x|).
    tol = (1e-12 if dtype == torch.float64 else 4e-6) * want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=0, atol=tol)


@pytest.mark.parametrize("clip", [False, True])
def test_ancestral_matches_ddpm_loop(clip):
    """DDPM's own sampler (DDPMScheduler.step, posterior variance, every step of a 50-step chain)
    is scoresde's ancestral method (DDIM at eta = 1, the exact posterior) on the grid of its steps
    with the final Tweedie step, noise drawn in the same order from the same generator; diffusers'
    ``clip_sample`` (the imported run's ``sampling.clip_denoised``) is scoresde's clipped score."""
    dtype = torch.float64
    scheduler = in_float64(diffusers.DDPMScheduler(num_train_timesteps=50, clip_sample=clip))
    assert map_scheduler(scheduler).clip_sample == clip
    unet = tiny_unet().to(dtype)
    x_T = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(1), dtype=dtype)
    scheduler.set_timesteps(50)
    x, gen = x_T, torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n in scheduler.timesteps:
            x = scheduler.step(unet(x, n).sample, n, x, generator=gen).prev_sample
    score_fn, sde = sd.from_diffusers(unet, scheduler)
    if clip:  # the random net's x0 predictions leave [-1, 1] at most steps: the clip is exercised
        score_fn = clip_denoised(score_fn, sde, (-1.0, 1.0))
    got, info = sd.sample(score_fn, sde, x_T=x_T, grid=sde.step_time(scheduler.timesteps), method="ancestral",
                          denoise=True, generator=torch.Generator().manual_seed(7))
    assert info.nfe == 50
    # float64 rounding over 50 steps (observed 2e-14 of max|x|)
    torch.testing.assert_close(got, x, rtol=0, atol=1e-12 * x.abs().max().item())


def test_timestep_input_is_t_times_n_minus_1():
    """The network sees step n at t = n / (N - 1); one step off changes its output visibly."""
    unet, scheduler = tiny_unet(), diffusers.DDPMScheduler()
    score_fn, sde = sd.from_diffusers(unet, scheduler)
    x = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(2))
    n = torch.tensor([500, 500])
    t = sde.step_time(n).float()
    with torch.no_grad():
        eps = unet(x, n).sample
        got = score_fn(x, t)
        off = unet(x, n + 1).sample
    sigma = math.sqrt(1 - scheduler.alphas_cumprod[500].item())
    # s = -eps / sigma in float32 (the timestep 500.00003 differs from 500 by one float32 ulp)
    torch.testing.assert_close(got, -eps / sigma, rtol=1e-4, atol=1e-5)
    assert (off - eps).abs().max() > 1e-3 * eps.abs().max()


def test_ve_score_and_predictor_step_match_diffusers(tmp_path):
    scheduler = diffusers.ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0)
    folder = save_pipeline(tmp_path, tiny_unet(fourier=True), scheduler, diffusers.ScoreSdeVePipeline)
    run = sd.load_run(import_pipeline(folder, tmp_path / "run"))
    assert isinstance(run.sde, sd.VESDE) and (run.sde.sigma_min, run.sde.sigma_max) == (0.01, 50.0)
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    steps = 20
    scheduler.set_timesteps(steps)
    scheduler.set_sigmas(steps)
    x = 10 * torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # the score: ScoreSdeVePipeline's model output at its (t_i, sigma_i), float32; sigma(t_i) is
        # computed in float32 here and from float64 there, and the Fourier embedding (frequencies
        # ~ 2 pi 16) of log sigma carries the last-bit difference: observed 1e-6 of max|score|
        # (a wrong time input, t for sigma, changes the output by its own size)
        for i in (0, 7, 19):
            t, sigma = scheduler.timesteps[i], scheduler.sigmas[i]
            want = unet(x, sigma * torch.ones(2)).sample
            torch.testing.assert_close(run.score_fn(x, t.expand(2)), want, rtol=0, atol=1e-5 * want.abs().max().item())
        # one predictor step from level j: diffusers' step_pred (discrete sigmas j -> j - 1) and
        # scoresde's reverse diffusion from t = j / (steps - 1) to (j - 1) / (steps - 1), both with
        # the network at sigma_j and the same noise draw
        i = 5
        j = steps - 1 - i
        out = unet(x, scheduler.discrete_sigmas[j] * torch.ones(2)).sample
        want = scheduler.step_pred(out, scheduler.timesteps[i], x, generator=torch.Generator().manual_seed(4)).prev_sample
    grid = torch.tensor([j, j - 1], dtype=torch.float64) / (steps - 1)
    got, info = sd.sample(run.score_fn, run.sde, x_T=x, grid=grid, method="reverse-diffusion",
                          generator=torch.Generator().manual_seed(4))
    assert info.nfe == 1
    # float32: diffusers' discrete sigmas exp(linspace(log)) and scoresde's float64 kernel agree to
    # float32 rounding (5.3156567 vs 5.31565572 at j = 14); observed 2e-7 of max|x|
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_log_likelihood_of_imported_run(tmp_path):
    """``sd.log_likelihood`` with its defaults on an imported run: the divergence's VJPs run through
    the whole UNet (GroupNorm under vmap), whose output layer is zeroed so that the answer is closed
    form: a zero eps-prediction is a zero score, the flow is ``dx/dt = f(t) x`` and
    ``log p_eps(x) = -D/2 log(2 pi sigma_T^2) + D log(alpha_T / alpha_eps)`` for every ``x`` (the
    corrected prior's line integral cancels the Gaussian's quadratic term)."""
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8,),
                                 layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D",),
                                 up_block_types=("UpBlock2D",))
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.zero_()
    run = sd.load_run(import_pipeline(save_pipeline(tmp_path, unet, diffusers.DDPMScheduler()), tmp_path / "run"))
    x = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(5)) * 2 - 1
    logp, info = sd.log_likelihood(run.score_fn, run.sde, x)
    assert logp.shape == (2,) and torch.isfinite(logp).all() and info.nfe > 0
    dim = math.prod(SHAPE)
    t_end, t_eps = torch.tensor(1.0, dtype=torch.float64), torch.tensor(run.sde.eps, dtype=torch.float64)
    want = -dim / 2 * math.log(2 * math.pi * run.sde.sigma(t_end).item() ** 2) + dim * math.log(
        run.sde.alpha(t_end).item() / run.sde.alpha(t_eps).item())
    # the default solver tolerance (1e-3 per dimension of the log-density) bounds the local error;
    # on this linear flow the observed error is 6e-7 nats/dim
    assert (logp - want).abs().max().item() / dim < 1e-4


def test_import_refuses_what_it_cannot_read(tmp_path):
    folder = save_pipeline(tmp_path, tiny_unet(), diffusers.DDPMScheduler())
    import_pipeline(folder, tmp_path / "run")
    with pytest.raises(ValueError, match="already holds a run"):
        import_pipeline(folder, tmp_path / "run")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="safetensors"):
        import_pipeline(folder, tmp_path / "run2")
    with pytest.raises(FileNotFoundError, match="save_pretrained folder"):
        import_pipeline(tmp_path / "run", tmp_path / "run3")
    with pytest.raises(ValueError, match="prediction_type"):
        map_scheduler(diffusers.DDPMScheduler(prediction_type="flow"))


def test_wrapper_rejects_unknown_time_input():
    with pytest.raises(ValueError, match="time_input"):
        DiffusersUNet(sd.VESDE(), tiny_unet(), time_input="t")
    with pytest.raises(ValueError, match="discrete chain"):
        DiffusersUNet(sd.VPSDE(), tiny_unet(), time_input="timestep")


def test_cli_import_then_sample(tmp_path, capsys):
    from scoresde import cli
    from PIL import Image

    folder = save_pipeline(tmp_path, tiny_unet(), diffusers.DDPMScheduler())
    run_dir = tmp_path / "run"
    assert cli.main(["--quiet", "import", "diffusers", str(folder), "--out", str(run_dir)]) == 0
    assert "DiscreteVPSDE" in capsys.readouterr().out
    assert cli.main(["--quiet", "sample", str(run_dir), "-n", "2", "--steps", "3", "--out", str(tmp_path / "s.png")]) == 0
    assert "2 samples" in capsys.readouterr().out
    with Image.open(tmp_path / "s.png") as im:
        assert im.width >= 8 and im.height >= 8
    # a second import into the same folder is refused (exit status 2, one line on stderr)
    assert cli.main(["--quiet", "import", "diffusers", str(folder), "--out", str(run_dir)]) == 2
    assert "already" in capsys.readouterr().err
