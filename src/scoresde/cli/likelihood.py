"""``likelihood``: bits/dim (or nats/dim for continuous data) over a split, resumable."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import data as D
from .. import likelihood as L
from ..rk import NORMS
from .args import load, nonnegative_int, positive_int, run_options
from .runs import likelihood_over_split


def _cmd_likelihood(args: argparse.Namespace) -> int:
    run = load(args)
    ev = run.config.evaluation
    results = Path(args.out) if args.out else run.directory / f"likelihood_{args.split}_step{run.step}.json"
    res = likelihood_over_split(run, args.split, args.limit if args.limit else ev.likelihood_n,
                                args.batch or ev.likelihood_batch, results,
                                divergence=args.divergence or ev.divergence, solver=args.solver or ev.solver,
                                rtol=args.rtol or ev.rtol, atol=args.atol or ev.atol, seed=args.seed,
                                progress=not args.quiet,
                                prior_reference=ev.prior_reference if args.prior_reference is None else args.prior_reference,
                                eps=args.eps or ev.likelihood_eps,
                                **{k: v for k in ("prior", "error_norm") if (v := getattr(args, k)) is not None})
    indicator = "" if res["error_max"] is None else f"; solver error indicator <= {res['error_max']:.1e} {res['unit']}"
    print(f"{args.split}: {res['mean']:.4f} ± {res['stderr']:.4f} {res['unit']} over {res['n']} items "
          f"(levels: {res['levels'] or 'continuous, no dequantization'}; eps={res['eps']:g}, "
          f"{res['nfe_per_batch']:.0f} NFE per batch{indicator}) -> {results}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``likelihood``."""
    p = sub.add_parser("likelihood", help="bits/dim over a dataset split (resumable)")
    run_options(p)
    p.add_argument("--split", default="test", choices=D.SPLITS, help="dataset split (default test)")
    p.add_argument("--limit", type=positive_int, help="first N items only (default: evaluation.likelihood_n)")
    p.add_argument("--batch", type=positive_int, help="items per ODE solve (default: evaluation.likelihood_batch)")
    p.add_argument("--divergence", choices=L.DIVERGENCES, help="divergence estimator (default: evaluation.divergence)")
    p.add_argument("--solver", choices=L.SOLVERS, help="ODE solver (default: evaluation.solver)")
    p.add_argument("--rtol", type=float, help="ODE relative tolerance (default: evaluation.rtol)")
    p.add_argument("--atol", type=float, help="ODE absolute tolerance (default: evaluation.atol)")
    p.add_argument("--prior", choices=L.PRIORS,
                   help="prior term of log p (default: scoresde.likelihood.log_likelihood's)")
    p.add_argument("--eps", type=float, help="start time of the ODE (default: evaluation.likelihood_eps, else the "
                                             "paper's 1e-5 for VP, sub-VP and VE and the SDE's eps otherwise)")
    p.add_argument("--prior-reference", type=nonnegative_int, metavar="N",
                   help="estimate the prior constant C0 from the first N training items (0: off; "
                        "default: evaluation.prior_reference)")
    p.add_argument("--error-norm", choices=NORMS,
                   help="ODE error over the whole batch or per sample (default: batch)")
    p.add_argument("--out", help="partial-results file, resumed when present (default RUN/likelihood_SPLIT_stepN.json)")
    p.set_defaults(func=_cmd_likelihood)
