"""The split reductions of the normalization kernels: row spans, chunks, workspaces.

The shapes of tests/gpu/test_normalizations_gpu.py fit one block per row; here
the column sums of LayerNorm run over several row spans, and GroupNorm rows
and channel planes are split into several chunks (``GROUP_ITEMS_PER_THREAD``
shrunk), against the CPU kernels.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba as bn
from bnsgd_numba.normalizations import _cuda_driver
from tests.gpu.conftest import to_device, to_host


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_cuda_driver, "GROUP_ITEMS_PER_THREAD", 1)
    monkeypatch.setattr(_cuda_driver, "COLUMN_ROWS_PER_THREAD", 2)


CASES = [
    ("layer_norm", ((7,), {}), (11, 7)),
    ("layer_norm", (((2, 3),), {"bias": False}), (3, 2, 2, 3)),
    ("rms_norm", ((5,), {}), (9, 5)),
    ("group_norm", ((2, 4), {}), (2, 4, 5, 7)),
    ("group_norm", ((1, 3), {"affine": False}), (2, 3, 40)),
    ("instance_norm", ((2,), {"affine": True}), (2, 2, 70)),
]


def _pair(name, arguments, dtype):
    args, kwargs = arguments
    host = bn.create_normalization(name, *args, dtype=dtype, **kwargs)
    rng = np.random.default_rng(0)
    for key in ("weight", "bias"):
        value = getattr(host, key, None)
        if value is not None:
            value[...] = rng.uniform(0.5, 1.5, value.shape)
    device = bn.create_normalization(name, *args, dtype=dtype, **kwargs)
    device.load_state_dict(host.state_dict())
    return host, device.to_device()


def _close(actual, expected, dtype, scale=1.0):
    tol = 64 * float(np.finfo(dtype).eps) * max(1.0, scale)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize(("name", "arguments", "shape"), CASES, ids=str)
def test_split_reductions_match_the_cpu_kernels(name, arguments, shape):
    dtype = np.float64
    host, device = _pair(name, arguments, dtype)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 2 + 30).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    _close(to_host(device.forward(to_device(x))), host.forward(x), dtype, 30)
    _close(to_host(device.backward(to_device(dy))), host.backward(dy), dtype, 300)
    for key in ("grad_weight", "grad_bias"):
        if getattr(host, key.removeprefix("grad_"), None) is not None:
            grad = getattr(host, key)
            _close(to_host(getattr(device, key)), grad, dtype, 300 * np.abs(grad).max())


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize(("name", "arguments", "shape"), [CASES[0], CASES[3]], ids=str)
def test_split_reductions_are_bitwise_reproducible(name, arguments, shape):
    _, device = _pair(name, arguments, np.float32)
    rng = np.random.default_rng(2)
    x = to_device(rng.standard_normal(shape).astype(np.float32))
    dy = to_device(rng.standard_normal(shape).astype(np.float32))
    runs = []
    for _ in range(2):
        y = to_host(device.forward(x))
        dx = to_host(device.backward(dy))
        runs.append((y, dx, to_host(device.grad_weight), to_host(device.grad_bias)))
    for first, second in zip(*runs, strict=True):
        np.testing.assert_array_equal(first, second)


@pytest.mark.usefixtures("small_chunks")
def test_a_constant_group_split_into_chunks_gives_exactly_the_bias():
    _, device = _pair("group_norm", ((2, 4), {}), np.float64)
    bias = to_host(device.bias)
    shape = (2, 4, 50)
    for value in (1.7974005664190091, -1e4 + 0.1):
        y = to_host(device.forward(to_device(np.full(shape, value))))
        np.testing.assert_array_equal(y, np.broadcast_to(bias.reshape(1, 4, 1), shape))


@pytest.mark.parametrize("name", ["layer_norm", "group_norm"])
def test_the_workspace_is_reused_per_shape_and_backward_uses_the_last_forward(name):
    arguments = ((4,), {}) if name == "layer_norm" else ((2, 4), {})
    host, device = _pair(name, arguments, np.float64)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 2, 4) if name == "layer_norm" else (3, 4, 2))
    b = rng.standard_normal((5, 4, 4)) if name == "group_norm" else rng.standard_normal((5, 4))
    device.forward(to_device(a))
    first = device._saved[3]
    device.forward(to_device(a + 1))
    assert device._saved[3] is first
    device.forward(to_device(b))
    assert device._saved[3] is not first
    host.forward(b)
    dy = rng.standard_normal(b.shape)
    _close(to_host(device.backward(to_device(dy))), host.backward(dy), np.float64, 10)
