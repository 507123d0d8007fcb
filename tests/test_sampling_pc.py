"""The reverse-SDE samplers of ``sampling/pc.py`` against closed forms: a non-linear SDE whose
stationary law is known (from the front door, Euler--Maruyama, PC with Langevin and SRA1), and
SRA1's step-size limit on VE (the growth factor in closed form, the warning, and what it warns of
on the ring oracle)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import scoresde as sd
from scoresde.sampling import make_grid
from scoresde.sampling.pc import SRK_MAX_GROWTH, srk_growth

K_SE = 4.0  # Monte-Carlo checks at 4 standard errors: false-failure probability 6e-5 per check


# -- a non-linear SDE with a known stationary law ---------------------------------------------------
class DoubleWell(sd.SDE):
    """Overdamped Langevin ``dx = -U'(x) dt + sqrt(2) dw`` per coordinate, ``U = (x^2 - 1)^2``: its
    stationary law is ``pi ∝ exp(-U)``, so started at ``pi`` every marginal is ``pi`` and the exact
    score is ``-U'(x) = -4 x (x^2 - 1)`` at every time.  (The prior is never used: ``x_T`` ~ pi.)"""

    def drift(self, x, t):
        return -4 * x * (x**2 - 1)

    def g(self, t):
        return math.sqrt(2) * torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    @property
    def prior_std(self):
        return 1.0


def stationary_score(x, t):
    return -4 * x * (x**2 - 1)


U_GRID = torch.linspace(-4.0, 4.0, 400_001, dtype=torch.float64)  # pi(±4) = e^-225: no mass outside
PI = torch.exp(-((U_GRID**2 - 1) ** 2))
PI_CDF = torch.cumsum(PI, 0) / PI.sum()


def pi_moment(f) -> float:
    """``E_pi[f]`` by the trapezoidal rule on 4e5 points (error far below 1e-9 for these smooth f)."""
    return float(torch.trapezoid(f(U_GRID) * PI, U_GRID) / torch.trapezoid(PI, U_GRID))


def pi_draws(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` exact draws of ``pi`` by the inverse of the tabulated CDF (linear interpolation at a
    spacing of 2e-5: quantile error ~1e-10)."""
    q = torch.rand(n, generator=generator, dtype=torch.float64)
    i = torch.searchsorted(PI_CDF, q).clamp(1, len(U_GRID) - 1)
    c0, c1 = PI_CDF[i - 1], PI_CDF[i]
    return U_GRID[i - 1] + (q - c0) / (c1 - c0) * (U_GRID[i] - U_GRID[i - 1])


STATS = {"x^2": lambda x: x**2, "x^4": lambda x: x**4, "P(|x| < 1/2)": lambda x: (x.abs() < 0.5).double()}


def test_stationary_moments_are_right():
    """The quadrature against an identity of pi: integrating ``U'(x) x`` by parts gives
    ``E[x U'] = 1``, i.e. ``E[x^4] = E[x^2] + 1/4``."""
    assert pi_moment(lambda x: x**4) == pytest.approx(pi_moment(lambda x: x**2) + 0.25, abs=1e-9)


def stationary_misfit(x: torch.Tensor) -> dict[str, float]:
    """Per statistic of :data:`STATS`: (sample mean - E_pi) in standard errors of the sample mean."""
    x = x.flatten().double()
    return {k: (float(f(x).mean()) - pi_moment(f)) / (float(f(x).std()) / math.sqrt(x.numel())) for k, f in STATS.items()}


# Steps per method: the discretisation bias (O(h) for EM and the Langevin corrector, O(h^2) weak for
# SRA1) measured at 2e5 draws is at most 0.85, 0.3 and 0.65 standard errors of these 1e4-draw checks
# (EM 500 steps, SRA1 100, PC 500 with snr 0.05, whose Langevin step e ~ 1e-3 has an ULA bias of
# ~e / (2 Var) = 0.06%); at snr 0.16 the corrector's bias alone is 1.4-1.9 standard errors.
NONLINEAR = {
    "euler-maruyama": {"method": "euler-maruyama", "steps": 500},
    "srk": {"method": "srk", "steps": 100},
    "pc-langevin": {"method": "pc", "steps": 500, "snr": 0.05},
}


@pytest.mark.parametrize("case", list(NONLINEAR))
def test_nonlinear_sde_from_the_front_door_keeps_its_stationary_law(case):
    """``sd.sample(score, DoubleWell(), ...)``: the reverse SDE of a stationary diffusion with the exact
    score is the same Langevin dynamics, so from ``x_T ~ pi`` the samples must follow ``pi``:
    E[x^2], E[x^4] and the mass between the wells within K_SE standard errors (1e4 draws)."""
    gen = torch.Generator().manual_seed(0)
    x_T = pi_draws(10_000, gen).reshape(5000, 2)
    x, info = sd.sample(stationary_score, DoubleWell(), x_T=x_T, generator=gen, **NONLINEAR[case])
    misfit = stationary_misfit(x)
    assert all(abs(v) < K_SE for v in misfit.values()), misfit
    assert info.grid[0] == 1.0 and info.grid[-1] == DoubleWell().eps  # time-uniform: no log-SNR here


def test_the_stationary_check_can_fail():
    """Half the score (a sampler that mis-scales ``g^2 s``) cancels the drift of the reverse
    dynamics: pure diffusion, the variance grows by 2 over the run, far outside the tolerance."""
    gen = torch.Generator().manual_seed(0)
    x_T = pi_draws(10_000, gen).reshape(5000, 2)
    x, _ = sd.sample(lambda x, t: 0.5 * stationary_score(x, t), DoubleWell(), x_T=x_T, generator=gen,
                     method="euler-maruyama", steps=200)
    assert max(abs(v) for v in stationary_misfit(x).values()) > 10 * K_SE


@pytest.mark.parametrize("options", [{"method": "ddim"}, {"method": "heun"}, {"method": "ancestral"},
                                     {"method": "pc", "predictor": "ancestral"}, {"method": "euler-maruyama", "denoise": True}])
def test_methods_that_need_a_kernel_name_the_ones_that_do_not(options):
    with pytest.raises(ValueError, match="LinearSDE"):
        sd.sample(stationary_score, DoubleWell(), (4, 2), steps=3, **options)


# -- SRA1's step-size limit --------------------------------------------------------------------------
def test_srk_growth_equals_its_closed_form_on_ve():
    """On VE ``f = 0`` and ``g^2 / sigma^2 = 2 log(sigma_max/sigma_min)``, so each step's drift factor is
    ``z = -2 h_lambda`` and SRA1 multiplies by ``R = 1 + z + z^2/2`` while the marginal's std shrinks by
    ``e^{-h_lambda}``: the growth is ``prod max(1, R e^{h_lambda})`` over the steps after the first that
    start at ``lambda <= 0`` (``sigma >= 1``)."""
    sde = sd.VESDE(0.01, 50.0)
    for steps in (8, 10, 12, 15, 30):
        grid = make_grid(sde, steps, "time-uniform")
        h = math.log(50.0 / 0.01) * float(grid[0] - grid[1])  # log-SNR step (uniform in t)
        growth = max(1.0, (1 - 2 * h + 2 * h**2) * math.exp(h))
        noisy = int((sde.sigma(grid[1:-1]) >= 1).sum())  # steps 1.. that start at sigma >= 1
        assert srk_growth(sde, grid) == pytest.approx(growth**noisy, rel=1e-9)


@pytest.mark.parametrize("sde", [sd.VESDE(), sd.VESDE(0.01, 80.0), sd.VPSDE(), sd.SubVPSDE(), sd.RectifiedFlow(),
                                 sd.CosineVPSDE()], ids=lambda s: type(s).__name__)
def test_srk_default_grid_is_within_its_step_limit(sde):
    """The method table's 100 log-SNR steps never trigger the warning (growth 1: no step amplifies)."""
    assert srk_growth(sde, make_grid(sde, 100, "log-snr")) < SRK_MAX_GROWTH


def within_mode_std(x: torch.Tensor, ring: sd.GaussianMixture) -> float:
    x = x.double()
    return float(((x - ring.means[ring.assign(x)]) ** 2).mean().sqrt())


def test_srk_warns_on_coarse_ve_grids_and_the_warning_is_real():
    """10 log-SNR steps on ``VESDE(0.01, 50)`` grow deviations ~9x: srk warns, and its within-mode std
    on the ring is over 3x the true ``sqrt(0.2^2 + sigma_min^2) = 0.2002`` (1.7 measured).  At 50 steps
    it stays silent and the std is right within 4 standard errors (relative s.e. of a std from
    2 x 4000 residuals: 1/sqrt(2 x 8000) = 0.8%) plus the scheme's bias at 50 steps (1.6%, measured
    against 0.2% at 100 steps)."""
    ring, sde = sd.GaussianMixture.named("ring2d"), sd.VESDE()
    true_std = math.sqrt(0.2**2 + 0.01**2)
    with pytest.warns(RuntimeWarning, match="srk.*too coarse"):
        x, _ = sd.sample(ring.score_fn(sde), sde, (4000, 2), method="srk", steps=10,
                         generator=torch.Generator().manual_seed(0))
    assert within_mode_std(x, ring) > 3 * true_std
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, _ = sd.sample(ring.score_fn(sde), sde, (4000, 2), method="srk", steps=50,
                         generator=torch.Generator().manual_seed(0))
    assert within_mode_std(x, ring) == pytest.approx(true_std, rel=K_SE * 0.008 + 0.016)
