"""The ``scoresde`` command line: the parser and the entry point.

Sub-commands, one module per family (``scoresde COMMAND --help`` explains each)::

    presets | config | train | run                cli/train.py
    sample | eval | encode | decode               cli/sample.py
    likelihood                                    cli/likelihood.py
    train-classifier | guide | inpaint | colorize cli/guidance.py
    reflow                                        cli/reflow.py
    import score-sde | export                     cli/interop.py

``RUN`` is a run folder (``config.yaml`` and checkpoints; :func:`scoresde.load_run`). Errors are
one line on stderr with exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import torch

from . import guidance, interop, likelihood, reflow, sample, train
from ..train import tune_cpu_process
from .args import common_options

#: The command families, in the order ``--help`` lists them.
FAMILIES = (train, sample, likelihood, guidance, reflow, interop)


class _SubParsers:
    """``add_parser`` of argparse's sub-parsers that also adds the common options."""

    def __init__(self, action: Any) -> None:
        self.action = action

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = self.action.add_parser(name, **kwargs)
        common_options(p, argparse.SUPPRESS)
        return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="scoresde", description="Score-based generative models through SDEs: train, sample, "
        "evaluate. `scoresde COMMAND --help` explains each command; `scoresde run` is the README's main job.")
    common_options(parser, argparse.SUPPRESS)  # accepted before or after the command
    parser.set_defaults(debug=False, quiet=False, device=None, threads=None)
    sub = _SubParsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args`` that also takes ``key=value`` overrides after the options
    (``scoresde train PRESET --out DIR training.steps=10``): argparse alone stops collecting a
    positional list at the first option, so such tokens are appended to ``args.overrides``."""
    args, extra = parser.parse_known_args(argv)
    stray = [tok for tok in extra if tok.startswith("-") or "=" not in tok]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scoresde``; returns the exit status (2 on a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = parse_args(build_parser(), argv)
        tune_cpu_process()  # before the first parallel op: OpenMP's threads copy this thread's float mode
        if args.threads:
            torch.set_num_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("scoresde: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError) as err:
        if debug:
            raise
        print(f"scoresde: error: {err}", file=sys.stderr)
        return 2
