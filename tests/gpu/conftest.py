"""GPU tests: on a real GPU, or in the CUDA simulator (the default, see tests/conftest.py).

Every test here is marked ``gpu`` and skipped when neither a GPU nor the
simulator is there. Under the simulator, which runs one Python thread per
CUDA thread, blocks are shrunk to one or two warps, the interpreter's
thread switch interval is shortened so that barriers are cheap, and shared
arrays are created thread-safely (:func:`_shared_array`).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from bnsgd_numba import config
from bnsgd_numba._core import cuda as backend
from tests.gpu import block_barrier

GPU_TESTS = Path(__file__).parent
SIMULATOR_THREADS_PER_BLOCK = 32


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of this folder ``gpu``; skip them without CUDA."""
    mine = [item for item in items if GPU_TESTS in Path(item.path).parents]
    if not mine:
        return
    if backend.simulator_requested() and not backend.SIMULATOR:
        raise pytest.UsageError(
            "NUMBA_ENABLE_CUDASIM=1 is set but numba was imported before it was: the "
            "CUDA simulator is off, so the GPU tests would silently skip. Something "
            "(a pytest plugin?) imports numba before tests/conftest.py runs."
        )
    skip = None
    if not backend.cuda_available():
        skip = pytest.mark.skip(reason=f"no CUDA: {backend.unavailable_reason()}")
    for item in mine:
        item.add_marker(pytest.mark.gpu)
        if skip is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch):
    """Under the simulator: one-warp blocks and a short thread switch interval.

    ``BNSGD_SIM_SWITCH`` sets the interval (seconds, default 1e-3, the
    fastest for the suite); a much shorter one, such as 1e-6, switches
    threads far more often and so shakes out races between a block's threads.
    """
    if not backend.SIMULATOR:
        yield
        return
    monkeypatch.setattr(config, "GPU_THREADS_PER_BLOCK", SIMULATOR_THREADS_PER_BLOCK)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(float(os.environ.get("BNSGD_SIM_SWITCH", "1e-3")))
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


_SHARED_LOCK = threading.Lock()


def _shared_array(self, shape, dtype, alignment=None):
    """numba-cuda's simulated ``cuda.shared.array``, thread-safe and cheaper.

    The simulator keys a block's shared arrays by the caller's (file, line)
    and creates one on first use with a check-then-set that is not atomic:
    two threads of a block reaching the line together can each create their
    own array, and the block then reads values its other threads never wrote
    (rare, load-dependent wrong results in the reduction tests). It also takes
    the caller from ``traceback.extract_stack``, which stats every source file
    on the stack on every call. Same key and same arrays here, under a lock,
    with the caller read from the frame.
    """
    if alignment is not None or shape == 0:
        return _SIMULATOR_SHARED_ARRAY(self, shape, dtype, alignment)
    caller = sys._getframe(1)
    key = (caller.f_code.co_filename, caller.f_lineno)
    with _SHARED_LOCK:
        array = self._allocations.get(key)
        if array is None:
            if isinstance(dtype, _NUMBA_TYPE):
                dtype = _AS_DTYPE(dtype)  # a numba type such as float64
            array = self._allocations[key] = np.empty(shape, dtype)
    return array


_SIMULATOR_SHARED_ARRAY = None
_AS_DTYPE = None
_NUMBA_TYPE = None


@pytest.fixture(autouse=True, scope="session")
def thread_safe_shared_arrays():
    """Under the simulator: :func:`_shared_array` and a barrier in place of numba-cuda's own.

    The barrier (:mod:`tests.gpu.block_barrier`) replaces the simulator's
    polling of a block's threads, which took most of these tests' time.
    """
    global _SIMULATOR_SHARED_ARRAY, _AS_DTYPE, _NUMBA_TYPE
    if not backend.SIMULATOR:
        yield
        return
    from numba.cuda.simulator import kernelapi

    _SIMULATOR_SHARED_ARRAY = kernelapi.FakeCUDAShared.array
    _AS_DTYPE = kernelapi.numpy_support.as_dtype
    _NUMBA_TYPE = kernelapi.types.Type
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernelapi.FakeCUDAShared, "array", _shared_array)
        block_barrier.install(patch)
        yield


def to_device(array):
    """Copy a host array to the device (numba device array)."""
    return backend.to_device(array)


def to_host(array):
    """Copy a device array to the host."""
    return backend.to_host(array)
