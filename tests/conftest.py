"""Hypothesis profiles and shared fixtures.

Profiles: ``ci`` (derandomized, no deadline: compilation and a shared machine
make timings meaningless) is used when the ``CI`` environment variable is
set; ``dev`` otherwise. Pick one with ``--hypothesis-profile=NAME``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# The GPU tests (tests/gpu) run in the CUDA simulator unless
# BNSGD_NUMBA_REAL_GPU=1. numba reads NUMBA_ENABLE_CUDASIM once, when it is
# first imported, so this must run before anything imports numba.
if os.environ.get("BNSGD_NUMBA_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """In the pytest-xdist controller: fill numba's cache before the workers start.

    Each worker would otherwise compile the same kernels (about a minute of
    CPU each); ``tests/warm_cache.py`` compiles them once, one process per
    dtype. A failure there is ignored: the tests that use the kernels report it.
    """
    config = session.config
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return
    script = Path(__file__).with_name("warm_cache.py")
    warmers = [
        subprocess.Popen(
            [sys.executable, str(script), dtype],
            cwd=script.parents[1],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for dtype in ("float32", "float64")
    ]
    for warmer in warmers:
        warmer.wait()


# Files that take minutes (the simulator, MPI jobs, fresh interpreters), longest first.
LONG_FILES = (
    "gpu/test_gpu_compile.py",
    "gpu/test_normalizations_gpu_kit.py",
    "test_distributed.py",
    "gpu/test_normalizations_gpu.py",
    "gpu/test_gpu_batch_norm.py",
    "gpu/test_norm_kernels_gpu.py",
    "test_threads.py",
    "test_package.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the files of :data:`LONG_FILES` first, in that order, then the rest.

    pytest-xdist hands whole files to the workers in this order; a long file
    handed out last would leave one worker running alone at the end.
    """
    here = Path(__file__).parent
    rank = {here / name: k for k, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(Path(item.path), len(LONG_FILES)))


settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def warm_batch_norm():
    """Compile the BatchNorm kernels once, before any timed example runs."""
    import bnsgd_numba as bn

    for dtype in (np.float32, np.float64):
        for shape, axis in (((4, 3, 5), 1), ((6, 3), 1), ((300, 40, 30), 1), ((3000, 40), 1)):
            x = np.linspace(-1, 1, np.prod(shape)).reshape(shape).astype(dtype)
            channels = shape[axis]
            rm, rv = np.zeros(channels, dtype), np.ones(channels, dtype)
            out = bn.batch_norm_forward(x, None, None, rm, rv, training=True, channel_axis=axis)
            bn.batch_norm_forward(x, None, None, rm, rv, training=False, channel_axis=axis)
            bn.batch_norm_backward(x, x, None, out.save_mean, out.save_invstd, channel_axis=axis)
