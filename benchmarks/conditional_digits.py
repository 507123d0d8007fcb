"""The digits job of conditional sampling (CPU, minutes); prints JSON.

1. Trains (unless present) a digits VP model ``OUT/digits-vp`` and a colour toy ``OUT/tinted-vp``:
   the scikit-learn digits tinted red, green or blue at random (``(3, 8, 8)`` images whose gray
   image leaves the colour open), ``training.steps`` each;
2. runs the CLI on them, timing each command: ``inpaint --mask half``, ``colorize`` of 1-channel
   gray images, ``restore --op avgpool:2 --noise 0.05`` (all the default SMC), PNGs into ``--docs``.

Usage: ``python benchmarks/conditional_digits.py [--steps 500] [--out /tmp/runs] [--docs docs]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from scoresde import config as C
from scoresde import cli
from scoresde.runs import CONFIG_FILE

TINTS = np.array([[1.0, 0.25, 0.25], [0.25, 1.0, 0.25], [0.3, 0.5, 1.0]], dtype=np.float32)


def tinted_digits(path: Path) -> None:
    """The digits training split, each image tinted by one of :data:`TINTS` (seed 0), in [-1, 1]."""
    x = C.build_dataset(C.load_config("digits-vp"), "train").x.numpy()
    k = np.random.RandomState(0).randint(0, len(TINTS), size=len(x))
    rgb = 2 * (x + 1) / 2 * TINTS[k][:, :, None, None] - 1
    np.savez(path, x=rgb.astype(np.float32), tint=k)


def timed(argv: list[str]) -> dict:
    """Run ``scoresde argv``; the array written beside an output PNG is removed (the PNG is the artefact)."""
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure JSON
        code = cli.main(argv + ["--quiet"])
    seconds = round(time.perf_counter() - t0, 1)
    if argv[0] != "train":
        Path(argv[-1]).with_suffix(".npz").unlink(missing_ok=True)
    return {"command": "scoresde " + " ".join(argv), "exit": code, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--out", default="/tmp/runs")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args()
    out, docs = Path(args.out), Path(args.docs)
    out.mkdir(parents=True, exist_ok=True)
    tinted = out / "tinted.npz"
    if not tinted.is_file():
        tinted_digits(tinted)
    steps = [f"training.steps={args.steps}", f"training.checkpoint_every={args.steps}"]
    runs = {"digits-vp": [], "tinted-vp": ["data.source=npz", f"data.path={tinted}", "model.in_channels=3"]}
    report: dict = {"train": {}}
    for name, overrides in runs.items():
        if not (out / name / CONFIG_FILE).is_file():
            report["train"][name] = timed(["train", "digits-vp", *overrides, *steps, "--out", str(out / name)])
    with np.load(tinted) as arc:
        gray = out / "tinted_gray.npz"
        np.savez(gray, x=arc["x"][-16:].mean(axis=1, keepdims=True))  # 1-channel gray inputs
    digits, colour = str(out / "digits-vp"), str(out / "tinted-vp")
    report["commands"] = [
        timed(["inpaint", digits, "--mask", "half", "-n", "16", "--out", str(docs / "conditional_digits_inpaint_half.png")]),
        timed(["colorize", colour, "--input", str(gray), "-n", "16", "--out", str(docs / "conditional_tinted_colorize.png")]),
        timed(["restore", digits, "--op", "avgpool:2", "--noise", "0.05", "-n", "16",
               "--out", str(docs / "conditional_digits_restore_avgpool2.png")]),
    ]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
