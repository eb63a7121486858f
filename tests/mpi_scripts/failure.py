"""A failure on one rank, under ``mpiexec -n R``: every rank must end with a clear error.

Modes (argv[1]):

- ``bad_input``: the last rank gives SyncBatchNorm an input with the wrong
  number of channels; every rank raises RankFailedError (also a ValueError).
- ``train_step``: the labels of the last rank's slice of the first batch are
  out of range (the same data on every rank), so its loss raises an
  IndexError in the middle of a training step, while the other ranks are
  already in SyncBatchNorm's collectives; every rank raises.
- ``different_data``: the last rank's labels differ; train_distributed's
  startup agreement fails on every rank with a ValueError naming it.
- ``hang``: the last rank sleeps instead of joining the collective; the
  others abort the job after the 2-second deadline, naming it.
- ``raise_outside``: the last rank raises a RuntimeError outside any guard
  and leaves it uncaught; it ends the job with MPI_Abort, naming itself.
- ``exit_early``: the last rank calls ``sys.exit(0)`` after one forward pass
  instead of a second; the others end the job as soon as its departure
  message arrives, naming it (the deadline is 60 s).

Every rank writes ``RANK <r> <ExceptionType> ...: <message>`` to
``<argv[2]>/rank<r>.txt`` (files, because mpiexec may drop the output still in
flight when it tears a failed job down), then a barrier (the communicator is
still usable after a RankFailedError: no collective is left pending), then the
exception ends every rank.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

from bnsgd_numba.distributed import RankFailedError, SyncBatchNorm

comm = MPI.COMM_WORLD
rank, ranks = comm.Get_rank(), comm.Get_size()
last = rank == ranks - 1
mode = sys.argv[1]
reports = Path(sys.argv[2]) if len(sys.argv) > 2 else None


def report(error: BaseException) -> None:
    line = (
        f"RANK {rank} {type(error).__name__} value_error={isinstance(error, ValueError)} "
        f"index_error={isinstance(error, IndexError)}: {error}"
    )
    if reports is not None:
        (reports / f"rank{rank}.txt").write_text(line)
    print(line, flush=True)
    comm.Barrier()  # every rank reported before any exits


try:
    if mode == "bad_input":
        layer = SyncBatchNorm(4, dtype=np.float64, comm=comm, timeout=30)
        x = np.ones((3, 5 if last else 4))
        layer.forward(x, training=True)
    elif mode in ("train_step", "different_data"):
        from bnsgd_numba.distributed import train_distributed
        from bnsgd_numba.distributed.training import rank_slices
        from bnsgd_numba.nn.data import Dataset
        from bnsgd_numba.nn.training import TrainConfig, batch_order_rng

        rng = np.random.default_rng(0)
        x = rng.normal(size=(20, 4))
        y = rng.integers(0, 3, 20)
        config = TrainConfig(epochs=1, batch_size=10, hidden=4, scheduler="cosine", dtype="float64")
        if mode == "train_step":
            first_batch = batch_order_rng(config.seed).permutation(20)[:10]
            y[first_batch[rank_slices(10, ranks)[-1]]] = 99  # out of range for 3 classes
        elif last:
            y[0] = (y[0] + 1) % 3
        data = Dataset(x, y, x[:4], y[:4], x[:4], y[:4], num_classes=3, name="labels")
        train_distributed(data, config, comm=comm, timeout=30)
    elif mode == "hang":
        layer = SyncBatchNorm(2, dtype=np.float64, comm=comm, timeout=2)
        if last:
            time.sleep(60)
        layer.forward(np.ones((3, 2)), training=True)
    elif mode in ("raise_outside", "exit_early"):
        layer = SyncBatchNorm(2, dtype=np.float64, comm=comm, timeout=60)
        x = np.arange(6.0).reshape(3, 2)
        layer.forward(x, training=True)
        if last and mode == "raise_outside":
            raise RuntimeError("not in a guard")
        if last:
            sys.exit(0)
        layer.forward(x, training=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
except RankFailedError as error:
    report(error)
    raise
print(f"RANK {rank} finished without an error", flush=True)
