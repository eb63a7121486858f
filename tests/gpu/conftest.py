"""GPU tests: on a real GPU, or in the CUDA simulator (the default, see tests/conftest.py).

Every test here is marked ``gpu`` and skipped when neither a GPU nor the
simulator is there. Under the simulator, which runs one Python thread per
CUDA thread, blocks are shrunk to one or two warps, the interpreter's
thread switch interval is shortened so that barriers are cheap, and shared
arrays find their call site cheaply.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from bnsgd_numba import _cuda_backend as backend
from bnsgd_numba import config

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
    """Under the simulator: one-warp blocks and a short thread switch interval."""
    if not backend.SIMULATOR:
        yield
        return
    monkeypatch.setattr(config, "GPU_THREADS_PER_BLOCK", SIMULATOR_THREADS_PER_BLOCK)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(2e-4)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def _shared_array_call_site_stack(frame, limit=None):
    # the two entries numba-cuda's simulator reads, straight from the frames
    caller = frame.f_back
    return [
        (caller.f_code.co_filename, caller.f_lineno),
        (frame.f_code.co_filename, frame.f_lineno),
    ]


@pytest.fixture(autouse=True, scope="session")
def cheap_shared_arrays():
    """Under the simulator: find a shared array's call site without formatting the stack.

    The simulator keys ``cuda.shared.array`` by the caller's file and line, which
    it takes from ``traceback.extract_stack``: that stats every source file on the
    thread's stack, on every call of every thread. The simulator's stand-in for
    warp shuffles (``_cuda_backend.shfl_down3``) allocates on every shuffle, ten
    per block reduction, so this was about half the time of a reduction block.
    The same key, read from the two frames directly; left alone if numba-cuda
    no longer reads it that way.
    """
    if not backend.SIMULATOR:
        yield
        return
    import inspect

    from numba.cuda.simulator import kernelapi

    source = inspect.getsource(kernelapi.FakeCUDAShared.array)
    if "traceback.extract_stack(sys._getframe())" not in source or "[-2][0:2]" not in source:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            kernelapi,
            "traceback",
            types.SimpleNamespace(extract_stack=_shared_array_call_site_stack),
        )
        yield


def to_device(array):
    """Copy a host array to the device (numba device array)."""
    return backend.to_device(array)


def to_host(array):
    """Copy a device array to the host."""
    return backend.to_host(array)
