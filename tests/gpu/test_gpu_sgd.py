"""CUDA SGD, optimizer steps over lists and device arenas, and clipping."""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba as bn
from bnsgd_numba import DeviceParameterArena
from bnsgd_numba._core import cuda as backend
from tests import naive_sgd
from tests.gpu.conftest import to_device, to_host

DTYPES = [np.float32, np.float64]
LR = 0.05


def assert_step_close(actual, expected, scale, dtype, k=8):
    tolerance = k * np.finfo(dtype).eps * np.asarray(scale, dtype=np.float64)
    error = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
    assert (error <= tolerance).all(), float((error - tolerance).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_step_matches_cpu_and_reference_for_every_option_set(dtype):
    rng = np.random.default_rng(0)
    shape = (5, 7)
    for options in naive_sgd.option_sets():
        param = rng.normal(size=shape).astype(dtype)
        d_param = to_device(param)
        cpu_param = param.copy()
        d_buf = cpu_buf = ref_buf = None
        ref_param = param.astype(np.float64)
        for _ in range(3):
            grad = rng.normal(size=shape).astype(dtype)
            scale, _ = naive_sgd.naive_sgd_error_scale(cpu_param, grad, cpu_buf, lr=LR, **options)
            d_buf = bn.sgd_step(d_param, to_device(grad), d_buf, lr=LR, **options)
            cpu_buf = bn.sgd_step(cpu_param, grad, cpu_buf, lr=LR, **options)
            ref_param, ref_buf = naive_sgd.naive_sgd_step(
                ref_param, grad, ref_buf, lr=LR, **options
            )
            assert_step_close(to_host(d_param), cpu_param, scale, dtype)
            assert (d_buf is None) == (cpu_buf is None), options
            if d_buf is not None:
                assert_step_close(to_host(d_buf), cpu_buf, np.abs(cpu_buf) + 1, dtype)
        assert_step_close(to_host(d_param), ref_param, np.abs(ref_param) + 1, dtype, k=64)


def test_sgd_step_rejects_bad_input_before_writing():
    param = to_device(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="shape"):
        bn.sgd_step(param, to_device(np.ones(5, np.float32)), lr=0.1)
    with pytest.raises(TypeError, match="dtype"):
        bn.sgd_step(param, to_device(np.ones(4, np.float64)), lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        bn.sgd_step(param, to_device(np.ones(4, np.float32)), lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="cannot be mixed"):
        bn.sgd_step(param, np.ones(4, np.float32), lr=0.1)
    with pytest.raises(TypeError, match="cannot be mixed"):
        bn.sgd_step(param, to_device(np.ones(4, np.float32)), np.ones(4, np.float32), lr=0.1)
    np.testing.assert_array_equal(to_host(param), np.ones(4, np.float32))


def test_without_cuda_sgd_step_raises_one_clear_error(monkeypatch):
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    param = to_device(np.ones(4, np.float32))
    with pytest.raises(backend.CudaUnavailableError, match="sgd_step: got a CUDA array"):
        bn.sgd_step(param, param, lr=0.1)


def test_sgd_over_device_list_matches_cpu_and_skips_nonfinite_steps():
    rng = np.random.default_rng(1)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    host = [rng.normal(size=s).astype(np.float32) for s in shapes]
    device = [to_device(p) for p in host]
    options = dict(lr=LR, momentum=0.9, weight_decay=0.01, nesterov=True)
    cpu_opt = bn.SGD([p.copy() for p in host], **options)
    gpu_opt = bn.SGD(device, **options)
    for step in range(3):
        grads = [rng.normal(size=s).astype(np.float32) for s in shapes]
        if step == 1:
            grads[1] = None
        assert gpu_opt.step([None if g is None else to_device(g) for g in grads])
        cpu_opt.step(grads)
    for d_param, c_param in zip(gpu_opt.params, cpu_opt.params, strict=True):
        assert_step_close(to_host(d_param), c_param, np.abs(c_param) + 1, np.float32)
    before = [to_host(p) for p in gpu_opt.params]
    bad = [np.ones(s, np.float32) for s in shapes]
    bad[2][1, 0, 1] = np.inf
    assert not gpu_opt.step([to_device(g) for g in bad], skip_if_nonfinite=True)
    assert gpu_opt.skipped_steps == 1 and gpu_opt.steps == 3
    for old, param in zip(before, gpu_opt.params, strict=True):
        np.testing.assert_array_equal(old, to_host(param))
    with pytest.raises(TypeError, match="cannot be mixed"):
        gpu_opt.step([to_device(bad[0]), bad[1], to_device(bad[2])])


def test_sgd_over_a_device_arena_is_one_launch_and_matches_the_host_arena(monkeypatch):
    from bnsgd_numba.sgd import _cuda

    rng = np.random.default_rng(2)
    shapes = [(3, 4), (5,), (2, 3)]
    arrays = [rng.normal(size=s).astype(np.float32) for s in shapes]
    host = bn.ParameterArena.from_arrays(arrays)
    device = DeviceParameterArena.from_arrays(arrays)
    options = dict(lr=LR, momentum=0.9, dampening=0.1, weight_decay=0.01)
    host_opt, device_opt = bn.SGD(host, **options), bn.SGD(device, **options)
    launches = []
    kernel = _cuda.sgd_update
    monkeypatch.setattr(_cuda, "sgd_update", _CountingKernel(kernel, launches), raising=True)
    for _ in range(3):
        grads = rng.normal(size=host.size).astype(np.float32)
        host.flat_grads[...] = grads
        device.flat_grads.copy_to_device(grads)
        host_opt.step()
        device_opt.step()
    assert len(launches) == 3
    assert_step_close(
        to_host(device.flat_params), host.flat_params, np.abs(host.flat_params) + 1, np.float32
    )
    momentum = device_opt.momentum_buffers[0]
    assert backend.as_device_array(momentum).shape == (3, 4)
    device.zero_grad()
    assert not to_host(device.flat_grads).any()
    back = device.to_host()
    np.testing.assert_array_equal(back.flat_params, to_host(device.flat_params))


class _CountingKernel:
    """Wraps a kernel to count its launches."""

    def __init__(self, kernel, launches):
        self.kernel = kernel
        self.launches = launches

    def __getitem__(self, config):
        self.launches.append(config)
        return self.kernel[config]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, "inf"])
def test_clip_grad_norm_matches_cpu(norm_type):
    rng = np.random.default_rng(3)
    grads = [rng.normal(size=s).astype(np.float32) for s in [(4, 5), (7,)]]
    device = [to_device(g) for g in grads]
    cpu = [g.copy() for g in grads]
    total_gpu = bn.clip_grad_norm(device, 1.0, norm_type)
    total_cpu = bn.clip_grad_norm(cpu, 1.0, norm_type)
    assert total_gpu == pytest.approx(total_cpu, rel=1e-12)
    for d, c in zip(device, cpu, strict=True):
        assert_step_close(to_host(d), c, np.abs(c) + 1e-3, np.float32, k=4)


def test_clip_grad_norm_nonfinite_and_clip_grad_value():
    grads = np.array([1.0, -5.0, np.nan, 0.5], np.float32)
    device = to_device(grads)
    with pytest.raises(RuntimeError, match="non-finite"):
        bn.clip_grad_norm([device], 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(to_host(device), grads)
    values = np.array([3.0, -4.0, 0.25, np.nan], np.float32)
    device = to_device(values)
    bn.clip_grad_value([device], 1.0)
    np.testing.assert_array_equal(to_host(device), np.array([1.0, -1.0, 0.25, np.nan], np.float32))


def test_clip_grad_norm_over_a_device_arena():
    arrays = [np.full((2, 3), 2.0, np.float32), np.full(4, -1.0, np.float32)]
    device = DeviceParameterArena.from_arrays(arrays)
    device.flat_grads.copy_to_device(np.arange(device.size, dtype=np.float32))
    host = device.to_host()
    total = bn.clip_grad_norm(device, 0.5)
    assert total == pytest.approx(bn.clip_grad_norm(host, 0.5), rel=1e-12)
    assert_step_close(to_host(device.flat_grads), host.flat_grads, host.flat_grads + 1, np.float32)


@pytest.mark.parametrize("use_arena", [False, True])
def test_device_optimizer_state_round_trip_continues_bitwise(use_arena):
    rng = np.random.default_rng(4)
    shapes = [(3, 4), (5,)]
    arrays = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [rng.normal(size=s).astype(np.float32) for s in shapes]

    def build():
        if use_arena:
            arena = DeviceParameterArena.from_arrays(arrays)
            for view, grad in zip(arena.grads, grads, strict=True):
                view.copy_to_device(grad)
            return bn.SGD(arena, lr=LR, momentum=0.9), None
        return bn.SGD([to_device(a) for a in arrays], lr=LR, momentum=0.9), [
            to_device(g) for g in grads
        ]

    first, first_grads = build()
    first.step(first_grads)
    state = first.state_dict()
    assert all(isinstance(b, np.ndarray) for b in state["momentum_buffers"])
    second, second_grads = build()
    for param, value in zip(second.params, first.params, strict=True):
        param.copy_to_device(value)
    second.load_state_dict(state)
    first.step(first_grads)
    second.step(second_grads)
    for a, b in zip(first.params, second.params, strict=True):
        np.testing.assert_array_equal(to_host(a), to_host(b))


def test_device_sgd_step_overlaps_raise_like_the_cpu():
    buffer = to_device(np.arange(20, dtype=np.float32))
    with pytest.raises(ValueError, match="param and grad overlap in memory"):
        bn.sgd_step(buffer[1:], buffer[:-1], lr=0.5)
    param = to_device(np.ones(4, np.float32))
    grad = to_device(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="param and momentum_buffer are the same array"):
        bn.sgd_step(param, grad, param, lr=0.5, momentum=0.9)
    with pytest.raises(ValueError, match="momentum_buffer and grad are the same array"):
        bn.sgd_step(param, grad, grad, lr=0.5, momentum=0.9)
    np.testing.assert_array_equal(to_host(buffer), np.arange(20))
    np.testing.assert_array_equal(to_host(param), 1.0)
    bn.sgd_step(param, param, lr=0.5)  # grad is param itself: allowed, as in PyTorch
    np.testing.assert_array_equal(to_host(param), 0.5)


def test_device_parameters_listed_twice_or_overlapping_are_rejected():
    p = to_device(np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] are the same array"):
        bn.SGD([p, p], lr=0.1)
    backing = to_device(np.ones(10, np.float32))
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] overlap"):
        bn.SGD([backing[:6], backing[4:]], lr=0.1)
    optimizer = bn.SGD([backing[:5], backing[5:]], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"params\[0\] and grads\[1\] are the same array"):
        optimizer.step([to_device(np.ones(5, np.float32)), backing[:5]])
    with pytest.raises(ValueError, match=r"params\[0\] and grads\[1\] overlap"):
        optimizer.step([to_device(np.ones(5, np.float32)), backing[2:7]])
    np.testing.assert_array_equal(to_host(backing), 1.0)
    assert optimizer.momentum_buffers == (None, None) and optimizer.steps == 0


def test_device_clipping_a_gradient_listed_twice_is_rejected():
    g = to_device(np.full(4, 3.0, np.float32))
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[1\] are the same array"):
        bn.clip_grad_norm([g, g], 1.0)
    np.testing.assert_array_equal(to_host(g), 3.0)


def test_device_arena_attributes_cannot_be_rebound():
    arena = DeviceParameterArena([(5,), (2, 3)])
    with pytest.raises(AttributeError, match="DeviceParameterArena.flat_grads cannot be rebound"):
        arena.flat_grads = to_device(np.ones(2, np.float32))
    optimizer = bn.SGD(arena, lr=0.1)
    arena.flat_grads.copy_to_device(np.ones(11, np.float32))
    optimizer.step()
    np.testing.assert_array_equal(to_host(arena.flat_params), np.float32(-0.1))


@pytest.mark.parametrize("value", [0, 48, 32.0])
def test_a_bad_threads_per_block_is_named_before_a_step(monkeypatch, value):
    param = to_device(np.ones(4, np.float32))
    monkeypatch.setattr(bn.config, "GPU_THREADS_PER_BLOCK", value)
    with pytest.raises((TypeError, ValueError), match="config.GPU_THREADS_PER_BLOCK"):
        bn.sgd_step(param, to_device(np.ones(4, np.float32)), lr=0.1, momentum=0.9)
    np.testing.assert_array_equal(to_host(param), 1.0)
