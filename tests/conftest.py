"""Hypothesis profiles and shared fixtures.

Profiles: ``ci`` (derandomized, no deadline: compilation and a shared machine
make timings meaningless) is used when the ``CI`` environment variable is
set; ``dev`` otherwise. Pick one with ``--hypothesis-profile=NAME``.
"""

from __future__ import annotations

import os

# The GPU tests (tests/gpu) run in the CUDA simulator unless
# BNSGD_NUMBA_REAL_GPU=1. numba reads NUMBA_ENABLE_CUDASIM once, when it is
# first imported, so this must run before anything imports numba.
if os.environ.get("BNSGD_NUMBA_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

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
