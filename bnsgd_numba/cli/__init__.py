"""The ``bnsgd-numba`` command line: one subcommand module each.

Each module listed in ``_SUBCOMMAND_MODULES`` has ``add_parser(subparsers)``,
which adds its subcommand and sets ``handler`` (a function of the parsed
arguments returning an exit code) as a parser default.

Every failure is one line on stderr and exit status 2 (``_options``). Output
into a closed pipe (``bnsgd-numba plugins | head -1``) ends the command
quietly, as it ends Unix tools.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys
from collections.abc import Sequence

from bnsgd_numba.cli._options import CommandParser, fail

_SUBCOMMAND_MODULES = ["train", "evaluate", "bench", "plugins", "schedule", "linreg"]

BROKEN_PIPE_STATUS = 141
"""The status of a command that output went to a closed pipe: 128 + SIGPIPE, as shells report."""


def _version() -> str:
    from bnsgd_numba import __version__

    found = []
    for name, shown in (("numba", "numba"), ("numpy", "NumPy")):
        try:
            found.append(f"{shown} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{shown} not installed")
    found.append(f"Python {platform.python_version()}")
    return f"bnsgd-numba {__version__} ({', '.join(found)})"


def build_parser() -> CommandParser:
    """Return the parser of every subcommand."""
    parser = CommandParser(
        prog="bnsgd-numba",
        description="Batch Normalization and SGD kernels compiled with Numba.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = int(args.handler(args) or 0)
    except Exception as error:
        from bnsgd_numba.registry import RegistryError

        if not isinstance(error, RegistryError):
            raise
        return fail(args.command, error)  # a plugin's name clash or failure: one line
    sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    try:
        return _run(argv)
    except BrokenPipeError:
        # the reader is gone: drop what is still buffered, as a SIGPIPE would
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE_STATUS


if __name__ == "__main__":
    sys.exit(main())
