"""The kill campaign: SIGKILL real training processes at chosen and at random moments, recover
the way the error messages say, and count what survives.

For each kill: a fresh run folder is trained (``scoresde train``, forked so that a kill costs no
import time; ``tests/fixtures/faults.py``) and killed at one moment — while ``config.yaml`` is
written, while a checkpoint's tensors or sidecar are written, in the middle of rotation, half-way
through a log record, between checkpoints, or after a random delay. Recovery is ``train
--resume``; when that says there is no run or no valid checkpoint to resume, ``train
--resume-or-start``, as the message suggests. A recovery *worked* when it exits 0 and its final
checkpoint is bit-identical to the uninterrupted run's; a run is *stuck* when neither command
gets it there. A worked recovery is *clean* when, besides, the log holds each record once and no
temporary file of the killed writes is left. Steps lost = the optimizer step the killed process
had reached minus the step the recovery resumed from.

Besides the kills, the faults of issue 17 that are not kills (``SCENARIOS``), each followed by
the command a user would run next: a start that fails (``training.lr=.nan``, a batch larger than
the data) then the corrected command on the same ``--out``; stray corrupt higher-numbered
checkpoint files then ``--resume``; every checkpoint truncated then ``--resume`` (honest: a
non-zero exit) and ``--resume-or-start``; a second trainer on a locked folder (refused).

    python benchmarks/kill_campaign.py [--preset toy-2d] [--per-moment 4] [--random 12] [--seed 0]

Prints one JSON document (per moment and in total).
"""

from __future__ import annotations

import argparse
import contextlib
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
    if k == 1:
        return [1 + (count - 1) // 2]
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
            "worked": code == 0 and identical, "clean": code == 0 and identical and log_ok and not litter}


def _truncate_all(out: Path) -> None:
    for _, sidecar in checkpoint.list_checkpoints(out):
        tensors = sidecar.with_suffix(".safetensors")
        tensors.write_bytes(tensors.read_bytes()[:64])


def _stray_files(out: Path) -> None:
    for name in ("ckpt_00000900.json", "ckpt_00000901.json"):
        (out / name).write_text("{torn")


def scenario(preset: str, root: Path, reference: Path, name: str) -> dict:
    """One non-kill fault of issue 17 and the command a user runs next; ``ok`` when it ends well."""
    out = root / name
    ref = _final(reference)

    def finished() -> bool:
        got = _final(out)
        return got is not None and all(torch.equal(ref[k], got[k]) for k in ref) and _log_steps(out) == _log_steps(reference)

    row: dict = {"scenario": name}
    if name in ("failed-start-nan-lr", "failed-start-batch"):
        bad = "training.lr=.nan" if name == "failed-start-nan-lr" else "training.batch_size=100000"
        row["failed_exit"] = faults.run_cli(_argv(preset, out, bad))
        row["next_exit"] = faults.run_cli(_argv(preset, out))
        row["ok"] = row["failed_exit"] != 0 and row["next_exit"] == 0 and finished()
    elif name == "stray-corrupt-files":
        faults.run_cli(_argv(preset, out), "step", CKPT_EVERY + 2)
        _stray_files(out)
        row["next_exit"] = faults.run_cli(_argv(preset, out, "--resume"))
        row["ok"] = row["next_exit"] == 0 and finished()
    elif name == "no-valid-checkpoint":
        faults.run_cli(_argv(preset, out), "step", 2 * CKPT_EVERY + 2)
        _truncate_all(out)
        row["resume_exit"] = faults.run_cli(_argv(preset, out, "--resume"))  # honest: non-zero
        row["next_exit"] = faults.run_cli(_argv(preset, out, "--resume-or-start")) if row["resume_exit"] else None
        row["ok"] = row["resume_exit"] != 0 and row["next_exit"] == 0 and finished()
    elif name == "second-trainer":
        import fcntl

        faults.run_cli(_argv(preset, out), "step", CKPT_EVERY + 2)
        with open(out / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a first trainer holds it
            row["second_exit"] = faults.run_cli(_argv(preset, out, "--resume"))
        row["ok"] = row["second_exit"] != 0
    shutil.rmtree(out, ignore_errors=True)
    return row


SCENARIOS = ("failed-start-nan-lr", "failed-start-batch", "stray-corrupt-files", "no-valid-checkpoint",
             "second-trainer")


def summarise(rows: list[dict]) -> dict:
    killed = [r for r in rows if r["killed"]]
    lost = [r["steps_lost"] for r in killed]
    return {"kills_tried": len(rows), "killed": len(killed),
            "resumed_with_resume": sum(r["worked"] and r["recovery"] == ["--resume"] for r in killed),
            "needed_resume_or_start": sum(r["worked"] and r["recovery"][-1:] == ["--resume-or-start"] for r in killed),
            "worked": sum(r["worked"] for r in killed), "stuck": sum(not r["worked"] for r in killed),
            "clean": sum(r["clean"] for r in killed), "log_duplicated": sum(not r["log_once"] for r in killed),
            "litter_left": sum(bool(r["litter_left"]) for r in killed),
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
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON document alone
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
        scenarios = [scenario(args.preset, root, reference, name) for name in SCENARIOS]
        print(json.dumps({"preset": args.preset, "steps": STEPS, "checkpoint_every": CKPT_EVERY,
                          "log_every": LOG_EVERY, "keep": KEEP, "forked_run_s": round(run_s, 3),
                          "reference_s": round(t1 - t0, 1), "total": summarise(rows), "by_moment": by_moment,
                          "scenarios": scenarios, "scenarios_stuck": sum(not r["ok"] for r in scenarios),
                          "not_clean": [r for r in rows if r["killed"] and not r["clean"]]}, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
