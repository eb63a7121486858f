"""The simulator's block barrier (``tests/gpu/block_barrier.py``) keeps CUDA's semantics.

The GPU tests run the simulator with a barrier in place of its polling loop;
these tests pin what the kernels rely on: ``syncthreads`` orders a block's
shared-memory writes before the reads after it, threads that have returned
no longer hold the others up, ``syncthreads_count`` counts, and an exception
in one thread ends the launch with that thread's error instead of a hang.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnsgd_numba._core import cuda as backend
from bnsgd_numba._core.cuda import cuda, gpu_kernel
from tests.gpu.conftest import to_device, to_host

pytestmark = pytest.mark.skipif(not backend.SIMULATOR, reason="the barrier is the simulator's")

THREADS = 32


@gpu_kernel
def _rotate_through_shared(out, rounds):
    # each round every thread writes its value, then reads its neighbour's
    scratch = cuda.shared.array(THREADS, np.float64)
    t = cuda.threadIdx.x
    value = np.float64(t)
    for _ in range(rounds):
        scratch[t] = value
        cuda.syncthreads()
        value = scratch[(t + 1) % THREADS]
        cuda.syncthreads()
    out[t] = value


@gpu_kernel
def _early_return(out):
    t = cuda.threadIdx.x
    if t % 2 == 1:
        return
    cuda.syncthreads()
    out[t] = 1.0


@gpu_kernel
def _count(out):
    t = cuda.threadIdx.x
    out[t] = cuda.syncthreads_count(t < 5)


@gpu_kernel
def _fails_in_one_thread(out):
    t = cuda.threadIdx.x
    if t == 3:
        out[THREADS + 5] = 1.0  # out of bounds: IndexError in thread 3
    cuda.syncthreads()
    out[t] = 1.0


def test_syncthreads_orders_shared_memory_over_many_rounds():
    out = to_device(np.zeros(THREADS))
    _rotate_through_shared[2, THREADS](out, 5)
    assert to_host(out).tolist() == [float((t + 5) % THREADS) for t in range(THREADS)]


def test_returned_threads_do_not_hold_the_block_up():
    out = to_device(np.zeros(THREADS))
    _early_return[1, THREADS](out)
    assert to_host(out).tolist() == [1.0 - t % 2 for t in range(THREADS)]


def test_syncthreads_count_counts_the_block():
    out = to_device(np.zeros(THREADS, dtype=np.int64))
    _count[1, THREADS](out)
    assert set(to_host(out).tolist()) == {5}


def test_an_error_in_one_thread_ends_the_launch_naming_it():
    out = to_device(np.zeros(THREADS))
    with pytest.raises(IndexError, match=r"tid=\[3, 0, 0\]"):
        _fails_in_one_thread[1, THREADS](out)
