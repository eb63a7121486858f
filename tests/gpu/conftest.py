"""GPU tests: on a real GPU, or in the CUDA simulator (the default, see tests/conftest.py).

Every test here is marked ``gpu`` and skipped when neither a GPU nor the
simulator is there. Under the simulator, which runs one Python thread per
CUDA thread, blocks are shrunk to one or two warps and the interpreter's
thread switch interval is shortened so that barriers are cheap.
"""

from __future__ import annotations

import sys
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


def to_device(array):
    """Copy a host array to the device (numba device array)."""
    return backend.to_device(array)


def to_host(array):
    """Copy a device array to the host."""
    return backend.to_host(array)
