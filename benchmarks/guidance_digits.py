"""The trained-model guidance demo on scikit-learn digits (CPU, a few minutes); prints JSON.

1. a class-conditional DDPM++ digits model with a null label, trained with label dropout
   (``LabelDropout(DSMLoss, null_label, 0.1)``) into ``OUT/score`` (a run directory that
   ``scoresde guide/inpaint`` load);
2. a noise-conditional classifier (``scoresde train-classifier``'s function) into ``OUT/classifier``
   with its test accuracy at several t;
3. the figures, made by the CLI commands printed in the JSON: class-conditional grids by
   classifier-free and classifier guidance (one row per class), and inpainted test digits
   (replacement and SMC, the default), each with the share of images an independent digits CNN assigns to the
   intended class. Trained runs in ``OUT`` are reused.

Usage: ``python benchmarks/guidance_digits.py [--steps 600] [--clf-steps 2000] [--out runs/guidance-digits] [--docs docs]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from scoresde import cli
from scoresde import config as C
from scoresde.losses import LabelDropout
from scoresde.cli.runs import train_classifier
from scoresde.runs import CONFIG_FILE
from scoresde.metrics import digits_classifier
from scoresde.train import Trainer


def train_score(out: Path, steps: int) -> float:
    cfg = C.load_config("digits-vp", ["model.num_classes=10", "model.null_class=true", f"training.steps={steps}",
                                      "training.lr=1e-3", "training.warmup=50", "training.ema_decay=0.99"])
    out.mkdir(parents=True, exist_ok=True)
    C.save_config(cfg, out / CONFIG_FILE)
    torch.manual_seed(cfg.training.seed)
    sde, model = C.build_sde(cfg), C.build_model(cfg)
    loss = LabelDropout(C.build_loss(cfg, sde), model.null_label, p_uncond=0.1)
    t = cfg.training
    trainer = Trainer(model, loss, C.build_dataset(cfg, "train"), batch_size=t.batch_size, lr=t.lr,
                      warmup_steps=t.warmup, grad_clip=t.grad_clip, ema_decay=t.ema_decay, seed=t.seed,
                      out_dir=out, ckpt_every=steps, keep_last=1, log_every=t.log_every, progress=False)
    t0 = time.perf_counter()
    trainer.fit(steps)
    return time.perf_counter() - t0


def class_agreement(npz: Path, name: str) -> float:
    """Fraction of images that an independent digits CNN (the FD-digits classifier) assigns to the
    intended class: the guided label, or for inpainting the label of the original test digit."""
    import numpy as np

    with np.load(npz) as arc:
        if "labels" in arc.files:
            x, labels = torch.as_tensor(arc["x"]), torch.as_tensor(arc["labels"])
        else:
            x = torch.as_tensor(arc["inpainted"])
            labels = C.build_dataset(C.load_config("digits-vp"), "test").labels[: x.shape[0]]
    npz.unlink()  # the PNG is the artefact; the array was only needed here
    with torch.no_grad():
        pred = digits_classifier()(x.float().clamp(-1, 1)).argmax(1)
    return round(float((pred == labels).float().mean()), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--clf-steps", type=int, default=2000)
    parser.add_argument("--out", default="runs/guidance-digits")
    parser.add_argument("--docs", default="docs")
    args = parser.parse_args()
    out, docs = Path(args.out), Path(args.docs)
    report: dict = {}
    if not (out / "score" / CONFIG_FILE).is_file():
        report["score_train_seconds"] = round(train_score(out / "score", args.steps), 1)
    if not (out / "classifier" / "accuracy.json").is_file():
        clf_cfg = C.load_config("digits-vp", ["training.lr=1e-3", "training.warmup=50", "training.ema_decay=0.99"])
        t0 = time.perf_counter()
        train_classifier(clf_cfg, out / "classifier", args.clf_steps, progress=False, nf=16)
        report["classifier_train_seconds"] = round(time.perf_counter() - t0, 1)
    report["classifier"] = json.loads((out / "classifier" / "accuracy.json").read_text())
    score, clf = str(out / "score"), str(out / "classifier")
    guides = {f"cfg w={w}": ["--cfg", "--scale", w] for w in ("0", "1", "3")}
    guides.update({f"classifier w={w}": ["--classifier", clf, "--scale", w] for w in ("1", "3")})
    commands = {name: ["guide", score, *opts, "-n", "100", "--out", str(docs / f"guidance_digits_{name.replace(' w=', '_w')}.png")]
                for name, opts in guides.items()}
    for mask in ("half", "box"):
        commands[f"inpaint {mask} replacement"] = ["inpaint", score, "--mask", mask, "--method", "replacement", "--sampler",
                                                   "euler-maruyama", "--steps", "200", "-n", "36",
                                                   "--out", str(docs / f"guidance_digits_inpaint_{mask}.png")]
    commands["inpaint half smc"] = ["inpaint", score, "--mask", "half", "--particles", "16", "-n", "36",
                                    "--out", str(docs / "guidance_digits_inpaint_half_smc.png")]
    report["commands"] = {}
    for name, argv in commands.items():
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout pure JSON
            cli.main(argv + ["--quiet"])
        report["commands"][name] = {"command": "scoresde " + " ".join(argv), "seconds": round(time.perf_counter() - t0, 1),
                                    "class_agreement": class_agreement(Path(argv[-1]).with_suffix(".npz"), name)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
