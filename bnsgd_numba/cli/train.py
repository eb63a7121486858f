"""``bnsgd-numba train``: train the seed document's network end to end."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from bnsgd_numba.cli.schedule import parse_params


def add_parser(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train input -> BN -> Dense 64 ReLU -> BN -> Dense 10 softmax",
        description="Train the seed document's network with the library's BatchNorm, "
        "SGD with momentum and a registered scheduler. Default data: the 1,797 8x8 "
        "digits scikit-learn ships (offline).",
    )
    parser.add_argument(
        "--data", metavar="FILE.npz", help="MNIST-style x_train, y_train, x_test, y_test"
    )
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
    parser.add_argument("--plot", metavar="PATH.png", help="draw loss, accuracy and learning rate")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="split each batch across MPI ranks (mpiexec -n 4 bnsgd-numba train --distributed; "
        "needs the mpi extra); rank 0 prints and writes the files",
    )
    parser.set_defaults(handler=run)


class ProgressBar:
    """One line per epoch, redrawn in place on a terminal."""

    def __init__(self, epochs: int, stream: TextIO, label: str = "") -> None:
        self.epochs = epochs
        self.stream = stream
        self.label = label
        self.interactive = stream.isatty()
        self.batches = 1

    def batch(self, epoch: int, done: int, total: int, loss: float, accuracy: float) -> None:
        """Redraw the bar (terminals only)."""
        self.batches = total
        if self.interactive:
            self.stream.write("\r" + self._line(epoch, done, total, loss, accuracy))
            self.stream.flush()

    def epoch(self, record: Any) -> None:
        """Finish the epoch's line with the validation figures."""
        line = self._line(
            record.epoch, self.batches, self.batches, record.train_loss, record.train_accuracy
        )
        self.stream.write(
            ("\r" if self.interactive else "")
            + f"{line}  val_loss {record.val_loss:.4f}  val_acc {record.val_accuracy:.4f}"
            + f"  lr {record.lr:.4g}\n"
        )
        self.stream.flush()

    def _line(self, epoch: int, done: int, total: int, loss: float, accuracy: float) -> str:
        width = 24
        filled = int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        return (
            f"{self.label}epoch {epoch:>3}/{self.epochs} [{bar}] {done:>4}/{total}"
            f"  loss {loss:.4f}  acc {accuracy:.4f}"
        )


def run(args: argparse.Namespace) -> int:
    """Train, print the summary, write the JSON and the picture."""
    if args.distributed:  # data-parallel over MPI: bnsgd_numba.distributed
        from bnsgd_numba.distributed.cli import run_distributed

        return run_distributed(args)
    from bnsgd_numba.data import load_digits, load_npz
    from bnsgd_numba.training import TrainConfig, train

    try:
        params = parse_params(args.param)
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
            weight_decay=args.weight_decay, hidden=args.hidden, scheduler=args.scheduler,
            scheduler_params=params, seed=args.seed, dtype=args.dtype,
        )  # fmt: skip
        if args.device == "cuda":
            from bnsgd_numba._cuda_backend import cuda_available, unavailable_reason

            if not cuda_available():
                raise RuntimeError(
                    f"--device cuda: CUDA kernels cannot run here: {unavailable_reason()}"
                )
        data = load_npz(args.data) if args.data else load_digits()
        from bnsgd_numba.training import make_scheduler

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
    print(f"test accuracy {results['bn'].test_accuracy:.4f} in {seconds:.1f} s", file=sys.stderr)
    return 0


def summary_table(results: dict[str, Any]) -> str:
    """Per-epoch figures, one column group per run, as a text table."""
    keys = list(results)
    names = {"bn": "with BN", "no_bn": "without BN"}
    head = "epoch | " + " | ".join(f"{names[k]:^40}" for k in keys)
    sub = "      | " + " | ".join(
        f"{'train_loss':>10} {'val_loss':>9} {'val_acc':>8} {'lr':>9}" for _ in keys
    )
    lines = [head, sub, "-" * len(sub)]
    for i, record in enumerate(results[keys[0]].epochs):
        cells = []
        for k in keys:
            r = results[k].epochs[i]
            cells.append(
                f"{r.train_loss:>10.4f} {r.val_loss:>9.4f} {r.val_accuracy:>8.4f} {r.lr:>9.4g}"
            )
        lines.append(f"{record.epoch:>5} | " + " | ".join(cells))
    lines.append("-" * len(sub))
    lines.append(
        "test  | "
        + " | ".join(
            f"{'loss ' + format(results[k].test_loss, '.4f'):>20} {'acc ' + format(results[k].test_accuracy, '.4f'):>19}"
            for k in keys
        )
    )
    return "\n".join(lines)
