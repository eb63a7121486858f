"""The ``bnsgd-numba`` command line: one subcommand module each.

Each module listed in ``_SUBCOMMAND_MODULES`` has ``add_parser(subparsers)``,
which adds its subcommand and sets ``handler`` (a function of the parsed
arguments returning an exit code) as a parser default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_SUBCOMMAND_MODULES = ["train", "evaluate", "bench", "plugins", "schedule", "linreg"]


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="bnsgd-numba",
        description="Batch Normalization and SGD kernels compiled with Numba.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
