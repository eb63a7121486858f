"""N steps of data-parallel training vs single-process training on the full batches.

Run under ``mpiexec -n R``. Every rank trains with ``train_distributed`` on its
slices; every rank also runs the single-process ``train`` on the full batches
and compares parameters and running statistics. Prints ``RESULT {json}``.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from mpi4py import MPI

from bnsgd_numba import ParameterArena
from bnsgd_numba.distributed import DataParallelSGD, train_distributed
from bnsgd_numba.nn.data import Dataset
from bnsgd_numba.nn.training import TrainConfig, train

# float64: every tensor after the run agrees to this, relative to its largest value
# parameter (rounding of the reduction order, amplified by a few steps).
RTOL = 1e-12

comm = MPI.COMM_WORLD
rank, ranks = comm.Get_rank(), comm.Get_size()
rng = np.random.default_rng(7)
features, classes = 6, 3

# DataParallelSGD alone: rank 0's parameters broadcast at construction, the
# gradients averaged (rank r holds r + 1: the mean is (ranks + 1) / 2, exact
# in binary for 1 to 4 ranks), and a NaN on one rank skips the step everywhere.
arena = ParameterArena([(2, 3), (4,)], dtype=np.float64)
arena.flat_params[...] = np.arange(arena.size) + 100.0 * rank
optimizer = DataParallelSGD(arena, comm=comm, lr=0.5)
assert np.array_equal(arena.flat_params, np.arange(arena.size, dtype=np.float64)), rank
arena.flat_grads[...] = rank + 1.0
assert optimizer.step() is True
mean = (ranks + 1) / 2
assert np.array_equal(arena.flat_params, np.arange(arena.size) - 0.5 * mean), arena.flat_params
assert np.array_equal(arena.flat_grads, np.full(arena.size, mean))
before = arena.flat_params.copy()
arena.flat_grads[...] = 1.0
if rank == ranks - 1:
    arena.flat_grads[3] = np.nan
assert optimizer.step(skip_if_nonfinite=True) is False
assert np.array_equal(arena.flat_params, before) and optimizer.skipped_steps == 1
assert optimizer.parameters_in_sync()


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, features))
    y = np.argmax(x[:, :classes] + 0.5 * rng.normal(size=(n, classes)), axis=1)
    return x, y.astype(np.int64)


parts = [split(n) for n in (37, 10, 10)]
data = Dataset(*parts[0], *parts[1], *parts[2], num_classes=classes, name="synthetic")
# 37 examples, batch 16: batches of 16, 16, 5 (uneven over 2 and 3 ranks);
# the cosine schedule and momentum make every step differ.
config = TrainConfig(
    epochs=2, batch_size=16, lr=0.2, momentum=0.9, weight_decay=1e-3, hidden=8,
    scheduler="cosine", seed=3, dtype="float64",
)  # fmt: skip
epochs_seen: list[int] = []
distributed = train_distributed(
    data, config, comm=comm, on_epoch=lambda record: epochs_seen.append(record.epoch)
)
single = train(data, config)

got = distributed.model.state()
want = single.model.state()
assert len(got) == len(want)
worst = 0.0
for a, b in zip(got, want, strict=True):
    scale = max(float(np.max(np.abs(b))), 1e-300)
    worst = max(worst, float(np.max(np.abs(a - b))) / scale)
if not worst <= RTOL:
    raise AssertionError(f"rank {rank}: parameters differ by {worst:.3g} (relative) > {RTOL}")
for mine, ref in zip(distributed.epochs, single.epochs, strict=True):
    assert abs(mine.train_loss - ref.train_loss) <= 1e-9 * abs(ref.train_loss), (mine, ref)
    assert abs(mine.val_loss - ref.val_loss) <= 1e-9 * abs(ref.val_loss), (mine, ref)
# every rank holds bitwise the same parameters
digests = comm.allgather(np.concatenate([s.ravel() for s in got]).tobytes())
in_sync = all(d == digests[0] for d in digests)
assert in_sync, f"rank {rank}: parameters differ across ranks"
assert epochs_seen == ([1, 2] if rank == 0 else []), epochs_seen
mine = {"rank": rank, "ranks": ranks, "worst": worst, "in_sync": in_sync}
# rank 0 prints every rank's line (lines of several processes may interleave)
for result in comm.gather(mine) or []:
    print("RESULT " + json.dumps(result))
sys.stdout.flush()
