"""The ``scoresde`` command line: the only package that knows about commands.

:func:`main` is the entry point; :mod:`.runs` holds the orchestration behind the commands
(``train_run``, ``sample_run``, ``evaluate_run``, ...). Nothing in the library imports it.
"""

from .main import build_parser, main, parse_args

__all__ = ["build_parser", "main", "parse_args"]
