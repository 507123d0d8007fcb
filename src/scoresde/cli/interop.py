"""``import SOURCE`` (``score-sde``: official score_sde checkpoints; ``diffusers``: a diffusers
pipeline folder) and ``export`` (EMA weights in one safetensors file): models trained elsewhere
become run folders, and runs leave as files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from ..interop import score_sde
from ..interop.diffusers import import_pipeline
from ..interop.export import export_run
from ..runs import CONFIG_FILE, load_run


def _fresh(out: str) -> Path:
    root = Path(out)
    if (root / CONFIG_FILE).exists():
        raise ValueError(f"{root}: already a run folder (choose another --out)")
    return root


def _report(source: str, root: Path) -> int:
    """Load the imported run (a check that it works) and print what it holds."""
    run = load_run(root)
    n = sum(v.numel() for v in run.model.state_dict().values())
    print(f"imported {source} (step {run.step}, {n / 1e6:.2f} M parameters): {type(run.sde).__name__}, "
          f"{run.config.loss.options.get('parameterization', 'eps')} network, samples of shape "
          f"{list(run.sample_shape)} -> {root}")
    return 0


def _cmd_import_score_sde(args: argparse.Namespace) -> int:
    config = score_sde.read_config_json(args.config_json) if args.config_json else args.config
    return _report(args.checkpoint, score_sde.import_checkpoint(args.checkpoint, _fresh(args.out), config))


def _add_score_sde(kinds: Any) -> None:
    p = kinds.add_parser("score-sde", help="an official score_sde_pytorch checkpoint (checkpoint_N.pth)",
                         description="Read the checkpoint without unpickling code (weights only) and write a run "
                                     "folder whose EMA score equals the official one.")
    p.add_argument("checkpoint", help="official checkpoint {'optimizer', 'model', 'ema', 'step'} (.pth)")
    config = p.add_mutually_exclusive_group(required=True)
    config.add_argument("--config", metavar="NAME", choices=sorted(score_sde.CONFIGS),
                        help="official config path, e.g. vp/cifar10_ddpmpp_continuous, ve/cifar10_ncsnpp_continuous, "
                             "ve/celebahq_256_ncsnpp_continuous (choices: " + ", ".join(sorted(score_sde.CONFIGS)) + ")")
    config.add_argument("--config-json", metavar="FILE",
                        help="the official config as a JSON dict of its fields (training, sampling, data, model)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.set_defaults(func=_cmd_import_score_sde)


def _cmd_import_diffusers(args: argparse.Namespace) -> int:
    return _report(args.directory, import_pipeline(args.directory, _fresh(args.out)))


def _add_diffusers(kinds: Any) -> None:
    p = kinds.add_parser("diffusers", help="a diffusers save_pretrained folder (DDPM, DDIM or ScoreSdeVe pipeline)",
                         description="A diffusers UNet2DModel and its scheduler as a run folder: a discrete VP "
                                     "schedule becomes the SDE through every step (t = n / (N-1)), "
                                     "ScoreSdeVeScheduler the VE SDE. Weights are read from safetensors only.")
    p.add_argument("directory", help="save_pretrained folder of a DDPMPipeline, DDIMPipeline or ScoreSdeVePipeline "
                                     "(or any folder with unet/ and scheduler/)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.set_defaults(func=_cmd_import_diffusers)


#: One function per ``scoresde import SOURCE``, each adding its parser to the ``import`` group.
IMPORTERS: list[Callable[[Any], None]] = [_add_score_sde, _add_diffusers]


def _cmd_export(args: argparse.Namespace) -> int:
    path = export_run(args.run, args.out, checkpoint=args.checkpoint)
    print(f"exported the EMA weights of {args.run} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``import SOURCE`` (one sub-command per entry of :data:`IMPORTERS`) and ``export``."""
    p = sub.add_parser("import", help="a model trained elsewhere as a run folder (score-sde, diffusers)")
    # ``sub``'s own wrapper (cli/main.py), so that each source also takes --debug, --device, ...
    kinds = type(sub)(p.add_subparsers(dest="source", required=True, metavar="SOURCE"))
    for add in IMPORTERS:
        add(kinds)
    p = sub.add_parser("export", help="the EMA weights of a run in one safetensors file (config in its header)")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="output .safetensors file (written atomically, mode 0644)")
    p.add_argument("--checkpoint", help="a checkpoint file (default: the newest valid one in RUN)")
    p.set_defaults(func=_cmd_export)
