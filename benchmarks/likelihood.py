"""Likelihood benchmark: error against NFE on the Gaussian-mixture oracle, biases, Hutchinson
variance, and wall time per NFE on the digits DDPM++.  Prints JSON; plots error vs NFE.

    OMP_NUM_THREADS=1 python benchmarks/likelihood.py [--quick] [--plot docs/likelihood_error_nfe.png]

Errors are mean absolute per dimension, in nats, against the closed form ``log p_eps(x)``:

* ``solver``: the estimate with the oracle's exact ``log p_T(z)`` in place of the Gaussian
  prior -- what the ODE solver alone gets wrong;
* ``total``: the paper's estimator (Gaussian prior at ``T``) -- solver error plus prior bias.

The baseline is dopri5 in ``t`` at ``rtol = atol = 1e-5`` (``time_variable="t"``); the default
is dopri5 in the log-SNR chart (``time_variable="log-snr"``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

import scoresde as sd
from scoresde.likelihood import value_and_divergence

SDES = {"vp": sd.VPSDE, "subvp": sd.SubVPSDE, "ve": sd.VESDE}
MIXTURES = {"ring2d": 256, "mix64": 64}
TOLERANCES = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6)
CHARTS = ("t", "log-snr")


def mean_per_dim(err: torch.Tensor, dim: int) -> float:
    return float(err.abs().mean() / dim)


def error_vs_nfe(tolerances) -> list[dict]:
    """One solve per (mixture, SDE, chart, tolerance) with the exact divergence."""
    rows = []
    for name, n in MIXTURES.items():
        gmm = sd.GaussianMixture.named(name)
        x, _ = gmm.sample(n, generator=torch.Generator().manual_seed(1))
        dim = x.shape[1]
        for sde_name, make in SDES.items():
            sde = make()
            ref = gmm.log_prob(x.double(), sde.eps, sde)
            for chart in CHARTS:
                for tol in tolerances:
                    start = time.perf_counter()
                    logp, info = sd.log_likelihood(gmm.score_fn(sde), sde, x, time_variable=chart, rtol=tol, atol=tol)
                    seconds = time.perf_counter() - start
                    exact_end = gmm.log_prob(info.z.double(), info.t_end, sde) + info.delta_logp.double()
                    rows.append(dict(
                        mixture=name, sde=sde_name, chart=chart, tol=tol, nfe=info.nfe, seconds=round(seconds, 3),
                        solver=mean_per_dim(exact_end - ref, dim), total=mean_per_dim(logp.double() - ref, dim),
                    ))
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def biases() -> list[dict]:
    """The two biases of the paper's estimator, from the oracle alone (no solver):
    prior: ``|log N(z; 0, sigma_T^2) - log p_T(z)|`` at latents ``z ~ p_T``;
    start: ``|log p_eps(x) - log p_0(x)|`` at data ``x ~ p_0``."""
    rows = []
    for name in MIXTURES:
        gmm = sd.GaussianMixture.named(name)
        x, _ = gmm.sample(4000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        dim = x.shape[1]
        for sde_name, make in SDES.items():
            sde = make()
            z = gmm.diffused(sde, sde.T).sample(4000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[0]
            prior = mean_per_dim(sde.prior_logp(z) - gmm.log_prob(z, sde.T, sde), dim)
            start = mean_per_dim(gmm.log_prob(x, sde.eps, sde) - gmm.log_prob(x), dim)
            rows.append(dict(mixture=name, sde=sde_name, prior_bias=prior, start_bias=start, eps=sde.eps))
    return rows


def hutchinson(probes: int) -> list[dict]:
    """``probes`` single-probe estimates per point (one batched solve) against the exact divergence."""
    rows = []
    for name, points in (("ring2d", 4), ("mix64", 2)):
        gmm = sd.GaussianMixture.named(name)
        x, _ = gmm.sample(points, generator=torch.Generator().manual_seed(4))
        sde = sd.VPSDE()
        exact, _ = sd.log_likelihood(gmm.score_fn(sde), sde, x, rtol=1e-5, atol=1e-5)
        for dist in ("rademacher", "gaussian"):
            est, info = sd.log_likelihood(
                gmm.score_fn(sde), sde, x.repeat_interleave(probes, 0), divergence="hutchinson",
                probe_dist=dist, rtol=1e-5, atol=1e-5, generator=torch.Generator().manual_seed(5),
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


def per_nfe_cost(batch: int = 16, repeats: int = 20) -> dict:
    """Wall time per NFE of a Hutchinson solve on the digits DDPM++ against one forward + one
    VJP of its score function on the same batch."""
    torch.manual_seed(0)
    model = sd.nets.build_preset("ddpmpp_digits").eval()
    sde = sd.VPSDE()
    score_fn = sd.score_fn_from_model(model, sde, "eps")
    x = torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    probe = torch.randn((1,) + tuple(x.shape), generator=torch.Generator().manual_seed(1))
    t = torch.full((batch,), 0.5)

    value_and_divergence(lambda y: score_fn(y, t), x, probe)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        value_and_divergence(lambda y: score_fn(y, t), x, probe)
    fwd_vjp = (time.perf_counter() - start) / repeats

    start = time.perf_counter()
    _, info = sd.log_likelihood(score_fn, sde, x, divergence="hutchinson", rtol=1e-3, atol=1e-3,
                                generator=torch.Generator().manual_seed(2))
    per_nfe = (time.perf_counter() - start) / info.nfe
    params = sum(p.numel() for p in model.parameters())
    return dict(network="ddpmpp_digits", params=params, batch=batch, nfe=info.nfe,
                forward_plus_vjp_s=fwd_vjp, per_nfe_s=per_nfe, ratio=per_nfe / fwd_vjp)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MIXTURES), figsize=(11, 4.2))
    colors = {"vp": "C0", "subvp": "C1", "ve": "C2"}
    styles = {"t": ("--", "o"), "log-snr": ("-", "s")}
    for ax, name in zip(axes, MIXTURES):
        for sde_name in SDES:
            for chart in CHARTS:
                pts = sorted((r["nfe"], r["solver"]) for r in rows if r["mixture"] == name and r["sde"] == sde_name and r["chart"] == chart)
                ls, marker = styles[chart]
                ax.loglog(*zip(*pts), ls, marker=marker, color=colors[sde_name], ms=4, label=f"{sde_name}, {chart}")
            base = [r for r in rows if r["mixture"] == name and r["sde"] == sde_name and r["chart"] == "t" and r["tol"] == 1e-5]
            ax.loglog(base[0]["nfe"], base[0]["solver"], "*", color=colors[sde_name], ms=14, mec="k")
        ax.set_title(f"{name}: solver error vs NFE (star: baseline dopri5 in t, tol 1e-5)", fontsize=9)
        ax.set_xlabel("NFE")
        ax.set_ylabel("mean |log p - exact| / D  (nats)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three tolerances, fewer probes")
    parser.add_argument("--plot", default=None, help="write the error-vs-NFE figure here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tolerances = TOLERANCES[::2] if args.quick else TOLERANCES
    result = dict(
        machine=f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
        error_vs_nfe=error_vs_nfe(tolerances),
        biases=biases(),
        hutchinson=hutchinson(100 if args.quick else 400),
        per_nfe=per_nfe_cost(),
    )
    if args.plot:
        plot(result["error_vs_nfe"], args.plot)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
