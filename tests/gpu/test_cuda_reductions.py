"""The shared device reductions (``bnsgd_numba._core.cuda_reductions``) follow their fixed trees.

Each reduction is run in a tiny kernel and compared, bitwise, with a Python
model of its documented order: the warp tree (lane l takes lane l + offset,
offsets 16, 8, 4, 2, 1), then the same tree over the warps' results (lanes
past the last warp hold zeros); the tile tree over the rows of each column
(row ty takes row ty + half). Sums of random values in another order would
round differently. Chan's merge has multiply-adds that a GPU contracts into
FMAs, so off the simulator its results are compared to a few ulps instead.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from bnsgd_numba._core import cuda as backend
from bnsgd_numba._core.cuda import cuda, gpu_kernel
from tests.gpu.conftest import to_device, to_host

WARP = 32


def _chan(a, b):
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    if n_b == 0.0:
        return a
    if n_a == 0.0:
        return b
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta * delta * (n_a * (n_b / n))


def _add(a, b):
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _max_add(a, b):
    return max(a[0], b[0]), a[1] + b[1], a[2]


def _tree(values, combine):
    # lane 0's result of the tree over one warp (shuffles past the warp's end are never read)
    values = list(values)
    offset = WARP // 2
    while offset > 0:
        values = [combine(values[lane], values[lane + offset]) for lane in range(offset)]
        offset //= 2
    return values[0]


def _block_model(values, combine):
    warps = [_tree(values[w : w + WARP], combine) for w in range(0, len(values), WARP)]
    return _tree(warps + [(0.0, 0.0, 0.0)] * (WARP - len(warps)), combine)


def _tile_model(column, combine):
    column = list(column)
    half = len(column) // 2
    while half > 0:
        column = [combine(column[ty], column[ty + half]) for ty in range(half)] + column[half:]
        half //= 2
    return column[0]


@functools.cache
def _kernels():
    # compiled on first use: without numba-cuda the module still imports (and skips)
    from bnsgd_numba._core.cuda_reductions import (
        block_max_sum,
        block_merge,
        block_sum3,
        tile_merge,
        tile_sum3,
    )

    @gpu_kernel
    def block(values, which, out):
        tid = cuda.threadIdx.x
        threads = cuda.blockDim.x
        k = cuda.blockIdx.x * threads + tid
        a = values[0, k]
        b = values[1, k]
        c = values[2, k]
        if which == 0:
            a, b, c = block_merge(tid, threads, a, b, c)
        elif which == 1:
            a, b, c = block_sum3(tid, threads, a, b, c)
        else:
            a, b, c = block_max_sum(tid, threads, a, b, c)
        if tid == 0:
            out[0, cuda.blockIdx.x] = a
            out[1, cuda.blockIdx.x] = b
            out[2, cuda.blockIdx.x] = c

    @gpu_kernel
    def tile(values, which, out):
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        rows = cuda.blockDim.y
        k = ty * WARP + tx
        a = values[0, k]
        b = values[1, k]
        c = values[2, k]
        if which == 0:
            a, b, c = tile_merge(tx, ty, rows, a, b, c)
        else:
            a, b, c = tile_sum3(tx, ty, rows, a, b, c)
        if ty == 0:
            out[0, tx] = a
            out[1, tx] = b
            out[2, tx] = c

    return block, tile


def _statistics(rng, size):
    # (count, mean, M2) triples, some empty, as the kernels' threads hold them
    count = rng.integers(0, 5, size).astype(np.float64)
    mean = np.where(count > 0, rng.normal(3.0, 2.0, size), 0.0)
    m2 = np.where(count > 1, rng.uniform(0.0, 4.0, size), 0.0)
    return np.stack([count, mean, m2])


def _assert_matches(actual, expected, exact):
    expected = np.asarray(expected, dtype=np.float64)
    if exact:
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=8 * np.finfo(np.float64).eps, atol=0)


@pytest.mark.parametrize("threads", [32, 64])
def test_block_reductions_follow_the_warp_then_block_tree(threads):
    block, _ = _kernels()
    rng = np.random.default_rng(threads)
    blocks = 2
    merges = _statistics(rng, blocks * threads)
    sums = rng.normal(0.0, 1.0, (3, blocks * threads)) * np.array([[1.0], [1e8], [1e-8]])
    tops = np.stack([rng.exponential(1.0, blocks * threads), sums[1], np.zeros(blocks * threads)])
    for which, values, combine in ((0, merges, _chan), (1, sums, _add), (2, tops, _max_add)):
        out = to_device(np.zeros((3, blocks)))
        block[blocks, threads](to_device(values), which, out)
        expected = [
            _block_model(
                [tuple(values[:, i]) for i in range(j * threads, (j + 1) * threads)], combine
            )
            for j in range(blocks)
        ]  # fmt: skip
        exact = which != 0 or backend.SIMULATOR
        _assert_matches(to_host(out), np.array(expected).T, exact)


def test_block_max_sum_passes_a_nan_in_its_sum():
    block, _ = _kernels()
    values = np.zeros((3, 64))
    values[0] = np.arange(64.0)
    values[1, 40] = math.nan
    out = to_device(np.zeros((3, 1)))
    block[1, 64](to_device(values), 2, out)
    top, total, _ = to_host(out)[:, 0]
    assert top == 63.0 and math.isnan(total)


@pytest.mark.parametrize("rows", [1, 2, 8])
def test_tile_reductions_follow_the_row_tree_of_each_column(rows):
    _, tile = _kernels()
    rng = np.random.default_rng(rows)
    merges = _statistics(rng, rows * WARP)
    sums = rng.normal(0.0, 1.0, (3, rows * WARP)) * np.array([[1.0], [1e8], [1e-8]])
    for which, values, combine in ((0, merges, _chan), (1, sums, _add)):
        out = to_device(np.zeros((3, WARP)))
        tile[1, (WARP, rows)](to_device(values), which, out)
        expected = [
            _tile_model([tuple(values[:, ty * WARP + tx]) for ty in range(rows)], combine)
            for tx in range(WARP)
        ]
        exact = which != 0 or backend.SIMULATOR
        _assert_matches(to_host(out), np.array(expected).T, exact)
