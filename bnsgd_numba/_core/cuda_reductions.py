"""Device-side reductions every CUDA kernel shares: Chan's merge, warp and block trees, tiles.

A reduction here combines three float64 values per thread (statistics
``(count, mean, M2)``, or three sums; a caller that needs fewer passes 0.0
for the rest) under one combining function, in an order fixed by the launch
configuration: the results are bitwise identical from run to run, with no
atomics.

- :func:`block_merge` (Chan's formula), :func:`block_sum3` (sums) and
  :func:`block_max_sum` (the maximum of the first value, the sum of the
  second): a tree over each warp's lanes through warp shuffles (offsets 16,
  8, 4, 2, 1), then the same tree over the warps' results through shared
  memory; thread 0 gets the block's result.
- :func:`tile_merge` and :func:`tile_sum3`: a block of ``(32, rows)``
  threads, one column per lane (coalesced channels-last reads), combines the
  rows of each column in a tree through shared memory (row ``ty`` with row
  ``ty + half``, half = rows/2, ..., 1); thread ``(tx, 0)`` gets column tx's
  result.

Every thread of the block calls a block or tile reduction together (they
hold barriers, and the simulator's shuffle stand-in,
:func:`bnsgd_numba._core.cuda.shfl_down3`, needs the whole block), and a
kernel may call one several times: each ends with a barrier before its
shared memory is written again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from numba import float64

from bnsgd_numba._core.cuda import (
    MAX_THREADS_PER_BLOCK,
    WARP_SIZE,
    cuda,
    gpu_device_function,
    shfl_down3,
)

MAX_WARPS = MAX_THREADS_PER_BLOCK // WARP_SIZE
TILE_WIDTH = WARP_SIZE
"""Columns of a tile reduction's block: one warp wide."""


@gpu_device_function
def merge_chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """(count, mean, M2) of two parts together (Chan, Golub & LeVeque, 1979); empty parts pass."""
    if n_b == 0.0:
        return n_a, mean_a, m2_a
    if n_a == 0.0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * (n_b / n))
    return n, mean, m2


@gpu_device_function
def _add3(a, b, c, a_other, b_other, c_other):
    return a + a_other, b + b_other, c + c_other


@gpu_device_function
def _max_add(top, total, unused, top_other, total_other, unused_other):
    return max(top, top_other), total + total_other, unused


def _block_reduction(combine: Callable[..., Any]) -> Any:
    # The block reduction of three values under ``combine`` (a device
    # function of the own three values and another thread's three).

    @gpu_device_function
    def warp_reduce(a, b, c):
        offset = WARP_SIZE // 2
        while offset > 0:
            a_other, b_other, c_other = shfl_down3(a, b, c, offset)
            a, b, c = combine(a, b, c, a_other, b_other, c_other)
            offset //= 2
        return a, b, c

    @gpu_device_function
    def block_reduce(tid, threads, a, b, c):
        warp_a = cuda.shared.array(MAX_WARPS, float64)
        warp_b = cuda.shared.array(MAX_WARPS, float64)
        warp_c = cuda.shared.array(MAX_WARPS, float64)
        a, b, c = warp_reduce(a, b, c)
        lane = tid % WARP_SIZE
        if lane == 0:
            warp = tid // WARP_SIZE
            warp_a[warp] = a
            warp_b[warp] = b
            warp_c[warp] = c
        cuda.syncthreads()
        if lane < threads // WARP_SIZE:
            a = warp_a[lane]
            b = warp_b[lane]
            c = warp_c[lane]
        else:
            a = 0.0
            b = 0.0
            c = 0.0
        a, b, c = warp_reduce(a, b, c)
        cuda.syncthreads()
        return a, b, c

    return block_reduce


def _tile_reduction(combine: Callable[..., Any]) -> Any:
    # The tile reduction of three values under ``combine`` (as _block_reduction).

    @gpu_device_function
    def tile_reduce(tx, ty, rows, a, b, c):
        tile_a = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
        tile_b = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
        tile_c = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
        k = ty * TILE_WIDTH + tx
        tile_a[k] = a
        tile_b[k] = b
        tile_c[k] = c
        cuda.syncthreads()
        half = rows // 2
        while half > 0:
            if ty < half:
                other = k + half * TILE_WIDTH
                a, b, c = combine(a, b, c, tile_a[other], tile_b[other], tile_c[other])
                tile_a[k] = a
                tile_b[k] = b
                tile_c[k] = c
            cuda.syncthreads()
            half //= 2
        return a, b, c

    return tile_reduce


block_merge = _block_reduction(merge_chan)
"""``block_merge(tid, threads, n, mean, m2)``: the block's (count, mean, M2), at thread 0."""
block_sum3 = _block_reduction(_add3)
"""``block_sum3(tid, threads, a, b, c)``: the block's three sums, at thread 0."""
block_max_sum = _block_reduction(_max_add)
"""``block_max_sum(tid, threads, top, total, 0.0)``: max(top) (top >= 0) and sum(total), at thread 0."""
tile_merge = _tile_reduction(merge_chan)
"""``tile_merge(tx, ty, rows, n, mean, m2)``: column tx's (count, mean, M2), at thread (tx, 0)."""
tile_sum3 = _tile_reduction(_add3)
"""``tile_sum3(tx, ty, rows, a, b, c)``: column tx's three sums, at thread (tx, 0)."""
