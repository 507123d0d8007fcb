"""``scoresde reflow``: retrain a rectified-flow run on the couplings of its own ODE.

    scoresde reflow RUN --out DIR [--couplings N] [--steps N] [--method ode] [--seed S] [--resume]

``RUN`` is a run folder with the rectified flow and the flow-matching loss (e.g. the
``digits-rf`` preset).  The command

1. draws ``--couplings`` pairs ``(x_noise, x_data)`` with the run's probability-flow ODE
   (:func:`scoresde.reflow.draw_couplings`, EMA weights) and stores them in
   ``DIR/couplings.safetensors`` (reused on ``--resume``);
2. trains a copy of the run's network, initialised from its EMA weights, with
   :class:`scoresde.reflow.ReflowLoss` on those pairs, with the run's training section
   (``--steps`` overrides ``training.steps``), into ``DIR`` (``config.yaml`` and checkpoints as
   ``scoresde train`` writes them, so ``scoresde sample|eval DIR`` work unchanged);
3. prints the straightness of the run and of the reflowed network on the same noise
   (:func:`scoresde.reflow.straightness`, 100 Euler steps) as JSON and writes it to
   ``DIR/reflow.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .. import checkpoint
from .. import config as C
from .._io import atomic_write, write_json
from ..reflow import Couplings, ReflowLoss, draw_couplings, straightness
from ..runs import CONFIG_FILE, Run, load_run
from ..sde import RectifiedFlow
from .args import device_of, nonnegative_int, positive_int
from .runs import build_trainer

COUPLINGS_FILE = "couplings.safetensors"


def load_or_draw_couplings(run: Run, path: Path, n: int, *, method: str, steps: int | None, seed: int,
                           progress: bool) -> Couplings:
    """The couplings stored at ``path``, or ``n`` new ones drawn from ``run`` and stored there."""
    if path.is_file():
        stored = load_file(str(path))
        return Couplings(stored["x_noise"], stored["x_data"], int(stored["nfe"]))
    generator = torch.Generator(device=run.device).manual_seed(seed)
    with torch.inference_mode():
        pairs = draw_couplings(run.score_fn, run.sde, (n,) + run.sample_shape, method=method, steps=steps,
                               generator=generator, device=run.device, batch_size=run.config.sampling.batch_size,
                               progress=progress)
    tensors = {"x_noise": pairs.x_noise.cpu().contiguous(), "x_data": pairs.x_data.cpu().contiguous(),
               "nfe": torch.tensor(pairs.nfe)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))
    return Couplings(pairs.x_noise.cpu(), pairs.x_data.cpu(), pairs.nfe)


def reflow_run(source: str | Path, out: str | Path, *, couplings: int = 10_000, steps: int | None = None,
               method: str = "ode", sampler_steps: int | None = None, seed: int = 0, resume: bool = False,
               straightness_n: int = 256, progress: bool = True,
               device: torch.device | str = "cpu") -> dict[str, Any]:
    """Reflow the rectified-flow run ``source`` into ``out`` (module docstring); returns the figures."""
    run = load_run(source, device=device)
    if not isinstance(run.sde, RectifiedFlow) or run.loss.parameterization.kind != "flow":
        raise ValueError(f"{source}: reflow needs a rectified-flow run trained with the fm loss (e.g. preset digits-rf)")
    out = Path(out)
    if (out / CONFIG_FILE).is_file() and not resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    with checkpoint.lock_directory(out):  # one writer per folder, as for `train`
        pairs = load_or_draw_couplings(run, out / COUPLINGS_FILE, couplings, method=method, steps=sampler_steps,
                                       seed=seed, progress=progress)
        cfg = C.load_config(run.config.to_dict(), [f"training.steps={steps}"] if steps is not None else [])
        C.save_config(cfg, out / CONFIG_FILE)
        model = C.build_model(cfg)
        model.load_state_dict(run.model.state_dict())
        reflow_info = {"source": str(source), "source_step": run.step, "couplings": len(pairs),
                       "coupling_method": method, "coupling_nfe": pairs.nfe}
        # --resume: from the newest valid checkpoint, or from step 0 on the stored couplings when the
        # start failed before its first (so a failed start never leaves the folder stuck)
        trainer = build_trainer(cfg, model, ReflowLoss(run.sde, **cfg.loss.options), pairs.pairs(), out,
                                resume="auto" if resume else False,
                                progress=progress, device=device, config={**cfg.to_dict(), "reflow": reflow_info})
        trainer.fit(cfg.training.steps)
    x_noise = run.sde.prior_sample((straightness_n,) + run.sample_shape, device=run.device,
                                   generator=torch.Generator(device=run.device).manual_seed(seed + 1))
    reflowed = trainer.ema_model.eval()
    result = {**reflow_info, "steps": cfg.training.steps,
              "straightness_before": straightness(run.model, x_noise, steps=100),
              "straightness_after": straightness(reflowed, x_noise, steps=100)}
    result["straightness_factor"] = result["straightness_before"] / result["straightness_after"]
    write_json(out / "reflow.json", result)
    return result


def _cmd_reflow(args: argparse.Namespace) -> int:
    result = reflow_run(args.run, args.out, couplings=args.couplings, steps=args.steps, method=args.method,
                        sampler_steps=args.sampler_steps, seed=args.seed, resume=args.resume,
                        progress=not args.quiet, device=device_of(args.device))
    print(json.dumps(result, indent=1))
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``reflow``."""
    p = sub.add_parser("reflow", help="retrain a rectified-flow run on its own ODE couplings (straighter paths)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder of a rectified-flow run (e.g. trained from preset digits-rf)")
    p.add_argument("--out", required=True, help="run folder to create for the reflowed network")
    p.add_argument("--couplings", type=positive_int, default=10_000, help="number of (noise, data) pairs (default 10000)")
    p.add_argument("--steps", type=positive_int, help="training steps (default: the run's training.steps)")
    p.add_argument("--method", default="ode", help="deterministic sampler drawing the couplings (default ode)")
    p.add_argument("--sampler-steps", type=positive_int, help="steps of --method (default: the method's own)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the couplings' noise (default 0)")
    p.add_argument("--resume", action="store_true", help="continue a reflow run in --out (from step 0 on its "
                   "stored couplings when a failed start left no checkpoint)")
    p.set_defaults(func=_cmd_reflow)
