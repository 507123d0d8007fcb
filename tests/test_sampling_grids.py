"""Schedules as data: end points, monotonicity and the closed forms of each spacing."""

from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.sampling import grids

SDES = [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE(), sd.RectifiedFlow(), sd.CosineVPSDE()]


def lam(sde, t):
    return sde.log_snr(torch.as_tensor(t, dtype=torch.float64))


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("schedule", list(grids.SCHEDULES))
def test_grids_run_from_t_max_to_eps_strictly_decreasing(sde, schedule):
    g = grids.make_grid(sde, 13, schedule)
    assert g.dtype == torch.float64 and g.shape == (14,)
    assert float(g[0]) == grids.default_t_max(sde) and float(g[-1]) == sde.eps
    assert (g[1:] < g[:-1]).all()
    assert torch.isfinite(lam(sde, g)).all()


def test_rectified_flow_starts_short_of_its_singular_end():
    rf = sd.RectifiedFlow()
    assert grids.default_t_max(rf) == pytest.approx(1 - rf.eps)
    assert grids.default_t_max(sd.VPSDE()) == 1.0


@pytest.mark.parametrize("sde", SDES[:4], ids=lambda s: type(s).__name__)
def test_log_snr_grid_is_uniform_in_lambda(sde):
    steps = lam(sde, grids.log_snr_uniform(sde, 10)).diff()
    torch.testing.assert_close(steps, steps.mean().expand(10), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("sde", SDES[:4], ids=lambda s: type(s).__name__)
def test_karras_grid_is_uniform_in_nsr_to_the_one_over_rho(sde):
    nsr = torch.exp(-lam(sde, grids.karras(sde, 10, rho=7.0)))
    steps = (nsr ** (1 / 7)).diff()
    torch.testing.assert_close(steps, steps.mean().expand(10), rtol=1e-8, atol=1e-10)


def test_window_grid_density_is_one_inside_and_tail_density_outside():
    sde = sd.VPSDE()
    lams = lam(sde, grids.log_snr_window(sde, 40, window=(-3.0, 3.0), tail_density=0.25))
    h = lams.diff()
    inside = (lams[:-1] >= -3) & (lams[1:] <= 3)
    outside = (lams[1:] <= -3) | (lams[:-1] >= 3)
    # equal quantiles of the density: steps are 4x longer where the density is 4x lower
    torch.testing.assert_close(h[outside], 4 * h[inside].mean().expand(int(outside.sum())), rtol=1e-8, atol=1e-8)


def test_time_uniform_closed_form():
    sde = sd.VESDE()
    torch.testing.assert_close(grids.time_uniform(sde, 4), torch.linspace(1.0, sde.eps, 5, dtype=torch.float64))


@pytest.mark.parametrize(
    "grid, match",
    [([0.5], "at least 2"), ([0.2, 0.5], "decrease"), ([1.5, 0.1], r"\[0, 1"), ([0.5, math.nan], "finite")],
)
def test_check_grid_rejects_bad_grids(grid, match):
    with pytest.raises(ValueError, match=match):
        grids.check_grid(grid, sd.VPSDE())


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="steps"):
        grids.make_grid(sd.VPSDE(), 0, "log-snr")
    with pytest.raises(ValueError, match="schedule"):
        grids.make_grid(sd.VPSDE(), 5, "cubic")
    with pytest.raises(ValueError, match="rho"):
        grids.karras(sd.VPSDE(), 5, rho=0.0)


def fine_density_mass(lo: float, hi: float) -> float:
    """The mass of ``log-snr-fine``'s density on ``[lo, hi]``: 1 on ``[-3, 5.5]``, 0.2 within 2 of
    it, 0.05 beyond (written out segment by segment)."""
    pieces = [(-math.inf, -5.0, 0.05), (-5.0, -3.0, 0.2), (-3.0, 5.5, 1.0), (5.5, 7.5, 0.2), (7.5, math.inf, 0.05)]
    return sum(rho * max(min(hi, b) - max(lo, a), 0.0) for a, b, rho in pieces)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_fine_grid_is_uniform_on_its_window_and_sparse_outside(sde):
    """``log-snr-fine``: equal log-SNR steps inside ``[-3, 5.5]``, steps ``1 / 0.2 = 5`` times longer
    within 2 of the window and ``1 / 0.05 = 20`` times longer beyond (the steps that straddle an
    edge excepted)."""
    grid_lam = lam(sde, grids.make_grid(sde, 40, "log-snr-fine"))
    h = torch.diff(grid_lam)
    mids = grid_lam[:-1] + h / 2
    lo, hi = float(lam(sde, grids.default_t_max(sde))), float(lam(sde, sde.eps))
    step = fine_density_mass(lo, hi) / 40  # a step's length inside the window
    inside = (mids > -3 + step) & (mids < 5.5 - step)
    near = ((mids < -3 - 5 * step) & (mids > -5 + 5 * step)) | ((mids > 5.5 + 5 * step) & (mids < 7.5 - 5 * step))
    far = (mids < -5 - 20 * step) | (mids > 7.5 + 20 * step)
    assert inside.sum() >= 30
    assert torch.allclose(h[inside], torch.full_like(h[inside], step), rtol=1e-9)
    assert torch.allclose(h[near], torch.full_like(h[near], 5 * step), rtol=1e-9)
    assert torch.allclose(h[far], torch.full_like(h[far], 20 * step), rtol=1e-9)


def test_fine_grid_inside_its_window_hardly_depends_on_where_the_clock_starts():
    """The rectified flow starts its grids at ``T - eps``: ``lambda = -6.9`` for ``eps = 1e-3``,
    ``-9.2`` for ``1e-4``.  With tails of bounded mass (density 0.05 beyond ``-5``: 0.12 more mass
    for the longer head) the 20-step grid's steps inside the window differ by 1.2 %; a uniform
    tail density of 0.2 (``log-snr-window`` on the same window) makes them 4.8 % apart."""
    def window_step(schedule, eps: float, **kw) -> float:
        sde = sd.RectifiedFlow(eps=eps)
        return float(torch.diff(lam(sde, schedule(sde, 20, t_min=1e-3, **kw)))[10])

    fine = [window_step(grids.log_snr_fine, eps) for eps in (1e-3, 1e-4)]
    uniform_tail = [window_step(grids.log_snr_window, eps, window=(-3.0, 5.5)) for eps in (1e-3, 1e-4)]
    assert abs(fine[1] / fine[0] - 1) < 0.02 < abs(uniform_tail[1] / uniform_tail[0] - 1)
