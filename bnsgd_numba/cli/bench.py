"""``bnsgd-numba bench``: every kernel benchmark on its default shapes, in one run."""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from bnsgd_numba.cli._options import STDOUT, check_matplotlib, check_output_path, fail


def add_parser(subparsers: Any) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the kernels against PyTorch, NumPy and the memory bandwidth",
        description="Measure BatchNorm, the SGD step (and the normalization variants when "
        "installed) against PyTorch (when installed), NumPy and a parallel memory-copy "
        "probe, side by side in one run; print one report with the targets.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="also write every figure as JSON ('-': to stdout, the report then goes to stderr)",
    )
    parser.add_argument(
        "--plot", metavar="PATH.png", help="draw time against size (1e3..1e8 elements), log-log"
    )
    parser.add_argument(
        "--results", metavar="PATH.md", help="write the report, e.g. benchmarks/RESULTS.md"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Check the output paths, run the benchmarks and print the report."""
    from bnsgd_numba.bench import report

    try:
        for option in ("json", "plot", "results"):
            check_output_path(f"--{option}", getattr(args, option))
        if args.plot:
            check_matplotlib("--plot")
    except (ValueError, ImportError) as error:
        return fail("bench", error)
    argv = ["--quick"] if args.quick else []
    for option in ("plot", "results"):
        if getattr(args, option):
            argv += [f"--{option}", getattr(args, option)]
    if args.json != STDOUT:
        return report.main(argv + (["--json", args.json] if args.json else []))
    with tempfile.TemporaryDirectory() as folder:
        figures = Path(folder) / "bench.json"
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON alone
            status = report.main(argv + ["--json", str(figures)])
        sys.stdout.write(figures.read_text() + "\n")
    return status
