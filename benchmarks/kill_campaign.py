"""The kill campaign: SIGKILL real training processes at chosen and at random moments, recover
the way the error messages say, and count what survives.

For each kill: a fresh run folder is trained (``scoresde train``, forked so that a kill costs no
import time; ``tests/fixtures/faults.py``) and killed at one moment — while ``config.yaml`` is
written, while a checkpoint's tensors or sidecar are written, in the middle of rotation, half-way
through a log record, between checkpoints, or after a random delay. Recovery is ``train
--resume``; when that says there is no run or no valid checkpoint to resume, ``train
--resume-or-start``, as the message suggests. A recovery *worked* when it exits 0 and its final
checkpoint is bit-identical to the uninterrupted run's, with the log holding each record once;
a run is *stuck* when neither command gets it to that state. Steps lost = the optimizer step the
killed process had reached minus the step the recovery resumed from.

    python benchmarks/kill_campaign.py [--preset toy-2d] [--per-moment 4] [--random 12] [--seed 0]

Prints one JSON document (per moment and in total).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import faults
import torch

from scoresde import checkpoint, cli

STEPS, CKPT_EVERY, LOG_EVERY, KEEP = 24, 6, 3, 2
TINY = {"toy-2d": ["training.batch_size=32", "model.width=16", "model.depth=2", "data.n=256"],
        "digits-vp": ["training.batch_size=8", "model.nf=8", "model.ch_mult=[1]", "model.num_res_blocks=1",
                      "model.attn_resolutions=[]"]}


def _argv(preset: str, out: Path, *extra: str) -> list[str]:
    return ["train", preset, *TINY[preset], f"training.steps={STEPS}", f"training.checkpoint_every={CKPT_EVERY}",
            f"training.log_every={LOG_EVERY}", f"training.keep={KEEP}", *extra, "--out", str(out)]


def _final(out: Path) -> dict[str, torch.Tensor] | None:
    try:
        return checkpoint.load(out / f"ckpt_{STEPS:08d}.json").tensors
    except checkpoint.CheckpointError:
        return None


def _log_steps(out: Path) -> list[int] | None:
    try:
        return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    except (OSError, ValueError, KeyError):
        return None


def _occurrences(moment: str, k: int) -> list[int]:
    """``k`` occurrences of a moment spread over the run (config.yaml is written once)."""
    count = {"config": 1, "tensors": STEPS // CKPT_EVERY, "sidecar": STEPS // CKPT_EVERY,
             "rotation": STEPS // CKPT_EVERY - KEEP, "log": STEPS // LOG_EVERY, "step": STEPS - 1}[moment]
    if count <= k:
        return list(range(1, count + 1))
    return sorted({1 + round(i * (count - 1) / (k - 1)) for i in range(k)})


def one_kill(preset: str, root: Path, reference: Path, moment: str, nth: int = 1,
             kill_after: float | None = None) -> dict:
    out = root / f"{moment}-{nth if kill_after is None else round(kill_after, 3)}"
    status = faults.run_cli(_argv(preset, out), None if moment == "random" else moment, nth, kill_after=kill_after)
    reached = faults.last_step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latest = checkpoint.load_latest(out) if out.is_dir() else None
    resumed_from = latest.step if latest is not None else 0
    commands = []
    code = None
    if status == "killed":
        for flag in ("--resume", "--resume-or-start"):
            code = faults.run_cli(_argv(preset, out, flag))
            commands.append(flag)
            if code == 0:
                break
    ref, got = _final(reference), _final(out) if out.is_dir() else None
    identical = got is not None and ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    log_ok = _log_steps(out) == _log_steps(reference)
    litter = sorted(p.name for p in out.glob(".*.tmp")) if out.is_dir() else []
    shutil.rmtree(out, ignore_errors=True)
    return {"moment": moment, "nth": nth, "kill_after_s": kill_after, "killed": status == "killed",
            "exit": status, "reached_step": reached, "resumed_from": resumed_from,
            "steps_lost": max(reached - resumed_from, 0), "recovery": commands, "recovery_exit": code,
            "bit_identical": identical, "log_once": log_ok, "litter_left": litter,
            "worked": code == 0 and identical and log_ok and not litter}


def summarise(rows: list[dict]) -> dict:
    killed = [r for r in rows if r["killed"]]
    lost = [r["steps_lost"] for r in killed]
    return {"kills_tried": len(rows), "killed": len(killed),
            "resumed_with_resume": sum(r["worked"] and r["recovery"] == ["--resume"] for r in killed),
            "needed_resume_or_start": sum(r["worked"] and r["recovery"][-1:] == ["--resume-or-start"] for r in killed),
            "worked": sum(r["worked"] for r in killed), "stuck": sum(not r["worked"] for r in killed),
            "steps_lost_max": max(lost, default=0), "steps_lost_mean": round(sum(lost) / len(lost), 2) if lost else 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=tuple(TINY), default="toy-2d")
    parser.add_argument("--per-moment", type=int, default=4, help="kills per chosen moment (spread over the run)")
    parser.add_argument("--random", type=int, default=12, help="kills after a random delay")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random delays")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="kill_campaign_"))
    try:
        reference = root / "reference"
        t0 = time.perf_counter()
        if cli.main(["--quiet", *_argv(args.preset, reference)]) != 0:  # in this process: warms the imports
            raise SystemExit("the uninterrupted run failed")
        t1 = time.perf_counter()
        if faults.run_cli(_argv(args.preset, root / "timed")) != 0:  # how long one forked run takes
            raise SystemExit("the timed run failed")
        run_s = time.perf_counter() - t1
        rows = [one_kill(args.preset, root, reference, moment, nth)
                for moment in faults.MOMENTS for nth in _occurrences(moment, args.per_moment)]
        rng = random.Random(args.seed)
        rows += [one_kill(args.preset, root, reference, "random", kill_after=rng.uniform(0.05, 0.95) * run_s)
                 for _ in range(args.random)]
        by_moment = {m: summarise([r for r in rows if r["moment"] == m]) for m in (*faults.MOMENTS, "random")}
        print(json.dumps({"preset": args.preset, "steps": STEPS, "checkpoint_every": CKPT_EVERY,
                          "log_every": LOG_EVERY, "keep": KEEP, "forked_run_s": round(run_s, 3),
                          "reference_s": round(t1 - t0, 1), "total": summarise(rows), "by_moment": by_moment,
                          "failures": [r for r in rows if r["killed"] and not r["worked"]]}, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
