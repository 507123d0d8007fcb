"""Controllable generation on the Gaussian-mixture oracle (exact scores); prints JSON.

* ring: the 2-D ring with x_1 observed (an ambiguous posterior over modes). For each observed
  value, ``m`` samples of x_2 by the paper's replacement method (PC sampler), reconstruction
  guidance, and SMC inpainting; the error is the total variation between the samples' mode shares
  and the exact ``p(k | x_1)``, next to the Monte-Carlo floor (exact samples of the same size).
* guidance: classifier guidance with the exact posterior (w = 1) and classifier-free guidance
  (w = 0, 1, 3) on ring2d and mix64: share in the chosen component and sliced-W2 to it.
* inpaint64 / colorize: mix64 with half the coordinates observed (replacement through several
  samplers); the 3-component pixel mixture colorized by replacement and by SMC (rate of samples
  whose colors come from another mode than the exact conditional's). The comparison of every
  conditional method with the exact posterior against its cost is benchmarks/conditional.py.

Usage: ``python benchmarks/guidance.py [--quick] [--figure docs/guidance_ring_inpainting.png]``
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import scoresde as sd
from scoresde.guidance import (
    Mask,
    cfg_score,
    classifier_guided_score,
    colorize,
    decoupling_matrix,
    inpaint,
    mixture_log_posterior,
    reconstruction_guided_score,
    to_gray,
)
from scoresde.metrics import sliced_wasserstein
from scoresde.sampling import sample

SDE = sd.VPSDE()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mode_tv(x: torch.Tensor, gmm: sd.GaussianMixture, exact: torch.Tensor) -> float:
    shares = torch.bincount(gmm.assign(x), minlength=gmm.num_components).double() / x.shape[0]
    return 0.5 * float((shares - exact).abs().sum())


def ring_benchmark(m: int, values: list[float]) -> dict:
    gmm = sd.GaussianMixture.named("ring2d")
    mask = torch.tensor([True, False])
    score = gmm.score_fn(SDE)

    def smc(particles: int):
        return lambda x_obs, g: inpaint(score, SDE, x_obs, mask, particles=particles, steps=100, generator=g)

    methods = {  # name -> (run(x_obs, generator) -> (x, info), particles per sample)
        "replacement (pc, 200 steps)": (lambda x_obs, g: inpaint(score, SDE, x_obs, mask, method="replacement", steps=200, generator=g), 1),
        "reconstruction guidance (em, 200 steps)": (lambda x_obs, g: sample(
            reconstruction_guided_score(score, SDE, Mask(mask)(x_obs), Mask(mask), 1.0, data_std=0.2), SDE,
            x_T=SDE.prior_sample(tuple(x_obs.shape), generator=g), method="euler-maruyama", steps=200, generator=g), 1),
        "smc (32 particles, 100 steps)": (smc(32), 32),
        "smc (64 particles, 100 steps)": (smc(64), 64),
    }
    out = {"values": values, "m": m, "tv": {}, "nfe_per_sample": {}, "seconds": {}}
    for name, (run, particles) in methods.items():
        tvs, t0 = [], time.perf_counter()
        for i, v in enumerate(values):
            x_obs = torch.zeros(m, 2)
            x_obs[:, 0] = v
            x, info = run(x_obs, gen(10 + i))
            x[:, 0] = v
            tvs.append(mode_tv(x, gmm, gmm.conditional_weights(x_obs[:1, :1].double(), [0])[0]))
        out["tv"][name] = tvs
        out["nfe_per_sample"][name] = info.nfe
        out["seconds"][name] = round(time.perf_counter() - t0, 2)
    floor = []
    for i, v in enumerate(values):
        x_obs = torch.full((m, 1), v, dtype=torch.float64)
        x2 = gmm.sample_conditional(x_obs, [0], generator=gen(50 + i))
        floor.append(mode_tv(torch.cat([x_obs, x2], 1), gmm, gmm.conditional_weights(x_obs[:1], [0])[0]))
    out["tv"]["exact samples (Monte-Carlo floor)"] = floor
    out["mean_tv"] = {k: round(sum(v) / len(v), 4) for k, v in out["tv"].items()}
    return out


def guidance_benchmark(n: int) -> dict:
    res = {}
    for name, k in (("ring2d", 2), ("mix64", 4)):
        gmm = sd.GaussianMixture.named(name)
        ref = gmm.component(k).sample(n, generator=gen(1))[0]
        floor = sliced_wasserstein(gmm.component(k).sample(n, generator=gen(2))[0], ref, generator=gen(3))
        runs = {f"classifier w=1 {m}": (classifier_guided_score(gmm.score_fn(SDE), mixture_log_posterior(gmm, SDE), k, 1.0), m, s)
                for m, s in (("pc", 100), ("dpm-solver++", 25))}
        for w in (0.0, 1.0, 3.0):
            runs[f"cfg w={w:g} dpm-solver++"] = (cfg_score(gmm.score_fn(SDE, label=k), gmm.score_fn(SDE), w), "dpm-solver++", 25)
        for label, (score, method, steps) in runs.items():
            x, info = sample(score, SDE, shape=(n, gmm.dim), method=method, steps=steps, generator=gen(4))
            res[f"{name} {label}"] = {"nfe": info.nfe, "share": float((gmm.assign(x) == k).float().mean()),
                                      "sw2": round(sliced_wasserstein(x, ref, generator=gen(3)), 4), "sw2_floor": round(floor, 4)}
    return res


def inpaint64_benchmark(n: int) -> dict:
    gmm = sd.GaussianMixture.named("mix64")
    obs = list(range(32))
    x_true = gmm.sample(n, generator=gen(3))[0]
    mask = torch.zeros(64, dtype=torch.bool)
    mask[obs] = True
    miss = gmm.missing_dims(obs)
    ref = gmm.sample_conditional(x_true[:, obs], obs, generator=gen(5))
    expected = gmm.conditional_weights(x_true[:, obs].double(), obs).mean(0)
    res = {"sw2_floor": round(sliced_wasserstein(gmm.sample_conditional(x_true[:, obs], obs, generator=gen(7)), ref, generator=gen(6)), 4)}
    for method, steps, opts in (("pc", 200, {}), ("euler-maruyama", 200, {}), ("ddim", 100, {"eta": 1.0}),
                                ("ddim", 50, {}), ("ddim", 50, {"fixed_noise": True}), ("dpm-solver++", 25, {"fixed_noise": True})):
        x, info = inpaint(gmm.score_fn(SDE), SDE, x_true, mask, method="replacement", sampler=method, steps=steps,
                          generator=gen(4), **opts)
        shares = torch.bincount(gmm.assign(x), minlength=10).double() / n
        res[f"{method} {steps} {opts}"] = {"nfe": info.nfe, "sw2": round(sliced_wasserstein(x[:, miss], ref, generator=gen(6)), 4),
                                           "max_share_error": round(float((shares - expected).abs().max()), 4)}
    return res


def colorize_benchmark(n: int) -> dict:
    g = gen(0)
    k = 3
    stds = (0.15 + 0.2 * torch.rand(k, 1, 2, 2, generator=g, dtype=torch.float64)).expand(k, 3, 2, 2).reshape(k, -1)
    means = torch.randn(k, 3, 2, 2, generator=g, dtype=torch.float64)
    weights = torch.arange(1, k + 1, dtype=torch.float64)
    M = decoupling_matrix(3)
    gmm = sd.GaussianMixture(weights, means.reshape(k, -1), stds)
    rotated = sd.GaussianMixture(weights, torch.einsum("ij,kjhw->kihw", M, means).reshape(k, -1), stds)
    gray = to_gray(gmm.sample(n, generator=gen(1))[0].reshape(n, 3, 2, 2))
    u_obs = (math.sqrt(3) * gray).reshape(n, 4).double()
    best = rotated.conditional_weights(u_obs, list(range(4))).argmax(1)
    res = {}
    for label, opts in (("replacement pc 200", {"method": "replacement", "steps": 200}),
                        ("smc 32 particles 100 steps", {"method": "smc", "particles": 32, "steps": 100})):
        x, _ = colorize(gmm.score_fn(SDE), SDE, gray, generator=gen(2), **opts)
        u = torch.einsum("ij,bjhw->bihw", M.float(), x).reshape(n, -1).double()
        res[label] = {"wrong_mode_rate": float((rotated.assign(u) != best).float().mean())}
    return res


def plot(ring: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, tvs in ring["tv"].items():
        ax.plot(ring["values"], tvs, marker="o", ls=":" if name.startswith("exact") else "-", label=name)
    ax.set_xlabel("observed x_1")
    ax.set_ylabel("mode-share error (total variation)")
    ax.set_title(f"ring2d, x_2 imputed, {ring['m']} samples per value (exact score)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples and values")
    parser.add_argument("--figure", default=None, help="PNG path for the ring figure")
    args = parser.parse_args()
    m = 200 if args.quick else 500
    values = [2.0, 1.41, 0.7, 0.0, -1.0, -1.41, -2.0] if not args.quick else [2.0, 0.0, -1.41]
    t0 = time.perf_counter()
    report = {"ring": ring_benchmark(m, values), "guidance": guidance_benchmark(m),
              "inpaint64": inpaint64_benchmark(2 * m), "colorize": colorize_benchmark(2 * m)}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if args.figure:
        plot(report["ring"], args.figure)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
