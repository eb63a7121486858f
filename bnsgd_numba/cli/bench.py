"""``bnsgd-numba bench``: the kernel benchmarks on their default shapes."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark the kernels against PyTorch, NumPy and the memory bandwidth",
        description="Measure BatchNorm against PyTorch (when installed), NumPy and a "
        "parallel memory-copy probe, side by side in one run.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmarks and print their tables."""
    from bnsgd_numba.bench import batch_norm

    argv = (["--quick"] if args.quick else []) + (["--json", args.json] if args.json else [])
    return batch_norm.main(argv)
