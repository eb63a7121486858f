"""``bnsgd-numba train --distributed``: the train command with the batch split across MPI ranks.

Run as ``mpiexec -n 4 bnsgd-numba train --distributed [options]``. Every
rank loads the data and trains its slice of each batch
(:func:`~bnsgd_numba.distributed.train_distributed`); rank 0 alone prints
the progress and the summary and writes ``--json`` and ``--plot``.

Every failure is one line on stderr and exit code 2 on every rank. A failure
the ranks agreed on (a bad option, data missing or different on some rank,
a step that failed on some rank) is printed by rank 0 alone and names the
failing rank(s); a failure only one rank knows of (MPI missing, a file rank
0 could not write) is printed by that rank, naming it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from bnsgd_numba.cli._options import check_matplotlib, check_output_path, train_config
from bnsgd_numba.cli.schedule import parse_params

LAUNCHER_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
"""Environment variables in which launchers give a process its rank (MPICH, Open MPI, PMIx)."""


def _launcher_rank() -> int:
    """This process's rank as the launcher set it (0 when launched alone)."""
    for name in LAUNCHER_RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def _fail(error: BaseException | str, *, rank: int, ranks: int, agreed: bool) -> int:
    """Print one line (rank 0 for agreed failures, else the failing rank); return 2."""
    text = str(error).replace("\n", " ")
    if not agreed and ranks > 1:
        text = f"rank {rank} of {ranks}: {text}"
    if rank == 0 or not agreed:
        print(f"bnsgd-numba train: error: {text}", file=sys.stderr, flush=True)
    return 2


def _load(args: argparse.Namespace, lead: bool) -> tuple[Any, Any]:
    """The config and the data, checked as far as they can be before training."""
    from bnsgd_numba.nn.data import load_data, load_digits
    from bnsgd_numba.nn.training import make_scheduler

    config = train_config(args, parse_params(args.param))
    if lead:  # rank 0 alone writes the files
        check_output_path("--json", args.json)
        check_output_path("--plot", args.plot)
        if args.plot:
            check_matplotlib("--plot")
    data = load_data(args.data, num_classes=args.classes) if args.data else load_digits()
    make_scheduler(config, 1 + len(data.x_train) // config.batch_size)
    return config, data


def run_distributed(args: argparse.Namespace) -> int:
    """Run the train command over ``MPI.COMM_WORLD``; return the exit status.

    Returns
    -------
    int
        0 on success; 2 on any failure (bad options or data on any rank, a
        failed step, a file that cannot be written), with one line on
        stderr.
    """
    try:
        if args.device != "cpu":
            raise ValueError("--distributed runs on the CPU (--device cpu)")
        if args.compare_no_bn:
            raise ValueError("--compare-no-bn is not available with --distributed")
        from bnsgd_numba.distributed._mpi import mpi

        comm = mpi().COMM_WORLD
    except (ValueError, ImportError) as error:
        # the same on every process: the launcher's rank 0 reports it
        return _fail(error, rank=_launcher_rank(), ranks=1, agreed=True)

    from bnsgd_numba.cli._progress import ProgressBar, write_outputs
    from bnsgd_numba.distributed.errors import RankFailedError, RankGuard, checked_timeout
    from bnsgd_numba.distributed.training import train_distributed

    rank, ranks = comm.Get_rank(), comm.Get_size()
    lead = rank == 0
    timeout, timeout_error = checked_timeout("default")
    try:
        with RankGuard(comm, "train --distributed (options and data)", timeout=timeout):
            if timeout_error is not None:
                raise timeout_error
            config, data = _load(args, lead)
        if lead:
            print(
                f"data: {data.name}: {len(data.x_train)} train, {len(data.x_val)} validation, "
                f"{len(data.x_test)} test, {data.num_features} inputs, {data.num_classes} "
                f"classes; batch of {config.batch_size} split over {ranks} MPI rank(s)",
                file=sys.stderr,
            )
        bar = ProgressBar(config.epochs, sys.stderr)
        quiet = args.quiet or not lead
        start = time.perf_counter()
        result = train_distributed(
            data, config, comm=comm, timeout=timeout, on_batch=None if quiet else bar.batch,
            on_epoch=None if quiet else bar.epoch,
        )  # fmt: skip
        seconds = time.perf_counter() - start
    except RankFailedError as error:
        return _fail(error, rank=rank, ranks=ranks, agreed=True)
    except Exception as error:  # this rank alone: the others end when they miss it
        return _fail(f"{type(error).__name__}: {error}", rank=rank, ranks=ranks, agreed=False)
    if not lead:
        return 0
    try:
        summary = result.summary()
        summary.update(seconds=seconds, data=data.name, ranks=ranks)
        write_outputs({"bn": result}, summary, args.json, args.plot, data.name)
    except Exception as error:
        return _fail(f"{type(error).__name__}: {error}", rank=rank, ranks=ranks, agreed=False)
    print(
        f"test accuracy {result.test_accuracy:.4f} in {seconds:.1f} s on {ranks} rank(s)",
        file=sys.stderr,
    )
    return 0
