"""The peers beside us in one run, on exact Gaussian-mixture scores; prints JSON, writes docs/peers_nfe.png.

Every solver reads the same exact score of the mixture's marginal (``matmul_score_fn`` of the
sampler benchmark), so only the solver differs:

* ``vp-ode`` -- VP SDE (beta 0.1..20) probability flow.  diffusers' discrete schedulers
  (``num_train_timesteps=1000``, linear betas 1e-4..0.02, i.e. our VP) get an exact eps-prediction:
  at each call the scheduler's own noise level (``alphas_cumprod[t]`` for DDIM, ``sigmas[i]`` for
  the sigma-based ones) gives the log-SNR, our time ``t`` of that log-SNR (``t_of_log_snr``) and
  ``eps = -sigma(t) * score(x, t)``, where ``x`` is what ``scale_model_input`` hands the model.
  Against ours (``sd.sample``) on the VP SDE whose ``eps`` is the discrete chain's last level
  (``alphas_cumprod[0]``), so both end at one noise level.
* ``rf-ode`` -- the rectified flow.  facebookresearch's ``flow_matching`` ``ODESolver`` (torchdiffeq
  underneath) on the exact velocity, time converted at the boundary only (theirs runs noise
  ``s = 0`` to data ``s = 1``: ``t = 1 - s``, ``v = -u``), on ``s`` in ``[eps, 1 - eps]`` like our
  default grid; against ours on ``sd.RectifiedFlow()``.
* ``vp-sde`` -- the reverse VP SDE.  ``torchsde.sdeint`` in ``s = T - t`` with a ``BrownianInterval``
  (``euler`` on diagonal noise; ``srk`` on additive noise, where it is Rößler's SRA1, as ours);
  against ours.

Quality uses the sampler benchmark's floor machinery (``benchmarks/samplers.py``: sliced-W2, mode
TV, log-density gap, "at the floor" = all within 3 standard errors) against the exact law at each
run's final noise level.  Deterministic solvers also get ``gap_map``: the log-density gap against
the exact probability-flow map of the same start noise (paired per sample, so its standard error
is a fraction of the floor's): the solver's own error, without the start draw's fluctuation, which
is shared by every deterministic solver and can hide an error of the opposite sign.  NFE counts
model calls (torchsde's shape check on ``y0`` included).  Each method walks its NFE list upwards
and (by default) stops after two consecutive NFEs at the floor; its "NFE to floor" is the smallest
tested NFE from which every larger tested one is at the floor.
Wall time per NFE is measured around the solver call in the same run, with the exact oracle and
again with a free (zero) score, which leaves the solver's own cost; ``wall_ratio`` gives ours / peer
for each peer method and its counterpart.  All in one thread, same start noise for everyone.

    OMP_NUM_THREADS=1 python benchmarks/peers.py                       # defaults
    OMP_NUM_THREADS=1 python benchmarks/peers.py --datasets ring2d --nfe-ode 10 20 --nfe-sde 100
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

import scoresde as sd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from samplers import evaluate, matmul_score_fn, nfe_to_floor, reference  # noqa: E402  (the sampler benchmark's)

BETA_START, BETA_END, TRAIN_STEPS = 1e-4, 0.02, 1000  # = VPSDE(beta_min=0.1, beta_max=20) on N = 1000
DATASETS = {"ring2d": 20000, "mix64": 10000}
MAP_STEPS = 500  # DPM-Solver++(3M) steps of the exact probability-flow map (ExactMaps)


# -- the score: the exact oracle, or a free zero one for timing the solvers alone ------------------
ScoreMaker = Callable[[sd.LinearSDE], Callable[[Tensor, Tensor], Tensor]]


def free_score(sde: sd.LinearSDE) -> Callable[[Tensor, Tensor], Tensor]:
    """A zero score at no cost: times a solver's own work per model call."""
    return lambda x, t: torch.zeros_like(x)


# -- one run of a solver -----------------------------------------------------------------------------
@dataclass
class Spec:
    """A solver: ``run(steps) -> (x, nfe)``, score calls per step (to hit an NFE target), its pair."""

    impl: str  # "ours" or the peer package
    name: str
    run: Callable[[int], tuple[Tensor, int]]
    nfe_per_step: float = 1.0
    nfe_offset: int = 0  # e.g. -1 for a Heun whose last step is Euler to sigma = 0
    pair: str | None = None  # the name of our counterpart (for the wall-time ratio)
    target: str = "vp"  # the law it ends on: a key of Targets
    adaptive: bool = False  # one run over the whole span; the NFE list does not apply

    def steps_for(self, nfe: int) -> int:
        return 1 if self.adaptive else max(1, round((nfe - self.nfe_offset) / self.nfe_per_step))


def ours(make: ScoreMaker, sde: sd.LinearSDE, z: Tensor, method: str, seed: int = 1, **opts) -> Callable:
    """``sd.sample`` from ``x_T = z`` with ``steps`` steps of ``method`` (its default grid unless
    ``schedule`` is in ``opts``)."""

    def run(steps: int) -> tuple[Tensor, int]:
        x, info = sd.sample(make(sde), sde, x_T=z, method=method, steps=steps,
                            generator=torch.Generator().manual_seed(seed), **opts)
        return x, info.nfe

    return run


# -- diffusers ---------------------------------------------------------------------------------------
def _diffusers_scheduler(kind: str):
    import diffusers

    common = dict(num_train_timesteps=TRAIN_STEPS, beta_start=BETA_START, beta_end=BETA_END,
                  beta_schedule="linear", prediction_type="epsilon")
    table = {
        "ddim": (diffusers.DDIMScheduler, dict(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)),
        "dpm++2m-karras": (diffusers.DPMSolverMultistepScheduler,
                           dict(solver_order=2, use_karras_sigmas=True, final_sigmas_type="sigma_min")),
        "dpm++3m": (diffusers.DPMSolverMultistepScheduler, dict(solver_order=3, final_sigmas_type="sigma_min")),
        # steps uniform in log-SNR (our schedule="log-snr"); its grid already ends at sigma_min, and
        # final_sigmas_type="sigma_min" appends a zero-length step that 3M divides by (inf): use "zero"
        "dpm++3m-lu": (diffusers.DPMSolverMultistepScheduler,
                       dict(solver_order=3, use_lu_lambdas=True, final_sigmas_type="zero")),
        "unipc-3": (diffusers.UniPCMultistepScheduler, dict(solver_order=3, final_sigmas_type="sigma_min")),
        "euler-karras": (diffusers.EulerDiscreteScheduler, dict(use_karras_sigmas=True, final_sigmas_type="sigma_min")),
        "heun-karras": (diffusers.HeunDiscreteScheduler, dict(use_karras_sigmas=True)),
    }
    cls, extra = table[kind]
    return cls(**common, **extra)


def _log_snr_of(sched, i: int, timestep: Tensor) -> float:
    """The log-SNR of the scheduler's ``i``-th model call: ``-log sigmas[i]`` for sigma-based
    schedulers (``sigma = sqrt((1 - abar)/abar)``), ``log(abar/(1 - abar))/2`` for DDIM."""
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is not None:
        return -math.log(float(sigmas[i]))
    abar = float(sched.alphas_cumprod[int(timestep)])
    return 0.5 * math.log(abar / (1 - abar))


def diffusers_run(make: ScoreMaker, vp: sd.VPSDE, z: Tensor, kind: str) -> Callable:
    """The scheduler's own loop: ``scale_model_input``, one eps call, ``step``.  The eps model:
    our time ``t`` of the call's log-SNR, ``eps = -sigma(t) * score(x, t)``."""
    fn = make(vp)

    def run(steps: int) -> tuple[Tensor, int]:
        sched = _diffusers_scheduler(kind)
        sched.set_timesteps(steps)
        x = z * sched.init_noise_sigma
        calls = 0
        for i, ts in enumerate(sched.timesteps):
            if getattr(sched, "step_index", None) not in (None, i):
                raise RuntimeError(f"{kind}: step_index {sched.step_index} is not the loop index {i}")
            x_in = sched.scale_model_input(x, ts)  # the VP state alpha x_0 + sigma z
            t = vp.t_of_log_snr(torch.tensor(_log_snr_of(sched, i, ts), dtype=torch.float64))
            eps = -float(vp.sigma(t)) * fn(x_in, t.to(x_in.dtype).expand(x_in.shape[0]))
            calls += 1
            x = sched.step(eps, ts, x).prev_sample
        return x, calls

    return run


# -- flow_matching -----------------------------------------------------------------------------------
def flow_matching_run(make: ScoreMaker, rf: sd.RectifiedFlow, z: Tensor, method: str,
                      tol: float = 1e-5) -> Callable:
    """``ODESolver`` on ``v(x, s) = -u(x, 1 - s)``, ``u`` our probability-flow drift (the velocity)."""
    from flow_matching.solver import ODESolver

    fn = make(rf)
    calls = [0]

    def velocity(x: Tensor, t: Tensor, **_) -> Tensor:
        calls[0] += 1
        tb = (1 - t.to(torch.float64)).expand(x.shape[0])
        return -rf.probability_flow_drift(x, tb.to(x.dtype), fn(x, tb))

    solver = ODESolver(velocity_model=velocity)

    def run(steps: int) -> tuple[Tensor, int]:
        calls[0] = 0
        if method == "dopri5":
            grid = torch.tensor([rf.eps, 1 - rf.eps], dtype=torch.float64)
        else:
            grid = torch.linspace(rf.eps, 1 - rf.eps, steps + 1, dtype=torch.float64)
        x = solver.sample(z, step_size=None, method=method, atol=tol, rtol=tol, time_grid=grid.to(z.dtype))
        return x, calls[0]

    return run


# -- torchsde ----------------------------------------------------------------------------------------
class _ReverseVP(torch.nn.Module):
    """The reverse VP SDE in ``s = T - t``: ``dy = -[f(y, t) - g^2 s(y, t)] ds + g(t) dW``.  ``g`` is
    given as ``"diagonal"`` noise ((B, d), elementwise) or ``"additive"`` ((B, d, d) = g I, which
    makes torchsde's ``srk`` Rößler's SRA1 instead of its 4-stage diagonal scheme)."""

    sde_type = "ito"

    def __init__(self, make: ScoreMaker, sde: sd.LinearSDE, noise_type: str) -> None:
        super().__init__()
        self.fn, self.sde, self.calls, self.noise_type = make(sde), sde, 0, noise_type

    def _t(self, s: Tensor, y: Tensor) -> Tensor:
        return (self.sde.T - s.to(torch.float64)).clamp(0, self.sde.T).expand(y.shape[0])

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        t = self._t(s, y)
        return -self.sde.reverse_drift(y, t.to(y.dtype), self.fn(y, t))

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        g = float(self.sde.g(self._t(s, y)[0]))
        if self.noise_type == "diagonal":
            return torch.full_like(y, g)
        return (g * torch.eye(y.shape[1], dtype=y.dtype, device=y.device)).expand(y.shape[0], -1, -1)


def torchsde_run(make: ScoreMaker, sde: sd.LinearSDE, z: Tensor, method: str, seed: int = 1) -> Callable:
    """``sdeint`` from ``s = 0`` to ``T - eps``; ``srk`` on additive noise, ``euler`` on diagonal."""
    import torchsde

    def run(steps: int) -> tuple[Tensor, int]:
        span = sde.T - sde.eps
        model = _ReverseVP(make, sde, "additive" if method == "srk" else "diagonal")
        levy = "space-time" if method == "srk" else "none"  # only SRA1 needs the space-time integral
        bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=tuple(z.shape), dtype=z.dtype, entropy=seed,
                                       levy_area_approximation=levy)
        ts = torch.tensor([0.0, span], dtype=z.dtype)
        # dt a hair above span/steps so float rounding never adds a last sliver of a step
        x = torchsde.sdeint(model, z, ts, bm=bm, method=method, dt=span / steps * (1 + 1e-6))[-1]
        return x, model.calls

    return run


# -- the families ------------------------------------------------------------------------------------
def discrete_eps() -> float:
    """Our VP time at the log-SNR of ``alphas_cumprod[0] = 1 - beta_start`` (diffusers' last level)."""
    lam = 0.5 * math.log((1 - BETA_START) / BETA_START)
    return float(sd.VPSDE().t_of_log_snr(torch.tensor(lam, dtype=torch.float64)))


def vp_ode_specs(make: ScoreMaker, sde: sd.VPSDE, z: Tensor) -> list[Spec]:
    D = lambda kind: diffusers_run(make, sde, z, kind)  # noqa: E731
    O = lambda m, **o: ours(make, sde, z, m, **o)  # noqa: E731
    return [
        Spec("diffusers", "ddim", D("ddim"), pair="ddim"),
        Spec("diffusers", "dpm++2m-karras", D("dpm++2m-karras"), pair="dpm-solver++2m"),
        Spec("diffusers", "dpm++3m", D("dpm++3m"), pair="dpm-solver++3m"),
        Spec("diffusers", "dpm++3m-lu", D("dpm++3m-lu"), pair="dpm-solver++3m/log-snr", target="vp_p0"),
        Spec("diffusers", "unipc-3", D("unipc-3"), pair="unipc"),
        Spec("diffusers", "euler-karras", D("euler-karras"), pair="ddim"),  # Euler in sigma/alpha = DDIM
        # ends with an Euler step to sigma = 0 (one NFE less): its law is p_0
        Spec("diffusers", "heun-karras", D("heun-karras"), 2.0, -1, pair="heun", target="vp_p0"),
        Spec("ours", "ddim", O("ddim")),
        # our DDIM on the other grids; time-uniform is diffusers' `trailing` spacing
        *(Spec("ours", f"ddim/{g}", O("ddim", schedule=g)) for g in ("time-uniform", "log-snr", "karras")),
        Spec("ours", "dpm-solver++2m", O("dpm-solver++2m")),
        Spec("ours", "dpm-solver++3m", O("dpm-solver++3m")),
        Spec("ours", "dpm-solver++3m/log-snr", O("dpm-solver++3m", schedule="log-snr")),  # diffusers' lu grid
        Spec("ours", "unipc", O("unipc")),
        Spec("ours", "heun", O("heun"), 2.0),
    ]


def rf_ode_specs(make: ScoreMaker, rf: sd.RectifiedFlow, z: Tensor, tol: float) -> list[Spec]:
    F = lambda m: flow_matching_run(make, rf, z, m, tol)  # noqa: E731
    O = lambda m, **o: ours(make, rf, z, m, **o)  # noqa: E731
    return [
        Spec("flow_matching", "euler", F("euler"), pair="ode-euler", target="rf"),
        Spec("flow_matching", "midpoint", F("midpoint"), 2.0, pair="ode-midpoint", target="rf"),
        Spec("flow_matching", f"dopri5@{tol:g}", F("dopri5"), pair=f"ode@{tol:g}", target="rf", adaptive=True),
        Spec("ours", "ode-euler", O("ode-euler", schedule="time-uniform"), target="rf"),
        Spec("ours", "ode-heun", O("ode-heun", schedule="time-uniform"), 2.0, target="rf"),
        Spec("ours", "ode-midpoint", O("ode-midpoint", schedule="time-uniform"), 2.0, target="rf"),
        Spec("ours", f"ode@{tol:g}", O("ode", rtol=tol, atol=tol), target="rf", adaptive=True),
        Spec("ours", "dpm-solver++3m", O("dpm-solver++3m"), target="rf"),
    ]


def vp_sde_specs(make: ScoreMaker, sde: sd.VPSDE, z: Tensor) -> list[Spec]:
    S = lambda m: torchsde_run(make, sde, z, m)  # noqa: E731
    O = lambda m, **o: ours(make, sde, z, m, **o)  # noqa: E731
    return [
        # torchsde calls f once more to check shapes, and SRA1 takes 3 calls per step (no reuse)
        Spec("torchsde", "euler", S("euler"), 1.0, 1, pair="euler-maruyama"),
        Spec("torchsde", "srk", S("srk"), 3.0, 1, pair="srk"),
        Spec("ours", "euler-maruyama", O("euler-maruyama", schedule="time-uniform")),
        Spec("ours", "srk", O("srk", schedule="time-uniform"), 2.0),
        Spec("ours", "ancestral", O("ancestral")),
    ]


# -- the sweep ---------------------------------------------------------------------------------------
class ExactMaps(dict):
    """The exact probability-flow map of the start noise ``z`` per final law (a key of
    :class:`Targets`), built on first use: DPM-Solver++(3M) with :data:`MAP_STEPS` steps in float64
    (its mean log-density is within 2e-4 nats (ring2d) and 1.6e-3 (mix64) of a float64 dopri5 solve
    at rtol = atol = 1e-9, far below the paired standard errors of ``gap_map``)."""

    def __init__(self, refs: "Targets", z: Tensor) -> None:
        super().__init__()
        self.refs, self.z = refs, z

    def __missing__(self, key: str) -> Tensor:
        sde = self.refs.sdes[key]
        score = matmul_score_fn(self.refs.gmm, sde)
        self[key] = sd.sample(score, sde, x_T=self.z.double(), method="dpm-solver++", steps=MAP_STEPS)[0]
        return self[key]


def map_gap(ref, exact: Tensor, x: Tensor) -> dict:
    """``E[log p(exact)] - E[log p(x)]`` under the final law, paired per sample, and its standard error."""
    if not torch.isfinite(x).all():
        return {"gap_map": math.inf, "gap_map_se": 0.0}
    d = ref.target.log_prob(exact) - ref.target.log_prob(x.double())
    return {"gap_map": float(d.mean()), "gap_map_se": float(d.std()) / math.sqrt(d.numel())}


class Targets(dict):
    """The sampler benchmark's :func:`reference` (true sets and floors) per final law, built on first
    use: ``"vp"`` (VP at the discrete chain's last level), ``"vp_p0"`` (p_0), ``"rf"`` (RF at eps)."""

    def __init__(self, gmm: sd.GaussianMixture, sdes: dict[str, sd.LinearSDE], n: int, pairs: int) -> None:
        super().__init__()
        self.gmm, self.sdes, self.n, self.pairs = gmm, sdes, n, pairs

    def __missing__(self, key: str):
        self[key] = reference(self.gmm, self.sdes[key], self.n, pairs=self.pairs)
        return self[key]


def sweep(spec: Spec, refs: Targets, maps: ExactMaps | None, nfes: list[int], early_stop: bool) -> list[dict]:
    """Run ``spec`` at each NFE target (adaptive solvers once); with ``early_stop``, stop once two
    consecutive targets are at the floor (one hit alone can be a sign change of the gap).  With
    ``maps`` (deterministic solvers) each row also gets :func:`map_gap`."""
    rows: list[dict] = []
    targets = nfes[:1] if spec.adaptive else nfes
    with torch.no_grad():  # warm-up (imports, first-call allocations) outside the timed runs
        spec.run(spec.steps_for(targets[0]))
    for nfe in targets:
        steps = spec.steps_for(nfe)
        t0 = time.perf_counter()
        with torch.no_grad():
            x, used = spec.run(steps)
        wall = time.perf_counter() - t0
        row = {"impl": spec.impl, "method": spec.name, "target": spec.target, "steps": steps, "nfe": used,
               "wall_s": round(wall, 3), "ms_per_nfe": round(1e3 * wall / used, 3), **evaluate(refs[spec.target], x)}
        if maps is not None:
            row |= map_gap(refs[spec.target], maps[spec.target], x)
        rows.append({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()})
        to_map = f" (to the map {row['gap_map']:+.4f})" if "gap_map" in row else ""
        print(f"  {spec.impl:>13} {spec.name:<16} nfe {used:5d}  sw {row['sw']:.4f} tv {row['tv']:.4f} "
              f"gap {row['gap']:+.4f}±{row['gap_se']:.4f}{to_map}  at_floor={row['at_floor']}  {wall:.1f}s",
              file=sys.stderr, flush=True)
        if early_stop and len(rows) >= 2 and rows[-1]["at_floor"] and rows[-2]["at_floor"]:
            break
    return rows


def overhead_ms_per_nfe(spec: Spec, nfe: int, repeats: int) -> float:
    """Best-of-``repeats`` wall ms per NFE of ``spec`` built on a free score (a zero tensor): the
    solver's own cost per model call, which the shared oracle's cost hides."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            _, used = spec.run(spec.steps_for(nfe))
        best = min(best, 1e3 * (time.perf_counter() - t0) / used)
    return best


def wall_ratios(specs: list[Spec], free: list[Spec], runs: dict, nfe: int, repeats: int) -> list[dict]:
    """Per peer method and its counterpart: median wall ms per NFE in the quality runs (exact oracle)
    and the solver overhead ms per NFE (free score); ``ratio = ours / peer`` for each."""
    cost = {(f.impl, f.name): overhead_ms_per_nfe(f, nfe, repeats) for f in free}
    out = []
    for spec in specs:
        if spec.impl == "ours" or spec.pair not in runs["ours"]:
            continue
        peer = statistics.median(r["ms_per_nfe"] for r in runs[spec.impl][spec.name])
        mine = statistics.median(r["ms_per_nfe"] for r in runs["ours"][spec.pair])
        c_peer, c_mine = cost[(spec.impl, spec.name)], cost[("ours", spec.pair)]
        out.append({"peer": f"{spec.impl}:{spec.name}", "ours": spec.pair,
                    "peer_ms_per_nfe": round(peer, 3), "ours_ms_per_nfe": round(mine, 3),
                    "ratio": round(mine / peer, 3),
                    "peer_overhead_ms_per_nfe": round(c_peer, 3), "ours_overhead_ms_per_nfe": round(c_mine, 3),
                    "overhead_ratio": round(c_mine / c_peer, 3)})
    return out


def run_family(label: str, specs: list[Spec], free: list[Spec], refs: Targets, maps: ExactMaps | None,
               nfes: list[int], args) -> dict:
    print(f"[{label}]", file=sys.stderr, flush=True)
    runs: dict[str, dict[str, list[dict]]] = {"ours": {}}
    for spec in specs:
        runs.setdefault(spec.impl, {})[spec.name] = sweep(spec, refs, maps, nfes, not args.no_early_stop)
    # the smallest tested NFE from which every larger tested one is at the floor (None: not reached)
    stable = {f"{impl}:{name}": nfe_to_floor(rows)[name]["stable"]
              for impl, by in runs.items() for name, rows in by.items()}
    return {
        "runs": [r for by_name in runs.values() for rows in by_name.values() for r in rows],
        "nfe_to_floor": stable,
        "wall_ratio": wall_ratios(specs, free, runs, args.overhead_nfe, args.overhead_repeats),
    }


def run_dataset(name: str, n: int, args) -> dict:
    gmm = sd.GaussianMixture.named(name)
    vp, rf = sd.VPSDE(eps=discrete_eps()), sd.RectifiedFlow()
    z = torch.randn(n, gmm.dim, generator=torch.Generator().manual_seed(args.seed))
    refs = Targets(gmm, {"vp": vp, "vp_p0": sd.VPSDE(eps=1e-9), "rf": rf}, n, args.pairs)
    maps = ExactMaps(refs, z)
    out = {"n": n, "dim": gmm.dim, "vp_eps": vp.eps, "rf_eps": rf.eps}
    oracle = lambda s: matmul_score_fn(gmm, s)  # noqa: E731
    families = {  # label -> (specs from a score maker, NFE list, exact maps for deterministic solvers)
        "vp-ode": (lambda s: vp_ode_specs(s, vp, z), args.nfe_ode, maps),
        "rf-ode": (lambda s: rf_ode_specs(s, rf, z, args.rf_tol), args.nfe_ode, maps),
        "vp-sde": (lambda s: vp_sde_specs(s, vp, z), args.nfe_sde, None),
    }
    for label, (build, nfes, family_maps) in families.items():
        if label in args.families:
            out[label] = run_family(f"{name} {label}", build(oracle), build(free_score), refs, family_maps, nfes, args)
    out["floors"] = {key: ref.floor for key, ref in refs.items()}
    return out


# -- the plot ----------------------------------------------------------------------------------------
def excess(row: dict, floor: dict) -> float:
    """The worst of the three criteria in units of its allowance (<= 1: at the floor):
    ``max(sw / (floor + 3 std), tv / (floor + 3 std), |gap| / (3 se))``."""
    if not math.isfinite(row["sw"]):
        return math.inf
    return max(row["sw"] / (floor["sw"] + 3 * floor["sw_std"]), row["tv"] / (floor["tv"] + 3 * floor["tv_std"]),
               abs(row["gap"]) / (3 * row["gap_se"]))


def plot(results: dict, path: Path) -> None:
    """:func:`excess` against NFE, one panel per (dataset, family); ours solid, peers dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fams = [f for f in ("vp-ode", "rf-ode", "vp-sde") if any(f in results["datasets"][d] for d in names)]
    fig, axes = plt.subplots(len(names), len(fams), figsize=(5.2 * len(fams), 4 * len(names)), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for i, d in enumerate(names):
        for j, fam in enumerate(fams):
            ax = axes[i][j]
            if fam not in results["datasets"][d]:
                ax.set_visible(False)
                continue
            floors, rows = results["datasets"][d]["floors"], results["datasets"][d][fam]["runs"]
            for c, key in enumerate(dict.fromkeys((r["impl"], r["method"]) for r in rows)):
                sel = [r for r in rows if (r["impl"], r["method"]) == key]
                ys = [min(excess(r, floors[r["target"]]), 1e3) for r in sel]
                ax.plot([r["nfe"] for r in sel], ys, "-o" if key[0] == "ours" else "--s", ms=3.5,
                        color=colors[c % len(colors)], label=f"{key[0]}: {key[1]}")
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set(xscale="log", yscale="log", title=f"{d} {fam}", xlabel="NFE",
                   ylabel="worst criterion / its allowance (<= 1: floor)")
            ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--n-ring", type=int, default=DATASETS["ring2d"])
    p.add_argument("--n-mix", type=int, default=DATASETS["mix64"])
    p.add_argument("--families", nargs="+", default=["vp-ode", "rf-ode", "vp-sde"])
    p.add_argument("--nfe-ode", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--nfe-sde", type=int, nargs="+", default=[100, 300])
    p.add_argument("--rf-tol", type=float, default=1e-5, help="rtol = atol of both dopri5 solves")
    p.add_argument("--pairs", type=int, default=5, help="pairs of true sets for each floor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-early-stop", action="store_true", help="run every NFE even past the floor")
    p.add_argument("--overhead-repeats", type=int, default=2, help="best-of runs for the free-score timing")
    p.add_argument("--overhead-nfe", type=int, default=100, help="NFE of the free-score timing runs")
    p.add_argument("--plot", default=str(Path(__file__).resolve().parents[1] / "docs" / "peers_nfe.png"))
    args = p.parse_args(argv)
    sizes = {"ring2d": args.n_ring, "mix64": args.n_mix}
    import diffusers
    import flow_matching
    import torchsde

    t0 = time.perf_counter()
    results = {
        "benchmark": "peers", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "versions": {"diffusers": diffusers.__version__, "flow_matching": getattr(flow_matching, "__version__", "?"),
                     "torchsde": torchsde.__version__},
        "args": vars(args), "datasets": {},
    }
    for name in args.datasets:
        results["datasets"][name] = run_dataset(name, sizes[name], args)
    results["total_s"] = round(time.perf_counter() - t0, 1)
    if args.plot:
        plot(results, Path(args.plot))
    print(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
