"""What the subcommands share: the parser, checked option types, output paths, train's config.

Every failure of the command line is one line on stderr and exit status 2:
:class:`CommandParser` prints argparse's errors that way, and the option
types below reject bad numbers while the arguments are parsed, before
anything is loaded or trained.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

STDOUT = "-"
"""The path that means standard output (``--json -``)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, leaving out defaults that say nothing (None, off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with defaults in ``--help`` and one-line errors.

    Subparsers are of the same class (argparse's default), so every
    subcommand gets both.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE (see PROG --help)`` on one line and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(parse: Callable[[str], Any], what: str, minimum: float) -> Callable[[str], int | float]:
    def check(text: str) -> int | float:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    check.__name__ = what
    return check


positive_int = _number(int, "an integer >= 1", 1)
non_negative_int = _number(int, "an integer >= 0", 0)
non_negative_float = _number(float, "a finite number >= 0", 0.0)


def blas_threads(text: str) -> int | str | None:
    """``--blas-threads``: ``auto``, ``keep`` (None: BLAS's own setting) or an integer >= 1."""
    if text in ("auto", "keep"):
        return None if text == "keep" else text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected auto, keep or an integer >= 1, got {text!r}")
    return value


def check_output_path(option: str, path: str | None) -> None:
    """Raise ValueError, naming ``option``, unless a file can be written at ``path``.

    ``None`` (the option not given) and :data:`STDOUT` pass. Checked before
    any work starts, so that a run does not end by failing to save it.
    """
    if path is None or path == STDOUT:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{option} {path}: is a directory")
    folder = target.parent
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: no such directory {str(folder)!r}")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f"{option} {path}: not writable")


def check_matplotlib(what: str) -> None:
    """Raise ImportError, saying ``what`` needs it, unless matplotlib imports."""
    try:
        importlib.import_module("matplotlib")
    except ImportError as error:
        raise ImportError(
            f"{what} needs matplotlib ({error}): pip install 'bnsgd-numba[demo]'"
        ) from None


def train_config(args: argparse.Namespace, scheduler_params: dict[str, Any]) -> Any:
    """The :class:`~bnsgd_numba.nn.training.TrainConfig` of ``train``'s options, checked.

    Raises ValueError or TypeError naming a bad value (the SGD
    hyperparameters are checked as :class:`~bnsgd_numba.SGD` will check them).
    """
    from bnsgd_numba.nn.training import TrainConfig
    from bnsgd_numba.sgd._common import check_hyperparameters

    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, hidden=args.hidden, scheduler=args.scheduler,
        scheduler_params=scheduler_params, seed=args.seed, dtype=args.dtype,
        schedule_unit=args.schedule_unit, blas_threads=args.blas_threads,
    )  # fmt: skip
    check_hyperparameters(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return config


def fail(command: str, error: BaseException | str) -> int:
    """Print ``bnsgd-numba COMMAND: error: ...`` as one line on stderr; return 2."""
    text = " ".join(str(error).split()) or type(error).__name__
    print(f"bnsgd-numba {command}: error: {text}", file=sys.stderr)
    return 2
