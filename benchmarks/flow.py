"""Rectified flow measured: reflow on the 2-D ring and on digits, NFE to the floor beside VP; prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/flow.py reflow [--fm-steps 3000 --reflow-steps 3000]
    OMP_NUM_THREADS=1 python benchmarks/flow.py floor [--mixtures ring2d,mix64]
    OMP_NUM_THREADS=1 python benchmarks/flow.py digits --run RUN --reflowed RUN2

``reflow``: a small MLP (:class:`scoresde.nets.MLP`, width 128, depth 3) is trained with
:class:`~scoresde.losses.FlowMatchingLoss` on the rectified flow (1-RF); ``--couplings`` pairs
``(x_noise, x_data)`` are drawn with its probability-flow ODE (adaptive dopri5, rtol = atol = 1e-5,
:func:`~scoresde.reflow.draw_couplings`); a copy of 1-RF is trained on them with
:class:`~scoresde.reflow.ReflowLoss` (2-RF).  Both are measured on the same fresh noise:
straightness (:func:`~scoresde.reflow.straightness`, 100 Euler steps; mean and standard error over
10 chunks), sliced-W2 to exact ring samples after 1, 2, 4, 8 Euler steps and after the adaptive
ODE, beside the floor (sliced-W2 between two exact sample sets of the same size).  The figure
``docs/reflow_trajectories.png`` shows 1-RF and 2-RF trajectories from the same noise.

``floor``: RF and VP with the exact oracle score on both benchmark mixtures (``ring2d``,
``mix64``): for each deterministic solver the smallest NFE at the noise floor with the sampler benchmark's
machinery (``benchmarks/samplers.py``: reference sets, criterion, NFE ladder, sample sizes),
up to 50 NFE, for DDIM, DPM-Solver++(3M), UniPC and RK4 on their default grids and, except
UniPC, on a grid uniform in ``t``; and the adaptive ODE at rtol = atol = 1e-5.

``digits``: a ``digits-rf`` run and its reflow: straightness and FD-digits of 1000 Euler samples
(1, 2, 4, 8 steps) from the same noise.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

import scoresde as sd
from scoresde.config import build_dataset
from scoresde.metrics import fd_digits, sliced_wasserstein
from scoresde.nets import MLP
from scoresde.reflow import FlowPath, euler_flow
from scoresde.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
RING = sd.GaussianMixture.named("ring2d")
EULER_STEPS = (1, 2, 4, 8)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def train(model: torch.nn.Module, loss, data: Tensor, steps: int, seed: int) -> torch.nn.Module:
    """``steps`` AdamW steps (lr 2e-3, warm-up 100, clip 1, batch 512); returns the EMA (0.999) network."""
    trainer = Trainer(model, loss, data, batch_size=512, lr=2e-3, warmup_steps=100, ema_decay=0.999,
                      seed=seed, progress=False)
    trainer.fit(steps)
    return trainer.ema_model.eval().requires_grad_(False)


def sw2(x: Tensor, y: Tensor) -> float:
    return sliced_wasserstein(x, y, n_projections=256, generator=gen(0))


def chunked_straightness(velocity, x_noise: Tensor, chunks: int = 10) -> tuple[float, float]:
    """Straightness (100 Euler steps) and its standard error over ``chunks`` equal chunks."""
    values = torch.tensor([sd.straightness(velocity, z, steps=100) for z in x_noise.chunk(chunks)])
    return float(values.mean()), float(values.std() / math.sqrt(chunks))


def measure(model: torch.nn.Module, x_noise: Tensor, reference: Tensor) -> dict:
    """Straightness, Euler sliced-W2 at few steps and adaptive-ODE sliced-W2 of a velocity model."""
    sde = sd.RectifiedFlow()
    s, s_se = chunked_straightness(model, x_noise)
    out = {"straightness": s, "straightness_se": s_se}
    for steps in EULER_STEPS:
        out[f"sw2_euler_{steps}"] = sw2(euler_flow(model, x_noise, steps).end, reference)
    x, info = sd.sample(sd.score_fn_from_model(model, sde, "flow"), sde, x_T=x_noise, method="ode",
                        rtol=1e-5, atol=1e-5)
    out.update(sw2_ode=sw2(x, reference), nfe_ode=info.nfe)
    return out


def plot_trajectories(paths: dict[str, FlowPath], data: Tensor, path: Path) -> None:
    """Trajectories of each model from the same noise, over exact data samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(paths), figsize=(5 * len(paths), 5), sharex=True, sharey=True)
    for ax, (title, flow) in zip(axes, paths.items()):
        ax.scatter(data[:, 0], data[:, 1], s=2, c="0.8", label="data")
        states = flow.states.numpy()
        ax.plot(states[:, :, 0], states[:, :, 1], lw=0.6, alpha=0.7, c="tab:blue")
        ax.scatter(states[0, :, 0], states[0, :, 1], s=6, c="k", label="noise (t = 1)")
        ax.scatter(states[-1, :, 0], states[-1, :, 1], s=6, c="tab:red", label="end (t = 0)")
        ax.set_title(title)
        ax.set_aspect("equal")
    axes[0].legend(loc="lower left", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run_reflow(args: argparse.Namespace) -> dict:
    sde = sd.RectifiedFlow()
    torch.manual_seed(args.seed)  # network initialisation
    data, _ = RING.sample(args.train_n, generator=gen(args.seed))
    t0 = time.perf_counter()
    rf1 = train(MLP(2, width=128, depth=3), sd.FlowMatchingLoss(sde), data, args.fm_steps, args.seed)
    t_fm = time.perf_counter() - t0
    score1 = sd.score_fn_from_model(rf1, sde, "flow")
    t0 = time.perf_counter()
    couplings = sd.draw_couplings(score1, sde, (args.couplings, 2), method="ode", rtol=1e-5, atol=1e-5,
                                  generator=gen(args.seed + 1))
    t_couple = time.perf_counter() - t0
    t0 = time.perf_counter()
    rf2 = train(copy.deepcopy(rf1).requires_grad_(True), sd.ReflowLoss(sde), couplings.pairs(), args.reflow_steps,
                args.seed + 2)
    t_reflow = time.perf_counter() - t0

    n = args.eval_n
    x_noise = torch.randn(n, 2, generator=gen(args.seed + 3))
    reference = RING.sample(n, generator=gen(args.seed + 4))[0]
    floor = sw2(RING.sample(n, generator=gen(args.seed + 5))[0], reference)
    before, after = measure(rf1, x_noise, reference), measure(rf2, x_noise, reference)
    z = x_noise[:48]
    plot_trajectories({"1-RF (flow matching)": euler_flow(rf1, z, 100), "2-RF (one reflow)": euler_flow(rf2, z, 100)},
                      reference[:3000], ROOT / "docs" / "reflow_trajectories.png")
    return {
        "setup": {"model": "MLP(width=128, depth=3)", "fm_steps": args.fm_steps, "reflow_steps": args.reflow_steps,
                  "batch": 512, "train_n": args.train_n, "couplings": args.couplings,
                  "coupling_nfe": couplings.nfe, "eval_n": n, "seed": args.seed},
        "seconds": {"fm_training": t_fm, "couplings": t_couple, "reflow_training": t_reflow},
        "floor_sw2": floor,
        "1-rf": before,
        "2-rf": after,
        "straightness_factor": before["straightness"] / after["straightness"],
    }


FLOOR_SOLVERS = ("ddim", "dpm-solver++", "unipc", "ode-rk4")  # the sampler benchmark's fastest families
TIME_UNIFORM = ("ddim", "dpm-solver++", "ode-rk4")  # also run on RF's natural grid, uniform in t
FLOOR_MAX_NFE = 50
SAMPLE_SIZES = {"ring2d": 20000, "mix64": 10000}  # the sampler benchmark's defaults


def floor_plan(samplers) -> list[dict]:
    """The adaptive ODE at rtol = atol = 1e-5 and the solvers of ``FLOOR_SOLVERS`` over the sampler
    benchmark's NFE ladder up to ``FLOOR_MAX_NFE``, on their default grid and, for ``TIME_UNIFORM``,
    on a grid uniform in ``t``."""
    runs = [{"method": "ode", "rtol": 1e-5, "atol": 1e-5}]
    for method in FLOOR_SOLVERS:
        per_step = samplers.FAST[method]
        ladder = sorted({nfe // per_step for nfe in samplers.FAST_NFE if per_step <= nfe <= FLOOR_MAX_NFE})
        for extra in ({},) + (({"schedule": "time-uniform"},) if method in TIME_UNIFORM else ()):
            runs += [{"method": method, "steps": steps, **extra} for steps in ladder]
    return runs


def run_floor(args: argparse.Namespace) -> dict:
    """NFE to the floor per deterministic solver, RF beside VP, on both mixtures, with the sampler
    benchmark's reference sets, criterion and sample sizes (20000 on the ring, 10000 on mix64)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import samplers

    result: dict = {"criterion": "benchmarks/samplers.py: sw, tv within floor + 3 std and |gap| within 3 SE, "
                                 f"at that NFE and every larger tested NFE up to {FLOOR_MAX_NFE}"}
    for name, n in ((m, SAMPLE_SIZES[m]) for m in args.mixtures.split(",")):
        gmm = sd.GaussianMixture.named(name)
        for sde in (sd.RectifiedFlow(), sd.VPSDE()):
            ref = samplers.reference(gmm, sde, n)
            rows = []
            for spec in floor_plan(samplers):
                spec = dict(spec)
                rows.append(samplers.run_one(ref, sde, spec.pop("method"), n, **spec))
                print(name, type(sde).__name__, rows[-1]["method"], rows[-1]["nfe"], rows[-1]["at_floor"],
                      file=sys.stderr, flush=True)
            to_floor = {k: v["stable"] for k, v in samplers.nfe_to_floor(rows).items()}
            reached = {k: v for k, v in to_floor.items() if v is not None and k != "ode"}
            result[f"{name}/{type(sde).__name__}"] = {
                "n": n, "floor": ref.floor, "nfe_to_floor": to_floor,
                "fastest": min(reached.items(), key=lambda kv: kv[1], default=None),
                "adaptive_ode": rows[0]}
    return result


def run_digits(args: argparse.Namespace) -> dict:
    """A digits rectified-flow run (``scoresde train digits-rf``) beside its reflow (``scoresde
    reflow``): straightness and FD-digits of 1000 Euler samples at few steps from the same noise."""
    runs = {"1-RF": sd.load_run(args.run), "2-RF": sd.load_run(args.reflowed)}
    reference = build_dataset(runs["1-RF"].config, "test").x
    x_noise = torch.randn((1000,) + runs["1-RF"].sample_shape, generator=gen(args.seed))
    out: dict = {"runs": {k: str(r.directory) for k, r in runs.items()}, "n": 1000}
    for name, run in runs.items():
        row = {"straightness": chunked_straightness(run.model, x_noise)}
        for steps in EULER_STEPS:
            row[f"fd_digits_euler_{steps}"] = fd_digits(euler_flow(run.model, x_noise, steps).end, reference)
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=("reflow", "floor", "digits"))
    parser.add_argument("--fm-steps", type=int, default=3000)
    parser.add_argument("--reflow-steps", type=int, default=3000)
    parser.add_argument("--train-n", type=int, default=20000)
    parser.add_argument("--couplings", type=int, default=20000)
    parser.add_argument("--eval-n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixtures", default="ring2d,mix64", help="floor: comma-separated mixtures")
    parser.add_argument("--run", help="digits: a digits-rf run directory")
    parser.add_argument("--reflowed", help="digits: its reflow (scoresde reflow RUN --out DIR)")
    args = parser.parse_args()
    experiments = {"reflow": run_reflow, "floor": run_floor, "digits": run_digits}
    result = experiments[args.experiment](args)
    result["machine"] = {"platform": platform.platform(), "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "date": datetime.date.today().isoformat()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
