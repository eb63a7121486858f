"""SyncBatchNorm on unequal parts of a batch vs BatchNorm on the whole batch.

Run under ``mpiexec -n R``; every rank checks its own slice and the rank sums,
then prints one ``RESULT {json}`` line. Any mismatch raises (exit code != 0).
"""

from __future__ import annotations

import json
import sys

import numpy as np
from mpi4py import MPI

from bnsgd_numba import BatchNorm
from bnsgd_numba.distributed import SyncBatchNorm

comm = MPI.COMM_WORLD
rank, ranks = comm.Get_rank(), comm.Get_size()
# unequal parts, including an empty one from 3 ranks on
PARTS = {1: [7], 2: [5, 2], 3: [4, 0, 3], 4: [1, 3, 0, 4]}[ranks]
RTOL = {np.float64: 1e-12, np.float32: 1e-5}
worst: dict[str, float] = {}
checks = 0


def close(name: str, got: np.ndarray, want: np.ndarray, dtype: type) -> None:
    """|got - want| <= rtol * max|want| elementwise (rtol relative to the largest value)."""
    global checks
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = max(float(np.max(np.abs(want), initial=0.0)), np.finfo(np.float64).tiny)
    error = float(np.max(np.abs(got - want), initial=0.0)) / scale
    worst[name] = max(worst.get(name, 0.0), error)
    if not error <= RTOL[dtype]:
        raise AssertionError(f"rank {rank}: {name}: relative error {error:.3g} > {RTOL[dtype]}")
    checks += 1


def run_case(label: str, shape_tail: tuple[int, ...], dtype: type, steps: int, **kw) -> None:
    channel_axis = kw.get("channel_axis", 1)
    rng = np.random.default_rng([len(label), ranks])
    total = sum(PARTS)
    whole = [rng.normal(3.0, 2.0, (total, *shape_tail)).astype(dtype) for _ in range(steps)]
    grads = [rng.normal(0.0, 1.0, (total, *shape_tail)).astype(dtype) for _ in range(steps)]
    start = sum(PARTS[:rank])
    mine = slice(start, start + PARTS[rank])
    num_features = shape_tail[channel_axis - 1] if channel_axis > 0 else shape_tail[-1]
    ref = BatchNorm(num_features, dtype=dtype, **kw)
    sync = SyncBatchNorm(num_features, dtype=dtype, comm=comm, **kw)
    if ref.affine:
        w = rng.uniform(0.5, 1.5, num_features).astype(dtype)
        b = rng.normal(size=num_features).astype(dtype)
        for layer in (ref, sync):
            layer.weight[...] = w
            layer.bias[...] = b
    for step in range(steps):
        tag = f"{label}[{step}]"
        y_ref = ref.forward(whole[step], training=True)
        y = sync.forward(np.ascontiguousarray(whole[step][mine]), training=True)
        close(f"{tag} y", y, y_ref[mine], dtype)
        dx_ref = ref.backward(grads[step])
        dx = sync.backward(np.ascontiguousarray(grads[step][mine]))
        close(f"{tag} dx", dx, dx_ref[mine], dtype)
        if ref.affine:
            summed = comm.allreduce(np.stack([sync.grad_weight, sync.grad_bias]).astype(np.float64))
            close(f"{tag} grad_weight (sum over ranks)", summed[0], ref.grad_weight, dtype)
            close(f"{tag} grad_bias (sum over ranks)", summed[1], ref.grad_bias, dtype)
        if ref.track_running_stats:
            close(f"{tag} running_mean", sync.running_mean, ref.running_mean, dtype)
            close(f"{tag} running_var", sync.running_var, ref.running_var, dtype)
            assert sync.num_batches_tracked == ref.num_batches_tracked
    # eval: local, with the (global) running statistics
    if ref.track_running_stats:
        probe = whole[0][mine]
        close(f"{label} eval y", sync.forward(probe, training=False),
              ref.forward(whole[0], training=False)[mine], dtype)  # fmt: skip


run_case("nchw", (3, 4, 2), np.float64, 2)
run_case("nc", (5,), np.float64, 2, momentum=None)
run_case("nlc channels-last", (6, 3), np.float64, 1, channel_axis=-1)
run_case("affine off", (3, 5), np.float64, 1, affine=False)
run_case("no running stats", (4,), np.float64, 1, track_running_stats=False)
run_case("float32", (3, 5), np.float32, 1)

# one value per channel in the global batch is an error on every rank
one = np.zeros((1 if rank == 0 else 0, 2), np.float64)
try:
    SyncBatchNorm(2, dtype=np.float64, comm=comm).forward(one, training=True)
except ValueError as error:
    assert "more than 1 value per channel" in str(error), error
    checks += 1
else:
    raise AssertionError("a global batch of one value per channel was accepted")

# a NaN on the last rank makes the global statistics non-finite: every rank
# raises FloatingPointError naming the channel, nothing is updated anywhere
layer = SyncBatchNorm(3, dtype=np.float64, comm=comm)
x = np.ones((2, 3))
x[:, 0] = [1.0, 2.0]
if rank == ranks - 1:
    x[1, 2] = np.nan
try:
    layer.forward(x, training=True)
except FloatingPointError as error:
    assert "1 channel(s) [2]" in str(error), error
    assert layer.num_batches_tracked == 0 and np.all(layer.running_var == 1.0)
    checks += 1
else:
    raise AssertionError("non-finite global statistics were accepted")

mine = {"rank": rank, "ranks": ranks, "checks": checks, "worst": worst}
# rank 0 prints every rank's line (lines of several processes may interleave)
for result in comm.gather(mine) or []:
    print("RESULT " + json.dumps(result))
sys.stdout.flush()
