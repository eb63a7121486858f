"""``bnsgd-numba train --distributed``: the train command with the batch split across MPI ranks.

Run as ``mpiexec -n 4 bnsgd-numba train --distributed [options]``. Every
rank loads the data and trains its slice of each batch
(:func:`~bnsgd_numba.distributed.train_distributed`); rank 0 alone prints
the progress and the summary and writes ``--json`` and ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from bnsgd_numba.cli.schedule import parse_params


def run_distributed(args: argparse.Namespace) -> int:
    """Run the train command over ``MPI.COMM_WORLD``; return the exit status.

    Returns
    -------
    int
        0 on success, 2 for bad options or data (the same on every rank), 1
        when training failed on some rank (every rank then reports
        :class:`~bnsgd_numba.distributed.RankFailedError`, rank 0 prints it).
    """
    from bnsgd_numba.cli._progress import ProgressBar, summary_table
    from bnsgd_numba.nn.data import load_data, load_digits
    from bnsgd_numba.nn.training import TrainConfig, make_scheduler

    comm = None
    try:
        if args.device != "cpu":
            raise ValueError("--distributed runs on the CPU (--device cpu)")
        if args.compare_no_bn:
            raise ValueError("--compare-no-bn is not available with --distributed")
        from bnsgd_numba.distributed._mpi import mpi

        comm = mpi().COMM_WORLD
        params = parse_params(args.param)
        config = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
            weight_decay=args.weight_decay, hidden=args.hidden, scheduler=args.scheduler,
            scheduler_params=params, seed=args.seed, dtype=args.dtype,
        )  # fmt: skip
        data = load_data(args.data) if args.data else load_digits()
        make_scheduler(config, 1 + len(data.x_train) // config.batch_size)  # checked up front
    except (ValueError, TypeError, KeyError, ImportError, RuntimeError) as error:
        # the same options and files on every rank: every rank fails alike; one reports
        if comm is None or comm.Get_rank() == 0:
            print(f"bnsgd-numba train: error: {error}", file=sys.stderr)
        return 2

    from bnsgd_numba.distributed.errors import RankFailedError
    from bnsgd_numba.distributed.training import train_distributed

    lead = comm.Get_rank() == 0
    if lead:
        print(
            f"data: {data.name}: {len(data.x_train)} train, {len(data.x_val)} validation, "
            f"{len(data.x_test)} test, {data.num_features} inputs, {data.num_classes} classes; "
            f"batch of {config.batch_size} split over {comm.Get_size()} MPI rank(s)",
            file=sys.stderr,
        )
    bar = ProgressBar(config.epochs, sys.stderr)
    quiet = args.quiet or not lead
    start = time.perf_counter()
    try:
        result = train_distributed(
            data, config, comm=comm, on_batch=None if quiet else bar.batch,
            on_epoch=None if quiet else bar.epoch,
        )  # fmt: skip
    except RankFailedError as error:
        if lead:
            print(f"bnsgd-numba train: error: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    if not lead:
        return 0
    results = {"bn": result}
    print(summary_table(results))
    summary = result.summary()
    summary["seconds"] = seconds
    summary["data"] = data.name
    summary["ranks"] = comm.Get_size()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
    if args.plot:
        from bnsgd_numba.plotting import plot_training

        plot_training(results, args.plot)
    print(
        f"test accuracy {result.test_accuracy:.4f} in {seconds:.1f} s on {comm.Get_size()} rank(s)",
        file=sys.stderr,
    )
    return 0
