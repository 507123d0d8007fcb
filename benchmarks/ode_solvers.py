"""Adaptive probability-flow sampling: error against NFE for each step controller; prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/ode_solvers.py [--n 4000]

``sd.sample(method="ode")`` with each adaptive solver of :data:`scoresde.rk.ADAPTIVE_METHODS`
compared here (``dopri5`` and ``bosh3`` under PI step control, torchdiffeq's ``dopri5`` with the
elementary controller) at several tolerances, from the same start noise, on the exact score of the
oracle mixtures under VP (in ``t``) and rectified flow.  Error: RMS over samples and coordinates of
the difference to the same ODE solved by PI ``dopri5`` at ``rtol = atol = 1e-9`` (the exact flow
map to about 1e-8), i.e. the solver's own error, free of Monte-Carlo noise.
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


def run(mixture: str, sde_name: str, n: int) -> list[dict]:
    gmm = sd.GaussianMixture.named(mixture)
    sde = SDES[sde_name]()

    def ode(solver: str, tol: float):
        return sd.sample(gmm.score_fn(sde), sde, (n, gmm.dim), method="ode", solver=solver, rtol=tol, atol=tol,
                         generator=torch.Generator().manual_seed(0))

    ref, _ = ode("dopri5", 1e-9)
    rows = []
    for solver, tols in SOLVERS.items():
        for tol in tols:
            x, info = ode(solver, tol)
            rows.append(dict(mixture=mixture, sde=sde_name, solver=solver, tol=tol, nfe=info.nfe,
                             rms=float((x - ref).pow(2).mean().sqrt())))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="samples per solve")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [r for mixture in ("ring2d", "mix64") for sde_name in SDES for r in run(mixture, sde_name, args.n)]
    machine = f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"
    print(json.dumps(dict(machine=machine, rows=rows), indent=1))


if __name__ == "__main__":
    main()
