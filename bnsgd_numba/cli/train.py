"""``bnsgd-numba train``: train the seed document's network end to end.

Everything that can be checked before training is: the options, the data,
the schedule's rates over the whole run, the output paths, matplotlib for
``--plot``. A run that diverges stops at the first non-finite loss with one
line naming the epoch and the step. Every failure is one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from bnsgd_numba.cli._options import (
    STDOUT,
    blas_threads,
    check_matplotlib,
    check_output_path,
    fail,
    non_negative_float,
    non_negative_int,
    positive_int,
    train_config,
)
from bnsgd_numba.cli._progress import ProgressBar, write_outputs
from bnsgd_numba.cli.schedule import parse_params
from bnsgd_numba.nn.data import DATA_HELP

NEGLIGIBLE_RATE = 1e-6
"""A rate below this fraction of the schedule's peak, from an epoch's start on, draws a warning."""

SCHEDULE_HELP = (
    "Schedules step once per batch by default (--schedule-unit step): their lengths "
    "(step_size, milestones, T_max, warmup_steps, ...) count batches, as in optax. "
    "--schedule-unit epoch steps them once per epoch instead, so that lengths count "
    "epochs, as in PyTorch's usual loop (Lightning's interval: 'epoch'). reduce_on_plateau "
    "steps once per epoch on the validation loss either way. Before training, train warns "
    "when the schedule keeps the rate below 1e-6 x its peak from the start "
    "of an epoch on (those epochs barely train), and refuses a schedule whose rate is "
    "negative or not finite."
)


def add_parser(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train input -> BN -> Dense 64 ReLU -> BN -> Dense 10 softmax",
        description="Train the seed document's network with the library's BatchNorm, "
        "SGD with momentum and a registered scheduler. Default data: the 1,797 8x8 "
        "digits scikit-learn ships (offline).",
        epilog=SCHEDULE_HELP,
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        help=f"{DATA_HELP} The network gets N outputs (see --classes). Default: the digits",
    )
    parser.add_argument(
        "--classes",
        type=positive_int,
        metavar="N",
        help="number of classes, the network's outputs: labels must be in 0..N-1; "
        "default: the largest label in --data + 1 (10 for the digits)",
    )
    parser.add_argument("--epochs", type=positive_int, default=20, help="passes over the data")
    parser.add_argument(
        "--batch-size", type=positive_int, default=32, help="examples per step (>= 2)"
    )
    parser.add_argument(
        "--lr",
        type=non_negative_float,
        default=0.1,
        help="learning rate: the schedule's base rate (one_cycle's peak, max_lr)",
    )
    parser.add_argument(
        "--momentum",
        type=non_negative_float,
        default=0.9,
        help="SGD momentum (one_cycle cycles it itself)",
    )
    parser.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=5e-4,
        help="L2 penalty (coupled, as torch.optim.SGD); 0 turns it off",
    )
    parser.add_argument("--hidden", type=positive_int, default=64, help="width of the hidden layer")
    parser.add_argument(
        "--scheduler",
        default="warmup_cosine",
        help="a registered scheduler (bnsgd-numba plugins); it steps once per batch, "
        "see --schedule-unit",
    )
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="a scheduler parameter"
    )
    parser.add_argument(
        "--schedule-unit",
        choices=["step", "epoch"],
        default="step",
        help="what the scheduler's steps count: batches (step) or epochs (epoch); "
        "reduce_on_plateau steps once per epoch either way",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="same seed, same numbers (bitwise on CPU)",
    )
    parser.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help="of the network"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where it runs")
    parser.add_argument(
        "--blas-threads",
        type=blas_threads,
        default="auto",
        metavar="auto|keep|N",
        help="threads of NumPy's BLAS during the CPU training steps: auto (one for small "
        "steps, such as batch 32 of 784 inputs and 64 hidden units; BLAS's own setting "
        "otherwise), keep (BLAS's own setting) or N; evaluation keeps BLAS's setting",
    )
    parser.add_argument(
        "--compare-no-bn",
        action="store_true",
        help="also train without BatchNorm from the same weights and batches",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="write the summary as JSON ('-': to stdout, the table then goes to stderr)",
    )
    parser.add_argument(
        "--save",
        metavar="MODEL.npz",
        help="write the trained model (with BatchNorm) to this .npz file: "
        "bnsgd-numba evaluate reads it, bnsgd_numba.nn.Sequential.load rebuilds it, and its "
        "arrays load into the equivalent torch.nn.Sequential (docs/models.md)",
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


def steps_per_epoch(examples: int, batch_size: int) -> int:
    """Batches per epoch, as :func:`~bnsgd_numba.nn.training.train` makes them.

    A last batch of one example is dropped (BatchNorm needs two).
    """
    return examples // batch_size + (1 if examples % batch_size >= 2 else 0)


def check_schedule(config: Any, batches: int) -> str | None:
    """Check the schedule's rates over the run; return a warning, or None.

    Raises ValueError if a rate is negative or not finite. The warning says
    from which epoch on the rate stays below :data:`NEGLIGIBLE_RATE` times
    its peak. Rates are sampled at the start of every epoch, over the
    first 100 steps and at the last step (a metric-driven schedule, which
    has no closed form, is not checked).
    """
    from bnsgd_numba.nn.training import make_scheduler

    try:
        schedule = make_scheduler(config, batches)
    except (ValueError, TypeError) as error:
        kind = TypeError if isinstance(error, TypeError) else ValueError
        raise kind(f"--scheduler {config.scheduler}: {error}") from None
    if schedule.requires_metric:
        return None
    total = config.epochs * batches
    starts = [epoch * batches for epoch in range(config.epochs)]
    rates = {}
    for step in sorted({*starts, *range(min(total, 100)), total - 1}):
        try:
            rate = float(schedule.lr_at(step))
        except NotImplementedError:  # a plugin's schedule without a closed form
            return None
        except (ValueError, OverflowError) as error:
            raise ValueError(f"--scheduler {config.scheduler}: at step {step}: {error}") from None
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(
                f"--scheduler {config.scheduler}: the learning rate at step {step} "
                f"(epoch {step // batches + 1}) would be {rate!r}: check --param"
            )
        rates[step] = rate
    peak = max(rates.values())
    for epoch, step in enumerate(starts[1:], start=2):
        if rates[step] < NEGLIGIBLE_RATE * peak:
            unit = config.schedule_unit
            hint = (
                f"it steps once per batch, {batches} per epoch: for lengths in epochs, "
                "give --schedule-unit epoch"
                if unit == "step"
                else "it steps once per epoch"
            )
            return (
                f"--scheduler {config.scheduler} brings the learning rate to "
                f"{rates[step]:.3g} by epoch {epoch} of {config.epochs}, below "
                f"1e-6 x its peak {peak:.3g}: epochs {epoch}-{config.epochs} "
                f"barely train ({hint})"
            )
    return None


DIVERGED_LOSS = 1e4
"""A loss this many times the first step's (at least 1) stops training as diverged."""


class Diverged(ArithmeticError):
    """A training loss that is not finite, or that exploded."""


class StepTracker:
    """Follows the optimizer's steps, so that a failure can name its epoch and step.

    Its :meth:`on_step` raises :class:`Diverged` at the first loss that is
    not finite or exceeds :data:`DIVERGED_LOSS` times the first step's loss
    (at least 1): cross-entropy that large means logits that large.
    """

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.done = 0
        self.failed: int | None = None
        self.limit: float | None = None

    def on_step(self, step: int, loss: float) -> None:
        """Record a finished step; raise :class:`Diverged` if its loss diverged."""
        self.done = step
        if self.limit is None and math.isfinite(loss):
            self.limit = DIVERGED_LOSS * max(loss, 1.0)
        if not math.isfinite(loss):
            self.failed = step
            raise Diverged(f"the loss is {loss}")
        if self.limit is not None and loss > self.limit:
            self.failed = step
            raise Diverged(f"the loss is {loss:.3g}, over {DIVERGED_LOSS:g} x the first step's")

    def where(self) -> str:
        """``epoch E, step S (batch B of N)`` of the step that failed."""
        step = self.failed if self.failed is not None else self.done + 1
        epoch, batch = divmod(step - 1, self.batches)
        return f"epoch {epoch + 1}, step {step} (batch {batch + 1} of {self.batches})"


def _describe_failure(
    error: Exception, tracker: StepTracker, args: argparse.Namespace, run_name: str
) -> str:
    schedule = " ".join([f"--scheduler {args.scheduler}"] + [f"--param {p}" for p in args.param])
    where = tracker.where()
    if isinstance(error, ArithmeticError):  # Diverged, or BatchNorm's non-finite statistics
        return (
            f"training{run_name} diverged at {where}: {error}; likely cause: a learning "
            f"rate too large for this network (--lr {args.lr:g}, {schedule}): try a smaller --lr"
        )
    return (
        f"training{run_name} stopped at {where}: {error}; likely cause: the schedule "
        f"({schedule}) set a rate the optimizer refuses"
    )


def _prepare(args: argparse.Namespace) -> tuple[Any, Any, int, str | None]:
    """The config, the data, the batches per epoch and a warning, all checked."""
    from dataclasses import replace

    from bnsgd_numba.nn.data import load_data, load_digits

    check_output_path("--json", args.json)
    check_output_path("--plot", args.plot)
    if args.save == STDOUT:
        raise ValueError("--save -: a model is written to a file, not to stdout")
    check_output_path("--save", args.save)
    if args.plot:
        check_matplotlib("--plot")
    config = train_config(args, parse_params(args.param))
    if args.device == "cuda":
        from bnsgd_numba._core.cuda import cuda_available, unavailable_reason

        if not cuda_available():
            raise RuntimeError(
                f"--device cuda: CUDA kernels cannot run here: {unavailable_reason()}"
            )
    if args.data:
        data = load_data(args.data, num_classes=args.classes)
    else:
        data = load_digits()
        if args.classes is not None:
            if args.classes < data.num_classes:
                raise ValueError(
                    f"--classes {args.classes}: the digits have {data.num_classes} classes"
                )
            data = replace(data, num_classes=args.classes)
    if data.num_classes < 2:
        raise ValueError(f"--classes {data.num_classes}: a classifier needs at least 2")
    batches = steps_per_epoch(len(data.x_train), config.batch_size)
    warning = check_schedule(config, batches)
    return config, data, batches, warning


def run(args: argparse.Namespace) -> int:
    """Train, print the summary, write the JSON and the picture."""
    if args.distributed:  # data-parallel over MPI: bnsgd_numba.distributed
        if args.save:
            return fail("train", "--save is not available with --distributed")
        from bnsgd_numba.cli.distributed import run_distributed

        return run_distributed(args)
    try:
        config, data, batches, warning = _prepare(args)
    except (ValueError, TypeError, KeyError, ImportError, RuntimeError, OSError) as error:
        return fail("train", error)
    import numpy as np

    from bnsgd_numba.nn.training import train

    if warning:
        print(f"bnsgd-numba train: warning: {warning}", file=sys.stderr)
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
        tracker = StepTracker(batches)
        try:
            # a diverging run overflows on its way to the non-finite loss the tracker reports
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                results[key] = train(
                    data, run_config, on_batch=None if args.quiet else bar.batch,
                    on_epoch=None if args.quiet else bar.epoch, on_step=tracker.on_step,
                    device=args.device,
                )  # fmt: skip
        except (ArithmeticError, ValueError) as error:
            if bar.interactive and not args.quiet:
                print(file=sys.stderr)  # end the progress bar's line
            run_name = "" if len(runs) == 1 else f" {label.strip()}"
            return fail("train", _describe_failure(error, tracker, args, run_name))
    seconds = time.perf_counter() - start
    summary = results["bn"].summary()
    summary["seconds"] = seconds
    summary["data"] = data.name
    if "no_bn" in results:
        summary["no_bn"] = results["no_bn"].summary()
    write_outputs(results, summary, args.json, args.plot, data.name)
    if args.save:
        results["bn"].model.save(args.save)
        print(f"model saved to {args.save}", file=sys.stderr)
    print(f"test accuracy {results['bn'].test_accuracy:.4f} in {seconds:.1f} s", file=sys.stderr)
    return 0
