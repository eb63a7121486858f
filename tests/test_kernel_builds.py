"""How the kernels are compiled: what runs on the thread pool.

A parallel build must start one parallel region per ``prange`` loop and no
other: numba's plain ``parallel=True`` also turns ``np.zeros``, slice
assignments and array expressions into regions of their own, each of which
wakes the pool (``bnsgd_numba._core.compile.PRANGE_ONLY``).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from numba import prange

from bnsgd_numba import config
from bnsgd_numba._core.compile import njit_options


def _scratch_then_prange(x, out):
    # what a reduction kernel does: scratch partials, a prange over tasks,
    # a merge on the calling thread
    part = np.zeros((2, x.shape[0]), dtype=np.float64)
    part[1, :] = 1.0
    scaled = x * 2.0
    for task in prange(x.shape[0]):
        part[0, task] = scaled[task] + part[1, task]
    out[:] = part[0]


def _parallel_regions(function, *args) -> int:
    build = numba.njit(cache=False, **njit_options(True, config.FASTMATH))(function)
    build(*args)
    overload = build.overloads[build.signatures[0]]
    return len(overload.metadata["parfor_diagnostics"].initial_parfors)


# numba warns that the parfor body it compiles on its own has no parfor
@pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaPerformanceWarning")
def test_a_parallel_build_starts_a_region_for_its_prange_only():
    x = np.arange(5.0)
    out = np.empty(5)
    assert _parallel_regions(_scratch_then_prange, x, out) == 1
    np.testing.assert_array_equal(out, x * 2.0 + 1.0)


def test_numbas_own_parallel_option_would_start_more():
    # the premise of the test above: with parallel=True the same source
    # starts a region for np.zeros, the slice assignments and x * 2.0 too
    build = numba.njit(cache=False, parallel=True)(_scratch_then_prange)
    build(np.arange(5.0), np.empty(5))
    overload = build.overloads[build.signatures[0]]
    assert len(overload.metadata["parfor_diagnostics"].initial_parfors) > 1
