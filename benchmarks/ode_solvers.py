"""Probability-flow sampling: error against NFE for each adaptive step controller and for each
fixed-step scheme on each time grid; prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/ode_solvers.py [--n 4000] [--parts adaptive,fixed]

``sd.sample(method="ode")`` with each adaptive solver of :data:`scoresde.rk.ADAPTIVE_METHODS`
compared here (``dopri5`` and ``bosh3`` under PI step control, torchdiffeq's ``dopri5`` with the
elementary controller) at several tolerances, from the same start noise, on the exact score of the
oracle mixtures under VP (in ``t``) and rectified flow.  Error: RMS over samples and coordinates of
the difference to the same ODE solved by PI ``dopri5`` at ``rtol = atol = 1e-9`` (the exact flow
map to about 1e-8), i.e. the solver's own error, free of Monte-Carlo noise.  ``fixed``: the same
error for ``ode-euler``, ``ode-heun``, ``ode-midpoint`` and ``ode-rk4`` on the grids of
:data:`GRIDS` at a few NFE.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

import scoresde as sd

SOLVERS = {
    "dopri5": (1e-3, 3e-4, 1e-4, 3e-5, 1e-5),
    "bosh3": (1e-3, 3e-4, 1e-4, 3e-5),
    "torchdiffeq:dopri5": (1e-4, 3e-5, 1e-5, 3e-6),
}
SDES = {"vp": sd.VPSDE, "rf": sd.RectifiedFlow}
FIXED = {"ode-euler": (20, 100), "ode-heun": (10, 20, 50), "ode-midpoint": (10, 20, 50), "ode-rk4": (20, 48)}
GRIDS = ("log-snr", "time-uniform", "log-snr-window")


def _sampler(mixture: str, sde_name: str, n: int):
    gmm = sd.GaussianMixture.named(mixture)
    sde = SDES[sde_name]()

    def draw(method: str, **options):
        return sd.sample(gmm.score_fn(sde), sde, (n, gmm.dim), method=method,
                         generator=torch.Generator().manual_seed(0), **options)

    return draw, draw("ode", solver="dopri5", rtol=1e-9, atol=1e-9)[0]


def rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).pow(2).mean().sqrt())


def adaptive(mixture: str, sde_name: str, n: int) -> list[dict]:
    draw, ref = _sampler(mixture, sde_name, n)
    rows = []
    for solver, tols in SOLVERS.items():
        for tol in tols:
            x, info = draw("ode", solver=solver, rtol=tol, atol=tol)
            rows.append(dict(mixture=mixture, sde=sde_name, solver=solver, tol=tol, nfe=info.nfe, rms=rms(x, ref)))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def fixed(mixture: str, sde_name: str, n: int) -> list[dict]:
    draw, ref = _sampler(mixture, sde_name, n)
    rows = []
    for method, budgets in FIXED.items():
        stages = len(sd.rk.TABLEAUS[method.removeprefix("ode-")].c)
        for nfe in budgets:
            row = dict(mixture=mixture, sde=sde_name, method=method, nfe=nfe)
            for grid in GRIDS:
                x, _ = draw(method, steps=nfe // stages, schedule=grid)
                row[grid] = rms(x, ref)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="samples per solve")
    parser.add_argument("--parts", default="adaptive,fixed", help="comma-separated subset of adaptive,fixed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"
    result: dict = dict(machine=machine)
    for part, fn in (("adaptive", adaptive), ("fixed", fixed)):
        if part in args.parts.split(","):
            result[part] = [r for mixture in ("ring2d", "mix64") for sde_name in SDES for r in fn(mixture, sde_name, args.n)]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
