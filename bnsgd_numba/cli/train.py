"""``bnsgd-numba train``: train the seed document's network end to end."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bnsgd_numba.cli._progress import ProgressBar, summary_table
from bnsgd_numba.cli.schedule import parse_params
from bnsgd_numba.nn.data import DATA_HELP


def add_parser(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train input -> BN -> Dense 64 ReLU -> BN -> Dense 10 softmax",
        description="Train the seed document's network with the library's BatchNorm, "
        "SGD with momentum and a registered scheduler. Default data: the 1,797 8x8 "
        "digits scikit-learn ships (offline).",
    )
    parser.add_argument("--data", metavar="PATH", help=DATA_HELP)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1, help="(peak) learning rate")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--hidden", type=int, default=64, help="width of the hidden layer")
    parser.add_argument(
        "--scheduler", default="warmup_cosine", help="a registered scheduler (bnsgd-numba plugins)"
    )
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="a scheduler parameter"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="same seed, same numbers (bitwise on CPU)"
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--compare-no-bn",
        action="store_true",
        help="also train without BatchNorm from the same weights and batches",
    )
    parser.add_argument("--json", metavar="PATH", help="write the summary as JSON")
    parser.add_argument(
        "--save",
        metavar="MODEL.npz",
        help="write the trained model (with BatchNorm) to this .npz file: "
        "bnsgd-numba evaluate reads it, bnsgd_numba.nn.Sequential.load rebuilds it, and its "
        "arrays load into the equivalent torch.nn.Sequential",
    )
    parser.add_argument("--plot", metavar="PATH.png", help="draw loss, accuracy and learning rate")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="split each batch across MPI ranks (mpiexec -n 4 bnsgd-numba train --distributed; "
        "needs the mpi extra); rank 0 prints and writes the files",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train, print the summary, write the JSON and the picture."""
    if args.distributed:  # data-parallel over MPI: bnsgd_numba.distributed
        if args.save:
            print(
                "bnsgd-numba train: error: --save is not available with --distributed",
                file=sys.stderr,
            )
            return 2
        from bnsgd_numba.cli.distributed import run_distributed

        return run_distributed(args)
    from bnsgd_numba.nn.data import load_data, load_digits
    from bnsgd_numba.nn.training import TrainConfig, train

    try:
        if args.save:
            check_writable_file(args.save, "--save")
        params = parse_params(args.param)
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
            weight_decay=args.weight_decay, hidden=args.hidden, scheduler=args.scheduler,
            scheduler_params=params, seed=args.seed, dtype=args.dtype,
        )  # fmt: skip
        if args.device == "cuda":
            from bnsgd_numba._core.cuda import cuda_available, unavailable_reason

            if not cuda_available():
                raise RuntimeError(
                    f"--device cuda: CUDA kernels cannot run here: {unavailable_reason()}"
                )
        data = load_data(args.data) if args.data else load_digits()
        from bnsgd_numba.nn.training import make_scheduler

        make_scheduler(config, 1 + len(data.x_train) // config.batch_size)  # checked up front
    except (ValueError, TypeError, KeyError, ImportError, RuntimeError) as error:
        print(f"bnsgd-numba train: error: {error}", file=sys.stderr)
        return 2

    print(
        f"data: {data.name}: {len(data.x_train)} train, {len(data.x_val)} validation, "
        f"{len(data.x_test)} test, {data.num_features} inputs, {data.num_classes} classes",
        file=sys.stderr,
    )
    runs = {"bn": config}
    if args.compare_no_bn:
        from dataclasses import replace

        runs["no_bn"] = replace(config, batch_norm=False)
    start = time.perf_counter()
    results = {}
    for key, run_config in runs.items():
        label = "" if len(runs) == 1 else ("with BN     " if key == "bn" else "without BN  ")
        bar = ProgressBar(run_config.epochs, sys.stderr, label)
        results[key] = train(
            data, run_config, on_batch=None if args.quiet else bar.batch,
            on_epoch=None if args.quiet else bar.epoch, device=args.device,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    print(summary_table(results))
    summary = results["bn"].summary()
    summary["seconds"] = seconds
    summary["data"] = data.name
    if "no_bn" in results:
        summary["no_bn"] = results["no_bn"].summary()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
    if args.plot:
        from bnsgd_numba.plotting import plot_training

        plot_training(results, args.plot)
    if args.save:
        results["bn"].model.save(args.save)
        print(f"model saved to {args.save}", file=sys.stderr)
    print(f"test accuracy {results['bn'].test_accuracy:.4f} in {seconds:.1f} s", file=sys.stderr)
    return 0


def check_writable_file(path: str, option: str) -> None:
    """Raise ValueError, naming ``option``, unless a file can be written at ``path``."""
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise ValueError(f"{option} {path}: is a directory")
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: no such directory {str(folder)!r}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {path}: the directory {str(folder)!r} is not writable")
