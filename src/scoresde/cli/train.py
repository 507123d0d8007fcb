"""``presets``, ``config``, ``train`` and ``run`` (the README's main job)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

from .. import config as C
from .._io import write_json
from ..runs import load_run
from .args import device_of, nonnegative_int, sampler_options
from .runs import evaluate_run, plot_loss, train_run


def _cmd_presets(args: argparse.Namespace) -> int:
    for name in C.preset_names():
        desc = " ".join(C.load_raw(name).get("description", "").split())
        print(f"{name:28s} {desc}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = C.load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    if args.keys:
        rows = [(key, json.dumps(value), doc) for key, value, doc in C.describe(cfg) if key != "description"]
        width = max(len(k) + len(v) for k, v, _ in rows) + 3
        print("\n# every key (dotted.key=value overrides any of them):")
        for key, value, doc in rows:
            print(f"# {f'{key} = {value}':{width}s} {doc}".rstrip())
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = C.load_config(args.config, args.overrides)
    out = Path(args.out)
    resume = "auto" if args.resume_or_start else args.resume
    train_run(cfg, out, resume=resume, progress=not args.quiet, device=device_of(args.device))
    print(f"trained {cfg.training.steps} steps into {out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = C.load_config(args.preset, args.overrides)
    out = Path(args.out)
    t0 = time.perf_counter()
    train_run(cfg, out, resume="auto", progress=not args.quiet, device=device_of(args.device))
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


def _config_arguments(p: argparse.ArgumentParser, name: str = "config") -> None:
    p.add_argument(name, help="preset name (see `scoresde presets`) or path to a YAML file")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. training.steps=500 sde.beta_max=10 "
                                                "(a new sde/model/loss name starts from that one's defaults)")


def add_parsers(sub: Any) -> None:
    """Register ``presets``, ``config``, ``train`` and ``run``."""
    p = sub.add_parser("presets", help="list the shipped presets")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("config", help="print the resolved configuration of a preset with overrides",
                       description="Print the configuration `scoresde train` would use, as YAML, then every key "
                                   "with its value and meaning. Example: scoresde config digits-vp sde.name=ve")
    _config_arguments(p)
    p.add_argument("--no-keys", dest="keys", action="store_false", help="the YAML only")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("train", help="train a score model from a preset or YAML file",
                       description="Train a score model. Example: scoresde train digits-vp training.steps=500 --out runs/a. "
                                   "Only one trainer at a time may use a run folder (it is locked).")
    _config_arguments(p)
    p.add_argument("--out", required=True, help="run folder to create (config.yaml, checkpoints, logs)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in --out from its newest valid checkpoint (an error if there is none)")
    mode.add_argument("--resume-or-start", action="store_true",
                      help="continue the run in --out when it has a valid checkpoint, else start it from step 0")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("run", help="the README's main job: train, sample, evaluate",
                       description="Train a preset (continuing the run in --out when it has a valid checkpoint), "
                                   "sample with a fast sampler and write samples.png and results.json with test "
                                   "bits/dim and FD-digits.")
    p.add_argument("preset", nargs="?", default="digits-vp", help="preset or YAML (default digits-vp)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    p.add_argument("--out", default="runs/digits-vp", help="run folder (default runs/digits-vp)")
    sampler_options(p)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of sampling and evaluation noise")
    p.set_defaults(func=_cmd_run)
