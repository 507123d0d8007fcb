"""Likelihood benchmark: the random mixture family against the paper's estimator, error against
NFE on the Gaussian-mixture oracle, biases, Hutchinson variance, and wall time per NFE on the
digits DDPM++.  Prints JSON; plots error vs NFE.

    OMP_NUM_THREADS=1 python benchmarks/likelihood.py --parts family [--members dev|held-out|fresh] [--family-options JSON]
    OMP_NUM_THREADS=1 python benchmarks/likelihood.py [--quick] [--parts error,biases] [--plot docs/likelihood_error_nfe.png]

Errors are mean absolute per dimension, in nats, against the closed form ``log p_eps(x)`` at the
likelihood's start, the paper's ``eps = 1e-5`` (every SDE here is built with it):

* ``solver``: the estimate with the oracle's exact ``log p_T(z)`` in place of the prior term --
  what the ODE solver alone gets wrong;
* ``total_gaussian``: with the paper's prior ``N(0, sigma_T^2 I)`` (solver error plus prior bias);
* ``total_corrected``: with ``prior="corrected"`` (the score's line integral from 0 to z, two
  Gauss--Legendre nodes, two more NFE): what ``sd.log_likelihood`` returns by default;
* ``total_constant``: the same plus the constant ``C0`` from 4000 data samples
  (``prior_reference``, :func:`scoresde.likelihood.prior_constant`).

The baseline is the paper's estimator as its code runs it (:func:`paper_estimator`: scipy's RK45,
i.e. dopri5, in ``t`` at ``rtol = atol = 1e-5``, Gaussian prior); torchdiffeq's dopri5 on our flat
state is a second reference; ours is the log-SNR chart with the corrected prior and the PI-controlled
bosh3 or dopri5 of :mod:`scoresde.rk`, across tolerances.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from functools import partial
from types import SimpleNamespace

import numpy as np
import torch
from scipy.integrate import solve_ivp

import scoresde as sd
from scoresde._tensor import gaussian_logp
from scoresde.likelihood import prior_constant, prior_correction, value_and_divergence

PAPER_EPS = 1e-5  # the paper starts likelihood integrals here (its VP samples stop at 1e-3)
MAKERS = {"vp": sd.VPSDE, "subvp": sd.SubVPSDE, "ve": sd.VESDE}
SDES = {name: partial(make, eps=PAPER_EPS) for name, make in MAKERS.items()}
MIXTURES = {"ring2d": 256, "mix64": 64}
# (chart, method) -> tolerances: the baseline's curve in t (the paper's code path, paper_estimator);
# torchdiffeq's dopri5 on the same ODE with scoresde's state (log-density per dimension); ours in the log-SNR chart with the PI-controlled pairs of scoresde.rk; torchdiffeq's bosh3 in the
# same chart shows what the controller alone changes
TOLERANCES = {
    ("t", "scipy:RK45"): (3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5),
    ("t", "torchdiffeq:dopri5"): (1e-5,),
    ("log-snr", "torchdiffeq:bosh3"): (5e-3, 2e-3, 1e-3, 5e-4, 3e-4, 1e-4),
    ("log-snr", "dopri5"): (3e-3, 1e-3, 5e-4, 3e-4, 2e-4, 1e-4, 5e-5, 3e-5, 1e-5),
    ("log-snr", "bosh3"): (2e-2, 1e-2, 5e-3, 3e-3, 2e-3, 1.5e-3, 1e-3, 7e-4, 5e-4, 3e-4, 2e-4, 1e-4),
    ("log-snr", "adams"): (1e-3, 5e-4, 3e-4, 2e-4, 1.5e-4, 1e-4, 5e-5),
}
QUICK_TOLERANCES = {
    ("t", "scipy:RK45"): (1e-3, 1e-4, 1e-5),
    ("log-snr", "dopri5"): (1e-3, 3e-4, 1e-4, 3e-5),
    ("log-snr", "bosh3"): (5e-3, 2e-3, 1e-3, 5e-4, 2e-4),
    ("log-snr", "adams"): (5e-4, 1.5e-4, 5e-5),
}
OURS = ("bosh3", "dopri5", "adams")
BASELINE = dict(chart="t", method="scipy:RK45", tol=1e-5)
PRIOR_POINTS = 2


# -- the random family (issue 19.2): drawn, not designed; seeds fixed before any tuning ----------
# Members 0..11 ("dev", DEV_SEEDS) are the only ones the default's settings may be tuned on; members
# 100..123 ("held-out", HELDOUT_SEEDS) are measured once the default is fixed; members 200..223
# ("fresh", FRESH_SEEDS, declared 2026-12-02 before anyone ran them) are a second held-out set, for the
# default of that day (the chart, the step cap, C0 from the origin), measured once; members 300..323
# ("fresh-2", FRESH2_SEEDS, declared 2026-12-02 21:20 UTC before anyone ran them) are a third, for the
# fifth round's default, measured once; members 400..423 ("fresh-3", FRESH3_SEEDS, declared 2026-12-02
# 21:40 UTC before anyone ran them) a fourth, measured once on that default after its tuning had
# ended; members 500..523 ("fresh-4", FRESH4_SEEDS, declared 2026-12-02 before anyone ran them) are
# kept for any later default.
# Each seed draws, with
# numpy's PCG64:
#   dimension d = round(2^U(1, 8))                    (2 .. 256, log-uniform)
#   modes     K = round(2^U(0, 4))                    (1 .. 16, log-uniform)
#   widths    lo = 10^U(-2, -0.7), hi = min(2, lo 10^U(0, 2)); every per-axis std log-uniform in [lo, hi]
#   means     U(-m, m)^(K x d),  m = 10^U(-0.3, 0.5)  (0.5 .. 3.2)
#   weights   proportional to exp(N(0, s^2)),  s = U(0, 2.5)   (imbalance up to ~e^10)
#   SDE       one of vp, subvp, ve (uniform), with the likelihood's eps
# and POINTS_PER_MEMBER points of the mixture (torch generator seeded by the same seed).
DEV_SEEDS = tuple(range(12))
HELDOUT_SEEDS = tuple(range(100, 124))
FRESH_SEEDS = tuple(range(200, 224))
FRESH2_SEEDS = tuple(range(300, 324))
FRESH3_SEEDS = tuple(range(400, 424))
FRESH4_SEEDS = tuple(range(500, 524))
MEMBER_SETS = {"dev": DEV_SEEDS, "held-out": HELDOUT_SEEDS, "fresh": FRESH_SEEDS, "fresh-2": FRESH2_SEEDS,
               "fresh-3": FRESH3_SEEDS, "fresh-4": FRESH4_SEEDS}
POINTS_PER_MEMBER = 8
FAMILY_SDES = ("vp", "subvp", "ve")


def random_member(seed: int) -> dict:
    """One member of the random family (comment above): the mixture, its SDE's name, the points
    (float64) and the draws that made them."""
    rng = np.random.default_rng(seed)
    dim = int(round(2 ** rng.uniform(1, 8)))
    modes = int(round(2 ** rng.uniform(0, 4)))
    lo = 10 ** rng.uniform(-2, -0.7)
    hi = min(2.0, lo * 10 ** rng.uniform(0, 2))
    stds = np.exp(rng.uniform(math.log(lo), math.log(hi), (modes, dim)))
    spread = 10 ** rng.uniform(-0.3, 0.5)
    means = rng.uniform(-spread, spread, (modes, dim))
    imbalance = rng.uniform(0, 2.5)
    weights = np.exp(rng.normal(0, imbalance, modes))
    sde_name = FAMILY_SDES[int(rng.integers(len(FAMILY_SDES)))]
    gmm = sd.GaussianMixture(torch.from_numpy(weights), torch.from_numpy(means), torch.from_numpy(stds))
    x, _ = gmm.sample(POINTS_PER_MEMBER, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    draws = dict(seed=seed, dim=dim, modes=modes, width_lo=round(lo, 4), width_hi=round(hi, 4),
                 mean_spread=round(spread, 3), imbalance=round(imbalance, 3), sde=sde_name,
                 max_weight_ratio=round(float(weights.max() / weights.min()), 1))
    return dict(gmm=gmm, sde=sde_name, x=x, draws=draws)


def mean_per_dim(err: torch.Tensor, dim: int) -> float:
    return float(err.abs().mean() / dim)


def paper_estimator(score_fn, sde, x: torch.Tensor, tol: float) -> tuple[torch.Tensor, SimpleNamespace]:
    """The official code's estimator as it runs: scipy's ``solve_ivp`` (RK45 = dopri5, elementary
    step control) in ``t`` from ``eps`` to ``T`` on the flat float64 NumPy vector ``[x, divergence
    integral]`` of the whole batch (the log-density not divided by ``D``), the Gaussian prior; the
    exact divergence from one forward and ``D`` VJPs per evaluation."""
    shape, batch = tuple(x.shape), x.shape[0]

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        y = torch.from_numpy(state[:-batch]).to(x.dtype).reshape(shape)
        tt = torch.full((batch,), t, dtype=x.dtype)
        vel, div = value_and_divergence(lambda v: sde.probability_flow_drift(v, tt, score_fn(v, tt)), y, None)
        return np.concatenate([vel.double().numpy().ravel(), div.double().numpy()])

    start = np.concatenate([x.double().numpy().ravel(), np.zeros(batch)])
    sol = solve_ivp(rhs, (sde.eps, sde.T), start, method="RK45", rtol=tol, atol=tol)
    z = torch.from_numpy(sol.y[:-batch, -1]).to(x.dtype).reshape(shape)
    delta = torch.from_numpy(sol.y[-batch:, -1])
    info = SimpleNamespace(z=z, delta_logp=delta, nfe=sol.nfev, eps=sde.eps, t_end=sde.T)
    return gaussian_logp(z, sde.prior_std).double() + delta, info


def error_vs_nfe(tolerances: dict) -> list[dict]:
    """One solve per (mixture, SDE, chart, method, tolerance) with the exact divergence; both prior terms
    are applied to the same latent (the corrected one costs ``PRIOR_POINTS`` more NFE)."""
    rows = []
    for name, n in MIXTURES.items():
        gmm = sd.GaussianMixture.named(name)
        x, _ = gmm.sample(n, generator=torch.Generator().manual_seed(1))
        reference, _ = gmm.sample(4000, generator=torch.Generator().manual_seed(7))
        dim = x.shape[1]
        for sde_name, make in SDES.items():
            sde = make()
            score_fn = gmm.score_fn(sde)
            c0 = prior_constant(reference, sde, sde.T, sde.prior_std)
            for (chart, method), tols in tolerances.items():
                for tol in tols:
                    start = time.perf_counter()
                    if method == "scipy:RK45":
                        logp, info = paper_estimator(score_fn, sde, x, tol)
                    else:
                        logp, info = sd.log_likelihood(score_fn, sde, x, variable=chart, solver=method, divergence="exact",
                                                       rtol=tol, atol=tol, prior="gaussian")
                    seconds = time.perf_counter() - start
                    ref = gmm.log_prob(x.double(), info.eps, sde)
                    std = sde.prior_std
                    corrected = logp.double() + prior_correction(score_fn, info.z, info.t_end, std, PRIOR_POINTS)
                    exact_end = gmm.log_prob(info.z.double(), info.t_end, sde) + info.delta_logp.double()
                    rows.append(dict(
                        mixture=name, sde=sde_name, chart=chart, method=method, tol=tol, nfe=info.nfe,
                        nfe_corrected=info.nfe + PRIOR_POINTS, seconds=round(seconds, 3),
                        solver=mean_per_dim(exact_end - ref, dim),
                        total_gaussian=mean_per_dim(logp.double() - ref, dim),
                        total_corrected=mean_per_dim(corrected.double() - ref, dim),
                        total_constant=mean_per_dim(corrected.double() + c0 - ref, dim),
                    ))
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def robust_nfe(points: list[dict], bound: float, key: str = "total_corrected") -> dict | None:
    """The point of smallest NFE such that every point with at least its NFE has a total error
    ``key`` at or below ``bound`` (the error is not monotone in the tolerance; this is not a lucky point)."""
    ok = None
    for r in sorted(points, key=lambda r: -r["nfe_corrected"]):
        if r[key] > bound:
            break
        ok = r
    return ok


def best_ours(mine: list[dict], bound: float, key: str = "total_corrected") -> tuple[dict | None, dict]:
    """Ours (log-SNR chart, corrected prior, the PI-controlled pairs) at or below ``bound`` in ``key``:
    the best :func:`robust_nfe` point over :data:`OURS` and each method's NFE there."""
    best, per_method = None, {}
    for method in OURS:
        hit = robust_nfe([r for r in mine if r["chart"] == "log-snr" and r["method"] == method], bound, key)
        per_method[f"{method}_nfe"] = None if hit is None else hit["nfe_corrected"]
        if hit is not None and (best is None or hit["nfe_corrected"] < best["nfe_corrected"]):
            best = hit
    return best, per_method


def summary(rows: list[dict]) -> list[dict]:
    """Per mixture and SDE: the baseline's NFE and total error, and for ours the smallest NFE from
    which every measured point is at or below the baseline's error (:func:`best_ours`); the same
    against torchdiffeq's dopri5 at tolerance 1e-5 in ``t`` when it was measured."""
    out = []
    for name in MIXTURES:
        for sde_name in SDES:
            mine = [r for r in rows if r["mixture"] == name and r["sde"] == sde_name]
            base = next(r for r in mine if all(r[k] == v for k, v in BASELINE.items()))
            best, per_method = best_ours(mine, base["total_gaussian"])
            row = dict(
                mixture=name, sde=sde_name, baseline_nfe=base["nfe"], baseline_total=base["total_gaussian"],
                **per_method,
                ours_nfe=None if best is None else best["nfe_corrected"],
                ours_method=None if best is None else best["method"],
                ours_tol=None if best is None else best["tol"],
                ours_total=None if best is None else best["total_corrected"],
                half_met=best is not None and best["nfe_corrected"] <= base["nfe"] / 2,
            )
            with_c0, _ = best_ours(mine, base["total_gaussian"], "total_constant")
            row.update(ours_nfe_with_constant=None if with_c0 is None else with_c0["nfe_corrected"],
                       ours_total_with_constant=None if with_c0 is None else with_c0["total_constant"])
            td = next((r for r in mine if r["method"] == "torchdiffeq:dopri5" and r["tol"] == 1e-5), None)
            if td is not None:
                best_td, _ = best_ours(mine, td["total_gaussian"])
                row.update(torchdiffeq_nfe=td["nfe"], torchdiffeq_total=td["total_gaussian"],
                           ours_nfe_vs_torchdiffeq=None if best_td is None else best_td["nfe_corrected"])
            out.append(row)
    return out


def biases() -> list[dict]:
    """The biases from the oracle alone (no solver), mean absolute per dimension:
    prior term at latents ``z ~ p_T``: ``log N(z; 0, sigma_T^2) - log p_T(z)`` (``gaussian``) and
    ``log N + prior_correction - log p_T`` for 1..3 nodes (``corrected_k``), and the constant it
    leaves, ``C0 / D = (log p_T(0) - log N(0; 0, sigma_T^2)) / D``;
    start at data ``x ~ p_0``: ``log p_eps(x) - log p_0(x)`` at the likelihood's ``eps`` and at the SDE class's default ``eps``."""
    rows = []
    for name in MIXTURES:
        gmm = sd.GaussianMixture.named(name)
        x, _ = gmm.sample(4000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        dim = x.shape[1]
        for sde_name, make in SDES.items():
            sde = make()
            eps = sde.eps
            z = gmm.diffused(sde, sde.T).sample(4000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[0]
            exact = gmm.log_prob(z, sde.T, sde)
            gauss = gaussian_logp(z, sde.prior_std)
            origin = torch.zeros(1, dim, dtype=torch.float64)
            c0 = float(gmm.log_prob(origin, sde.T, sde) - gaussian_logp(origin, sde.prior_std)) / dim
            row = dict(mixture=name, sde=sde_name, prior_gaussian=mean_per_dim(gauss - exact, dim), c0_per_dim=c0)
            for k in (1, 2, 3):
                corr = gauss + prior_correction(gmm.score_fn(sde), z, sde.T, sde.prior_std, k)
                row[f"prior_corrected_{k}"] = mean_per_dim(corr - exact, dim)
            default_eps = MAKERS[sde_name]().eps
            row.update(
                eps=eps, start=mean_per_dim(gmm.log_prob(x, eps, sde) - gmm.log_prob(x), dim),
                sde_eps=default_eps, start_at_sde_eps=mean_per_dim(gmm.log_prob(x, default_eps, sde) - gmm.log_prob(x), dim),
            )
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def error_norms(tolerances=(3e-3, 1e-3, 3e-4, 1e-4)) -> list[dict]:
    """The default solver (bosh3, log-SNR chart, corrected prior) under VP with the batch-RMS error
    norm and the per-sample one: NFE, mean and worst per-sample total error per dimension."""
    rows = []
    for name, n in MIXTURES.items():
        gmm = sd.GaussianMixture.named(name)
        x, _ = gmm.sample(n, generator=torch.Generator().manual_seed(1))
        sde = SDES["vp"]()
        ref = gmm.log_prob(x.double(), sde.eps, sde)
        for norm in ("batch", "sample"):
            for tol in tolerances:
                logp, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, rtol=tol, atol=tol, error_norm=norm, divergence="exact")
                err = (logp.double() - ref).abs() / x.shape[1]
                rows.append(dict(mixture=name, norm=norm, tol=tol, nfe=info.nfe, mean=float(err.mean()),
                                 max=float(err.max())))
                print(json.dumps(rows[-1]), flush=True)
    return rows


def hutchinson(probes: int) -> list[dict]:
    """``probes`` single-probe estimates per point (one batched solve) against the exact divergence."""
    rows = []
    for name, points in (("ring2d", 4), ("mix64", 2)):
        gmm = sd.GaussianMixture.named(name)
        x, _ = gmm.sample(points, generator=torch.Generator().manual_seed(4))
        sde = SDES["vp"]()
        exact, _ = sd.log_likelihood(gmm.score_fn(sde), sde, x, divergence="exact")
        for dist in ("rademacher", "gaussian"):
            est, info = sd.log_likelihood(
                gmm.score_fn(sde), sde, x.repeat_interleave(probes, 0), divergence="hutchinson", probes=1,
                probe_dist=dist, generator=torch.Generator().manual_seed(5),
            )
            est = est.double().reshape(points, probes)
            se = est.std(1) / math.sqrt(probes)
            z = (est.mean(1) - exact.double()) / se
            rows.append(dict(
                mixture=name, probe_dist=dist, probes=probes, nfe=info.nfe,
                std_per_probe=est.std(1).tolist(), mean_minus_exact_in_se=z.tolist(),
                var_per_probe_per_dim=(est.var(1) / x.shape[1]).tolist(),
            ))
    return rows


def family(seeds: tuple[int, ...], options: dict | None = None) -> dict:
    """The random family (:func:`random_member`): per member the paper's estimator at ``1e-5``
    (:func:`paper_estimator`) and ``sd.log_likelihood`` at its defaults (``options`` override them;
    the exact divergence, so that only the solver and the prior term err), both from ``eps = 1e-5``,
    against the closed form ``log p_{1e-5}``: NFE, mean and worst per-dimension error over the
    points, and how the reported ``info.error_estimate`` compares with the true error.  Aggregated:
    mean ratios to the baseline and how many members meet the goal of issue 19 (mean error <=
    the baseline's, NFE <= half of its)."""
    options = {"divergence": "exact", **(options or {})}
    rows = []
    for seed in seeds:
        member = random_member(seed)
        gmm, x, sde = member["gmm"], member["x"], SDES[member["sde"]]()
        dim = x.shape[1]
        ref = gmm.log_prob(x, PAPER_EPS, sde)
        base, base_info = paper_estimator(gmm.score_fn(sde), sde, x, 1e-5)
        ours, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, **options)
        assert info.eps == PAPER_EPS
        err_base, err_ours = (base - ref).abs() / dim, (ours.double() - ref).abs() / dim
        row = {**member["draws"], "baseline_nfe": base_info.nfe, "baseline_mean": float(err_base.mean()),
               "baseline_max": float(err_base.max()), "nfe": info.nfe, "mean": float(err_ours.mean()),
               "max": float(err_ours.max())}
        row["nfe_ratio"], row["error_ratio"] = row["nfe"] / row["baseline_nfe"], row["mean"] / row["baseline_mean"]
        row["goal_met"] = row["mean"] <= row["baseline_mean"] and 2 * row["nfe"] <= row["baseline_nfe"]
        if info.error_estimate is not None:
            cover = (ours.double() - ref).abs() / info.error_estimate.double()
            row.update(estimate_max=float(info.error_estimate.max()) / dim, true_over_estimate_max=float(cover.max()),
                       true_over_estimate_min=float(cover.min()))
        rows.append(row)
        print(json.dumps(row), flush=True)
    n = len(rows)
    aggregate = {
        "members": n, "options": options,
        "mean_nfe_ratio": sum(r["nfe_ratio"] for r in rows) / n,
        "mean_error_ratio": sum(r["error_ratio"] for r in rows) / n,
        "family_mean_error": sum(r["mean"] for r in rows) / n,
        "family_mean_error_baseline": sum(r["baseline_mean"] for r in rows) / n,
        "family_nfe": sum(r["nfe"] for r in rows), "family_nfe_baseline": sum(r["baseline_nfe"] for r in rows),
        "goal_met": sum(r["goal_met"] for r in rows),
        "error_and_nfe_at_most_baseline": sum(r["mean"] <= r["baseline_mean"] and r["nfe"] <= r["baseline_nfe"] for r in rows),
        "worst_point": max(r["max"] for r in rows), "worst_point_baseline": max(r["baseline_max"] for r in rows),
    }
    if all("true_over_estimate_max" in r for r in rows):
        aggregate["true_over_estimate_max"] = max(r["true_over_estimate_max"] for r in rows)
        aggregate["true_over_estimate_min"] = min(r["true_over_estimate_min"] for r in rows)
    return {"rows": rows, "aggregate": aggregate}


NETWORK_SHAPES = {"ddpmpp_digits": (1, 8, 8), "ddpmpp_cifar10": (3, 32, 32)}


def per_nfe_cost(network: str = "ddpmpp_digits", batch: int = 16, repeats: int = 20) -> dict:
    """Wall time per NFE of a Hutchinson solve on an (untrained) network preset against one
    forward + one VJP of its score function on the same batch."""
    torch.manual_seed(0)
    model = sd.nets.build_preset(network).eval()
    sde = SDES["vp"]()
    score_fn = sd.score_fn_from_model(model, sde, "eps")
    x = torch.rand((batch,) + NETWORK_SHAPES[network], generator=torch.Generator().manual_seed(0)) * 2 - 1
    probe = torch.randn((1,) + tuple(x.shape), generator=torch.Generator().manual_seed(1))
    t = torch.full((batch,), 0.5)

    value_and_divergence(lambda y: score_fn(y, t), x, probe)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        value_and_divergence(lambda y: score_fn(y, t), x, probe)
    fwd_vjp = (time.perf_counter() - start) / repeats

    start = time.perf_counter()
    _, info = sd.log_likelihood(score_fn, sde, x, divergence="hutchinson", probes=1, prior="gaussian",
                                generator=torch.Generator().manual_seed(2))
    per_nfe = (time.perf_counter() - start) / info.nfe
    params = sum(p.numel() for p in model.parameters())
    return dict(network=network, params=params, batch=batch, nfe=info.nfe,
                forward_plus_vjp_s=fwd_vjp, per_nfe_s=per_nfe, ratio=per_nfe / fwd_vjp)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MIXTURES), figsize=(11, 5.2))
    colors = {"vp": "C0", "subvp": "C1", "ve": "C2"}
    for ax, name in zip(axes, MIXTURES):
        for sde_name in SDES:
            mine = [r for r in rows if r["mixture"] == name and r["sde"] == sde_name]
            # points joined in order of tolerance (NFE is not monotone in it)
            base_curve = [(r["nfe"], r["total_gaussian"]) for r in mine if r["method"] == BASELINE["method"]]
            ax.loglog(*zip(*base_curve), ":", marker="o", color=colors[sde_name], ms=3, lw=0.8, alpha=0.6,
                      label=f"{sde_name}: RK45 in t, Gaussian prior (paper's code)")
            for method, marker, style in (("dopri5", "s", "-"), ("bosh3", "^", "-"), ("adams", "D", "-"), ("torchdiffeq:bosh3", "v", "--")):
                ours = [(r["nfe_corrected"], r["total_corrected"]) for r in mine
                        if r["chart"] == "log-snr" and r["method"] == method]
                if ours:
                    ax.loglog(*zip(*ours), style, marker=marker, color=colors[sde_name], ms=4, lw=0.6,
                              label=f"{sde_name}: {method}, log-SNR chart, corrected prior")
            base = next(r for r in mine if all(r[k] == v for k, v in BASELINE.items()))
            ax.loglog(base["nfe"], base["total_gaussian"], "*", color=colors[sde_name], ms=14, mec="k")
            ax.axvline(base["nfe"] / 2, color=colors[sde_name], lw=0.8, alpha=0.5)
        ax.set_title(f"{name}: total error vs NFE (star: baseline, the paper's RK45 in t at tol 1e-5;\n"
                     "vertical: half its NFE; bosh3, dopri5: PI-controlled, scoresde.rk;\n"
                     "VP and sub-VP coincide in the log-SNR chart)", fontsize=8)
        ax.set_xlabel("NFE (corrected prior: +2)")
        ax.set_ylabel("mean |log p - log p_eps| / D  (nats)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)


PARTS = ("family", "error", "biases", "norms", "hutchinson", "per-nfe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tolerances, fewer probes")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    parser.add_argument("--plot", default=None, help="write the error-vs-NFE figure here")
    parser.add_argument("--network", default="ddpmpp_digits", choices=list(NETWORK_SHAPES),
                        help="network preset of the per-nfe part")
    parser.add_argument("--batch", type=int, default=16, help="batch of the per-nfe part")
    parser.add_argument("--repeats", type=int, default=20, help="forward + VJP repeats of the per-nfe part")
    parser.add_argument("--members", default="held-out", choices=tuple(MEMBER_SETS),
                        help="family part: the dev members (tuning allowed) or a held-out set")
    parser.add_argument("--family-options", default="{}", help="family part: log_likelihood options as JSON")
    args = parser.parse_args()
    parts = args.parts.split(",")
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"--parts: unknown part {part!r}; choose from {PARTS}")
    torch.set_num_threads(1)
    result = dict(machine=f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    if "family" in parts:
        seeds = MEMBER_SETS[args.members]
        result["family"] = family(seeds, json.loads(args.family_options))
    if "error" in parts:
        result["error_vs_nfe"] = error_vs_nfe(QUICK_TOLERANCES if args.quick else TOLERANCES)
        result["summary"] = summary(result["error_vs_nfe"])
        if args.plot:
            plot(result["error_vs_nfe"], args.plot)
    if "biases" in parts:
        result["biases"] = biases()
    if "norms" in parts:
        result["norms"] = error_norms()
    if "hutchinson" in parts:
        result["hutchinson"] = hutchinson(100 if args.quick else 400)
    if "per-nfe" in parts:
        result["per_nfe"] = per_nfe_cost(args.network, args.batch, args.repeats)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
