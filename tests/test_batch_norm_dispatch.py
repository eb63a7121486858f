"""Which builds a BatchNorm call runs: tiny work stays serial on the calling thread.

The seed's BatchNorm1d shapes, (32, 784) and (32, 64), must not wake the
thread pool (issue 17); a larger batch uses the parallel builds.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

import bnsgd_numba as bn
from bnsgd_numba.batch_norm import functional

# Position of the ``parallel`` flag in each fused entry point's arguments.
PARALLEL_ARGUMENT = {"forward_train": 12, "forward_eval": 10, "backward": 10}


@pytest.fixture
def parallel_flags(monkeypatch):
    """Record the ``parallel`` flag of every fused kernel call."""
    kernels = functional._kernels()
    calls = []

    def spy(name):
        def call(*args):
            calls.append((name, args[PARALLEL_ARGUMENT[name]]))
            return getattr(kernels, name)(*args)

        return call

    spied = types.SimpleNamespace(**{name: spy(name) for name in PARALLEL_ARGUMENT})
    monkeypatch.setattr(functional, "_kernels", lambda: spied)
    return calls


def run_every_pass(shape, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    channels = shape[1]
    rm, rv = np.zeros(channels, dtype), np.ones(channels, dtype)
    out = bn.batch_norm_forward(x, None, None, rm, rv, training=True)
    bn.batch_norm_forward(x, None, None, rm, rv, training=False)
    bn.batch_norm_backward(x, x, None, out.save_mean, out.save_invstd)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(32, 784), (32, 64)])
def test_the_seeds_shapes_run_the_serial_builds(parallel_flags, shape, dtype):
    run_every_pass(shape, dtype)
    assert parallel_flags == [
        ("forward_train", False),
        ("forward_eval", False),
        ("backward", False),
    ]


def test_a_larger_batch_runs_the_parallel_builds(parallel_flags):
    run_every_pass((256, 784), np.float32)
    assert [flag for _, flag in parallel_flags] == [True, True, True]
