"""``presets``, ``train`` and ``run`` (the README's main job)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .. import config as C
from .._io import write_json
from ..runs import load_run
from .args import device_of, sampler_options
from .runs import evaluate_run, plot_loss, train_run


def _cmd_presets(args: argparse.Namespace) -> int:
    for name in C.preset_names():
        desc = " ".join(C.load_raw(name).get("description", "").split())
        print(f"{name:28s} {desc}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = C.load_config(args.config, args.overrides)
    out = Path(args.out)
    train_run(cfg, out, resume=args.resume, progress=not args.quiet, device=device_of(args.device))
    print(f"trained {cfg.training.steps} steps into {out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = C.load_config(args.preset, args.overrides)
    out = Path(args.out)
    t0 = time.perf_counter()
    train_run(cfg, out, resume=True, progress=not args.quiet, device=device_of(args.device))
    plot_loss(out, out / "loss.png")
    train_s = time.perf_counter() - t0
    run = load_run(out, device=device_of(args.device))
    result = evaluate_run(run, cfg.evaluation.metrics, out, method=args.method, steps=args.steps,
                          nfe=args.nfe, seed=args.seed, clip=args.clip_denoised, progress=not args.quiet)
    result["train_seconds"] = round(train_s, 1)
    write_json(out / "results.json", result)
    print(json.dumps(result, indent=1))
    print(f"samples: {out / 'samples.png'}; figures: {out / 'results.json'}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``presets``, ``train`` and ``run``."""
    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("train", help="train a score model from a preset or YAML file",
                       description="Train a score model. Example: scoresde train digits-vp training.steps=500 --out runs/a")
    p.add_argument("config", help="preset name (see `scoresde presets`) or path to a YAML file")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. training.steps=500 sde.beta_max=10")
    p.add_argument("--out", required=True, help="run folder to create (config.yaml, checkpoints, logs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest valid checkpoint")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("run", help="the README's main job: train, sample, evaluate",
                       description="Train a preset (resuming if --out holds it), sample with a fast sampler and "
                                   "write samples.png and results.json with test bits/dim and FD-digits.")
    p.add_argument("preset", nargs="?", default="digits-vp", help="preset or YAML (default digits-vp)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    p.add_argument("--out", default="runs/digits-vp", help="run folder (default runs/digits-vp)")
    sampler_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of sampling and evaluation noise")
    p.set_defaults(func=_cmd_run)
