"""sgd_step against the float64 reference and PyTorch; its properties and its errors.

Tolerances are in units of the dtype's eps times the step computed on
absolute values (``naive_sgd_error_scale``): the rounding-error bound of the
handful of operations per element.
"""

from __future__ import annotations

import sys
import types

import numba
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bnsgd_numba as bn
from bnsgd_numba import config
from tests import naive_sgd

DTYPES = [np.float32, np.float64]
SHAPES = [(3, 4), (7,), (2, 3, 5), ()]


@pytest.fixture(scope="module", autouse=True)
def warm_sgd_kernels():
    """Compile both builds for both dtypes before any Hypothesis example runs."""
    for dtype in DTYPES:
        for size in (5, config.CPU_SERIAL_BELOW + 5):
            p = np.ones(size, dtype)
            for momentum in (0.0, 0.9):
                buf = bn.sgd_step(p, p.copy(), lr=0.1, momentum=momentum)
                bn.sgd_step(p, p.copy(), buf, lr=0.1, momentum=momentum)


def _tensors(rng, dtype, shapes=SHAPES):
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def _lr(step):
    # A learning rate that changes on every step.
    return 0.1 / (1.0 + 0.37 * step)


def _assert_within(actual, expected, scale, dtype, ulps, what):
    eps = np.finfo(dtype).eps
    error = np.abs(np.asarray(actual, np.float64) - expected)
    bound = ulps * eps * np.maximum(scale, np.finfo(dtype).tiny)
    worst = np.max(error / bound, initial=0.0)
    assert worst <= 1.0, f"{what}: error {worst:.2f}x the bound of {ulps} ulps of the scale"


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("options", naive_sgd.option_sets(), ids=naive_sgd.option_id)
def test_each_step_matches_float64_reference_within_ulps(options, dtype):
    # 12 steps on several tensors; every step is compared with the float64
    # reference applied to the same inputs, so errors do not compound.
    rng = np.random.default_rng(3)
    params = _tensors(rng, dtype)
    buffers = [None] * len(params)
    for step in range(12):
        lr = _lr(step)
        grads = _tensors(rng, dtype)
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            before_p, before_b = param.copy(), None if buffers[i] is None else buffers[i].copy()
            expected_p, expected_b = naive_sgd.naive_sgd_step(
                before_p, grad, before_b, lr=lr, **options
            )
            scale_p, scale_b = naive_sgd.naive_sgd_error_scale(
                before_p, grad, before_b, lr=lr, **options
            )
            buffers[i] = bn.sgd_step(param, grad, buffers[i], lr=lr, **options)
            _assert_within(param, expected_p, scale_p, dtype, 12, f"step {step} params[{i}]")
            if options["momentum"] == 0:
                assert buffers[i] is None
            else:
                assert buffers[i].dtype == dtype and buffers[i].shape == param.shape
                _assert_within(buffers[i], expected_b, scale_b, dtype, 6, f"buffer[{i}]")


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("options", naive_sgd.option_sets(decoupled=False), ids=naive_sgd.option_id)
def test_trajectory_matches_torch_sgd_for_loop(options, dtype):
    # 12 steps, lr changing every step, several tensors: torch.optim.SGD
    # (foreach=False) from the same start and gradients.
    rng = np.random.default_rng(5)
    params = _tensors(rng, dtype)
    torch_params = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    torch_options = {k: v for k, v in options.items() if k != "decoupled_weight_decay"}
    optimizer = torch.optim.SGD(torch_params, lr=_lr(0), foreach=False, **torch_options)
    buffers = [None] * len(params)
    for step in range(12):
        grads = _tensors(rng, dtype)
        for group in optimizer.param_groups:
            group["lr"] = _lr(step)
        for tp, grad in zip(torch_params, grads, strict=True):
            tp.grad = torch.tensor(grad)
        optimizer.step()
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            buffers[i] = bn.sgd_step(param, grad, buffers[i], lr=_lr(step), **options)
    # Rounding differences (FMA, order) compound over the steps through the
    # momentum: 64 eps of the values' magnitude (~1), far below one update.
    ulps = 64
    for i, (param, tp) in enumerate(zip(params, torch_params, strict=True)):
        expected = tp.detach().numpy().astype(np.float64)
        _assert_within(param, expected, 1.0 + np.abs(expected), dtype, ulps, f"params[{i}]")
        if options["momentum"]:
            torch_buf = optimizer.state[tp]["momentum_buffer"].numpy().astype(np.float64)
            _assert_within(buffers[i], torch_buf, 1.0 + np.abs(torch_buf), dtype, ulps, "buf")


def test_float64_single_step_agrees_with_torch_to_a_few_ulps():
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(1000), rng.standard_normal(1000)
    tp = torch.tensor(p.copy(), requires_grad=True)
    optimizer = torch.optim.SGD([tp], lr=0.05, momentum=0.9, weight_decay=0.01, foreach=False)
    buf = None
    for _ in range(2):
        tp.grad = torch.tensor(g)
        optimizer.step()
        buf = bn.sgd_step(p, g, buf, lr=0.05, momentum=0.9, weight_decay=0.01)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=4e-16 * 4, atol=4e-16)


def test_first_momentum_step_returns_the_gradient_undampened():
    g = np.array([1.0, -2.0, 3.5], np.float32)
    p = np.zeros(3, np.float32)
    buf = bn.sgd_step(p, g, lr=0.5, momentum=0.9, dampening=0.5)
    np.testing.assert_array_equal(buf, g)
    assert buf is not g
    np.testing.assert_array_equal(p, -0.5 * g)


def test_given_buffer_is_updated_in_place_and_returned():
    p = np.zeros(4)
    g = np.ones(4)
    buf = np.full(4, 2.0)
    out = bn.sgd_step(p, g, buf, lr=1.0, momentum=0.5, dampening=0.25)
    assert out is buf
    np.testing.assert_array_equal(buf, 0.5 * 2.0 + 0.75 * 1.0)
    np.testing.assert_array_equal(p, -1.75)


def test_zero_momentum_returns_none_and_leaves_a_given_buffer_alone():
    p, g, buf = np.zeros(3), np.ones(3), np.full(3, 7.0)
    assert bn.sgd_step(p, g, buf, lr=0.5) is None
    np.testing.assert_array_equal(buf, 7.0)
    np.testing.assert_array_equal(p, -0.5)


def test_non_contiguous_parameter_is_updated_through_its_view():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((6, 8)).astype(np.float32)
    original = base.copy()
    view = base[:, ::2]
    g = rng.standard_normal(view.shape).astype(np.float32)
    buf = np.asfortranarray(rng.standard_normal(view.shape).astype(np.float32))
    expected_p = np.ascontiguousarray(view).copy()
    expected_b = np.ascontiguousarray(buf).copy()
    bn.sgd_step(expected_p, g, expected_b, lr=0.1, momentum=0.9, weight_decay=0.1)
    out = bn.sgd_step(view, g[:, ::-1][:, ::-1], buf, lr=0.1, momentum=0.9, weight_decay=0.1)
    assert out is buf
    np.testing.assert_array_equal(view, expected_p)
    np.testing.assert_array_equal(buf, expected_b)
    np.testing.assert_array_equal(base[:, 1::2], original[:, 1::2])


def test_scalars_are_rounded_to_float32_not_promoted():
    # 1 - 0.3*3 in float32 arithmetic (with or without FMA) is 0.099999964;
    # promoted to float64 it would round to float32(0.1).
    p = np.ones(100, np.float32)
    g = np.full(100, 3.0, np.float32)
    bn.sgd_step(p, g, lr=0.3)
    in_float32 = np.float32(1.0) - np.float32(np.float32(0.3) * np.float32(3.0))
    assert in_float32 != np.float32(0.1)
    assert p.dtype == np.float32
    assert np.all(p == in_float32)


def test_decoupled_decay_factor_is_rounded_to_float32():
    # With g = 0 the step is p * (1 - lr*wd): 3 * float32(0.79) rounds to
    # 2.3700001 in float32, to 2.37 if the factor stayed float64.
    p = np.full(50, 3.0, np.float32)
    bn.sgd_step(p, np.zeros_like(p), lr=0.3, weight_decay=0.7, decoupled_weight_decay=True)
    in_float32 = np.float32(3.0) * np.float32(1.0 - 0.3 * 0.7)
    assert in_float32 != np.float32(3.0 * (1.0 - 0.3 * 0.7))
    assert np.all(p == in_float32)


def test_result_is_bitwise_independent_of_thread_count():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    rng = np.random.default_rng(2)
    n = 3 * config.CPU_SERIAL_BELOW + 17
    p0, g, b0 = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            p, b = p0.copy(), b0.copy()
            bn.sgd_step(p, g, b, lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=True)
            results.append((p, b))
    finally:
        numba.set_num_threads(previous)
    assert results[0][0].tobytes() == results[1][0].tobytes()
    assert results[0][1].tobytes() == results[1][1].tobytes()


# Hypothesis properties -----------------------------------------------------

_float32_arrays = hnp.arrays(
    np.float32,
    st.integers(1, 40),
    elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False),
)
_hyper = st.fixed_dictionaries(
    {
        "momentum": st.sampled_from([0.0, 0.5, 0.9]),
        "dampening": st.sampled_from([0.0, 0.1]),
        "weight_decay": st.sampled_from([0.0, 1e-2]),
        "decoupled_weight_decay": st.booleans(),
    }
)


@settings(max_examples=40, deadline=None)
@given(
    p=_float32_arrays,
    seed=st.integers(0, 2**16),
    lr=st.floats(0.0, 10.0, allow_subnormal=False),
)
@example(p=np.array([1.0], np.float32), seed=0, lr=0.1)
def test_plain_step_is_p_minus_lr_g(p, seed, lr):
    g = np.random.default_rng(seed).uniform(-1e3, 1e3, p.shape).astype(np.float32)
    expected = p.astype(np.float64) - np.float64(np.float32(lr)) * g.astype(np.float64)
    scale = np.abs(p.astype(np.float64)) + np.float64(np.float32(lr)) * np.abs(g)
    out = p.copy()
    assert bn.sgd_step(out, g, lr=lr) is None
    # at most two roundings (or one with FMA) of float32
    _assert_within(out, expected, scale, np.float32, 2, "p - lr*g")


@settings(max_examples=40, deadline=None)
@given(p=_float32_arrays, seed=st.integers(0, 2**16), hyper=_hyper, nesterov=st.booleans())
def test_maximize_with_g_equals_minimize_with_minus_g(p, seed, hyper, nesterov):
    if nesterov and (hyper["momentum"] == 0 or hyper["dampening"] != 0):
        nesterov = False
    rng = np.random.default_rng(seed)
    a, b = p.copy(), p.copy()
    buf_a = buf_b = None
    for step in range(3):
        g = rng.uniform(-10, 10, p.shape).astype(np.float32)
        kw = dict(lr=_lr(step), nesterov=nesterov, **hyper)
        buf_a = bn.sgd_step(a, g, buf_a, maximize=True, **kw)
        buf_b = bn.sgd_step(b, -g, buf_b, maximize=False, **kw)
    assert a.tobytes() == b.tobytes()
    if buf_a is not None:
        assert buf_a.tobytes() == buf_b.tobytes()


@settings(max_examples=40, deadline=None)
@given(p=_float32_arrays, seed=st.integers(0, 2**16), hyper=_hyper, maximize=st.booleans())
def test_zero_learning_rate_changes_no_parameter(p, seed, hyper, maximize):
    g = np.random.default_rng(seed).uniform(-1e3, 1e3, p.shape).astype(np.float32)
    out = p.copy()
    buf = bn.sgd_step(out, g, lr=0.0, maximize=maximize, **hyper)
    bn.sgd_step(out, g, buf, lr=0.0, maximize=maximize, **hyper)
    np.testing.assert_array_equal(out, p)


# Bad input: a clear error, nothing modified -------------------------------


def _fresh():
    p = np.arange(6, dtype=np.float32).reshape(2, 3)
    return p, np.ones_like(p), np.full_like(p, 0.5)


BAD_CALLS = {
    "negative lr": (lambda p, g, b: bn.sgd_step(p, g, b, lr=-0.1), ValueError, "lr"),
    "nan lr": (lambda p, g, b: bn.sgd_step(p, g, b, lr=float("nan")), ValueError, "lr"),
    "string lr": (lambda p, g, b: bn.sgd_step(p, g, b, lr="0.1"), TypeError, "lr"),
    "negative momentum": (
        lambda p, g, b: bn.sgd_step(p, g, b, lr=0.1, momentum=-0.9),
        ValueError,
        "momentum",
    ),
    "negative dampening": (
        lambda p, g, b: bn.sgd_step(p, g, b, lr=0.1, momentum=0.9, dampening=-1),
        ValueError,
        "dampening",
    ),
    "negative weight_decay": (
        lambda p, g, b: bn.sgd_step(p, g, b, lr=0.1, weight_decay=-1e-4),
        ValueError,
        "weight_decay",
    ),
    "nesterov without momentum": (
        lambda p, g, b: bn.sgd_step(p, g, b, lr=0.1, nesterov=True),
        ValueError,
        "nesterov",
    ),
    "nesterov with dampening": (
        lambda p, g, b: bn.sgd_step(p, g, b, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
        ValueError,
        "nesterov",
    ),
    "non-bool flag": (
        lambda p, g, b: bn.sgd_step(p, g, b, lr=0.1, maximize=1),
        TypeError,
        "maximize",
    ),
    "grad shape": (lambda p, g, b: bn.sgd_step(p, g.T, b, lr=0.1), ValueError, "grad: shape"),
    "grad dtype": (
        lambda p, g, b: bn.sgd_step(p, g.astype(np.float64), b, lr=0.1),
        TypeError,
        "grad: dtype",
    ),
    "grad not an array": (
        lambda p, g, b: bn.sgd_step(p, g.tolist(), b, lr=0.1),
        TypeError,
        "grad",
    ),
    "buffer shape": (
        lambda p, g, b: bn.sgd_step(p, g, b[:1], lr=0.1, momentum=0.9),
        ValueError,
        "momentum_buffer",
    ),
    "buffer dtype": (
        lambda p, g, b: bn.sgd_step(p, g, b.astype(np.float64), lr=0.1, momentum=0.9),
        TypeError,
        "momentum_buffer",
    ),
    "integer param": (
        lambda p, g, b: bn.sgd_step(p.astype(np.int32), g, b, lr=0.1),
        TypeError,
        "param",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_naming_the_argument_and_modifies_nothing(case):
    call, error, fragment = BAD_CALLS[case]
    p, g, b = _fresh()
    copies = [p.copy(), g.copy(), b.copy()]
    with pytest.raises(error, match=fragment):
        call(p, g, b)
    for array, copy in zip((p, g, b), copies, strict=True):
        np.testing.assert_array_equal(array, copy)


def test_read_only_parameter_or_buffer_is_rejected_before_writing():
    p, g, b = _fresh()
    p.flags.writeable = False
    with pytest.raises(ValueError, match="param: array is not writable"):
        bn.sgd_step(p, g, b, lr=0.1, momentum=0.9)
    np.testing.assert_array_equal(b, 0.5)
    p, g, b = _fresh()
    b.flags.writeable = False
    with pytest.raises(ValueError, match="momentum_buffer: array is not writable"):
        bn.sgd_step(p, g, b, lr=0.1, momentum=0.9)
    np.testing.assert_array_equal(p, _fresh()[0])


class _FakeDeviceArray:
    __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (0, False), "version": 3}


def test_device_array_without_cuda_support_gives_a_clear_error(monkeypatch):
    # None in sys.modules makes the import fail, as when numba-cuda is absent.
    monkeypatch.setitem(sys.modules, "bnsgd_numba.sgd._cuda_driver", None)
    with pytest.raises(ImportError, match="sgd_step: got a CUDA array, but CUDA support is not"):
        bn.sgd_step(_FakeDeviceArray(), _FakeDeviceArray(), lr=0.1)


def test_device_arrays_are_handed_to_the_gpu_module(monkeypatch):
    calls = []
    fake = types.ModuleType("bnsgd_numba.sgd._cuda_driver")
    fake.sgd_step = lambda *args, **kwargs: calls.append((args, kwargs)) or "device buffer"
    monkeypatch.setitem(sys.modules, "bnsgd_numba.sgd._cuda_driver", fake)
    param, grad = _FakeDeviceArray(), _FakeDeviceArray()
    assert bn.sgd_step(param, grad, lr=0.1, momentum=0.9, nesterov=True) == "device buffer"
    ((args, kwargs),) = calls
    assert args == (param, grad, None)
    assert kwargs["lr"] == 0.1 and kwargs["momentum"] == 0.9 and kwargs["nesterov"] is True
