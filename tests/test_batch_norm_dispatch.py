"""Which builds a BatchNorm call runs: tiny work stays serial on the calling thread.

The seed's BatchNorm1d shapes, (32, 784) and (32, 64), must not wake the
thread pool (see docs/threading.md); a larger batch uses the parallel builds.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba as bn
from bnsgd_numba.batch_norm import functional

from .test_batch_norm_fast_lane import record_entries

# Position of the ``parallel`` flag in each fused entry point's arguments.
PARALLEL_ARGUMENT = {"forward_train": 11, "forward_eval": 9, "backward": 9}


@pytest.fixture
def parallel_flags(monkeypatch):
    """Record the ``parallel`` flag of every fused kernel call."""
    original = functional._fused
    calls = []

    def fused(name, layout, elements):
        build = original(name, layout, elements)

        def call(*args):
            calls.append((name, args[PARALLEL_ARGUMENT[name]]))
            return build(*args)

        return call

    monkeypatch.setattr(functional, "_fused", fused)
    return calls


def run_every_pass(shape, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    channels = shape[1]
    rm, rv = np.zeros(channels, dtype), np.ones(channels, dtype)
    out = bn.batch_norm_forward(x, None, None, rm, rv, training=True)
    bn.batch_norm_forward(x, None, None, rm, rv, training=False)
    bn.batch_norm_backward(x, x, None, out.save_mean, out.save_invstd)


@pytest.fixture
def entry_builds(monkeypatch):
    """Record (name, build, parallel flag) of every kernel entry (the fast lane) call."""
    calls = []
    record_entries(
        monkeypatch, lambda name, build, parallel, status: calls.append((name, build, parallel))
    )
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(32, 784), (32, 64)])
def test_the_seeds_shapes_run_the_serial_builds(parallel_flags, entry_builds, shape, dtype):
    run_every_pass(shape, dtype)
    assert entry_builds == [
        ("forward_entry", "serial", False),
        ("forward_entry", "serial", False),
        ("backward_entry", "serial", False),
    ]
    assert parallel_flags == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(32, 784), (32, 64)])
def test_the_seeds_shapes_off_the_fast_lane_run_the_serial_builds(
    parallel_flags, entry_builds, shape, dtype
):
    # NumPy scalars are valid but never the fast lane's: the general path
    # runs, with the serial builds too
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    channels = shape[1]
    rm, rv = np.zeros(channels, dtype), np.ones(channels, dtype)
    out = bn.batch_norm_forward(x, None, None, rm, rv, training=np.bool_(True))
    bn.batch_norm_forward(x, None, None, rm, rv, training=np.bool_(False))
    bn.batch_norm_backward(x, x, None, out.save_mean, out.save_invstd, training=np.bool_(True))
    assert entry_builds == []
    assert parallel_flags == [
        ("forward_train", False),
        ("forward_eval", False),
        ("backward", False),
    ]


def test_a_larger_batch_runs_the_parallel_builds(parallel_flags, entry_builds):
    run_every_pass((256, 784), np.float32)
    assert entry_builds == [
        ("forward_entry", "parallel", True),
        ("forward_entry", "parallel", True),
        ("backward_entry", "parallel", True),
    ]
    assert parallel_flags == []


def test_a_larger_batch_off_the_fast_lane_runs_the_parallel_builds(parallel_flags, entry_builds):
    x = np.random.default_rng(0).standard_normal((256, 784)).astype(np.float32)
    rm, rv = np.zeros(784, np.float32), np.ones(784, np.float32)
    out = bn.batch_norm_forward(x, None, None, rm, rv, training=np.bool_(True))
    bn.batch_norm_backward(x, x, None, out.save_mean, out.save_invstd, training=np.bool_(True))
    assert entry_builds == []
    assert [flag for _, flag in parallel_flags] == [True, True]
