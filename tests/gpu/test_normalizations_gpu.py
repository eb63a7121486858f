"""The normalization variants on CUDA arrays, against their CPU kernels (simulator: tiny shapes).

layer_norm, rms_norm, group_norm, instance_norm and batch_renorm have their own
CUDA kernels (:mod:`bnsgd_numba.normalizations._cuda`; batch_renorm's backward is
BatchNorm's); frozen_batch_norm and ghost_batch_norm (per virtual batch) run
BatchNorm's.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba as bn
from tests.gpu.conftest import to_device, to_host

# name, constructor arguments, input shape
CASES = [
    ("layer_norm", ((5,), {}), (3, 4, 5)),
    ("layer_norm", (((4, 5),), {"bias": False}), (2, 4, 5)),
    ("rms_norm", ((6,), {}), (4, 6)),
    ("group_norm", ((2, 6), {}), (3, 6, 5)),
    ("group_norm", ((3, 6), {"affine": False}), (2, 6, 2, 3)),
    ("instance_norm", ((3,), {"affine": True}), (2, 3, 7)),
    ("instance_norm", ((3,), {"affine": True, "track_running_stats": True}), (2, 3, 2, 4)),
    ("frozen_batch_norm", ((3,), {}), (4, 3, 5)),
    ("ghost_batch_norm", ((3,), {"virtual_batch_size": 2}), (5, 3, 4)),
    (
        "batch_renorm",
        (
            (3,),
            {
                "r_max": 1.5,
                "d_max": 0.5,
                "warmup_steps": 0,
                "r_max_ramp_steps": 0,
                "d_max_ramp_steps": 0,
            },
        ),
        (4, 3, 5),
    ),  # fmt: skip
]


def _pair(name, arguments, dtype, seed=0):
    args, kwargs = arguments
    host = bn.create_normalization(name, *args, dtype=dtype, **kwargs)
    rng = np.random.default_rng(seed)
    for key in ("weight", "bias", "running_mean"):
        value = getattr(host, key, None)
        if value is not None:
            value[...] = rng.uniform(0.5, 1.5, value.shape)
    device = bn.create_normalization(name, *args, dtype=dtype, **kwargs)
    device.load_state_dict(host.state_dict())
    return host, device.to_device()


def _tolerance(dtype, scale=1.0):
    return 64 * float(np.finfo(dtype).eps) * max(1.0, scale)


# float64 for every case; float32 for one case per kernel family (the simulator is slow)
MATCH_CASES = [(*case, np.float64) for case in CASES] + [(*CASES[i], np.float32) for i in (0, 3)]


@pytest.mark.parametrize(("name", "arguments", "shape", "dtype"), MATCH_CASES, ids=str)
def test_device_layer_matches_its_cpu_kernels(name, arguments, shape, dtype):
    host, device = _pair(name, arguments, dtype)
    rng = np.random.default_rng(1)
    passes = (True, True, False) if "track_running_stats" in arguments[1] else (True, False)
    for training in passes:
        x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y = host.forward(x, training)
        y_device = device.forward(to_device(x), training)
        assert tuple(y_device.shape) == shape and y_device.dtype == dtype
        np.testing.assert_allclose(to_host(y_device), y, rtol=0, atol=_tolerance(dtype, 3))
        dx = host.backward(dy)
        dx_device = device.backward(to_device(dy))
        np.testing.assert_allclose(to_host(dx_device), dx, rtol=0, atol=_tolerance(dtype, 10))
        for key, value in host.state_dict().items():
            np.testing.assert_allclose(
                device.state_dict()[key], value, rtol=_tolerance(dtype), err_msg=key
            )
        for grad_name in ("grad_weight", "grad_bias"):
            grad = getattr(host, grad_name, None)
            if grad is not None and getattr(host, grad_name.removeprefix("grad_")) is not None:
                np.testing.assert_allclose(
                    to_host(getattr(device, grad_name)), grad, rtol=0,
                    atol=_tolerance(dtype, 10 * np.abs(grad).max()), err_msg=grad_name,
                )  # fmt: skip


@pytest.mark.parametrize(("name", "arguments", "shape"), [CASES[i] for i in (0, 3)], ids=str)
def test_device_results_are_bitwise_reproducible_and_out_is_honoured(name, arguments, shape):
    dtype = np.float32
    _, device = _pair(name, arguments, dtype)
    rng = np.random.default_rng(2)
    x = to_device((rng.standard_normal(shape) + 1).astype(dtype))
    dy = to_device(rng.standard_normal(shape).astype(dtype))
    first = to_host(device.forward(x)), to_host(device.backward(dy))
    y_out = to_device(np.zeros(shape, dtype))
    dx_out = to_device(np.zeros(shape, dtype))
    assert device.forward(x, out=y_out) is y_out
    assert device.backward(dy, out=dx_out) is dx_out
    np.testing.assert_array_equal(to_host(y_out), first[0])
    np.testing.assert_array_equal(to_host(dx_out), first[1])


@pytest.mark.parametrize(
    ("name", "arguments", "dtype"),
    [
        ("layer_norm", ((6,), {}), np.float32),
        ("layer_norm", ((6,), {}), np.float64),
        ("group_norm", ((2, 4), {}), np.float64),
    ],
)
def test_device_constant_rows_give_exactly_the_bias(name, arguments, dtype):
    _, device = _pair(name, arguments, dtype)
    bias = to_host(device.bias)
    shape = (2, 4, 6)
    for value in (1.7974005664190091, -1e4 + 0.1, 3.0):
        y = to_host(device.forward(to_device(np.full(shape, value, dtype))))
        view = (1, 1, 6) if name == "layer_norm" else (1, 4, 1)
        np.testing.assert_array_equal(y, np.broadcast_to(bias.reshape(view), shape))


def test_mixed_host_and_device_arrays_are_rejected_before_anything_runs():
    host, device = _pair("layer_norm", ((5,), {}), np.float64)
    x = np.ones((2, 5))
    with pytest.raises(TypeError, match="on the GPU but x is not"):
        device.forward(x)
    with pytest.raises(TypeError, match="on the host but x is not"):
        host.forward(to_device(x))
    device.forward(to_device(np.arange(10.0).reshape(2, 5)))
    with pytest.raises(TypeError, match="cannot be mixed"):
        device.backward(x)
    with pytest.raises(TypeError, match="dtype"):
        device.forward(to_device(x.astype(np.float32)))


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "shape", "message"),
    [
        ("layer_norm", (5,), {"channel_axis": 1}, (2, 5, 3), "last one"),
        ("group_norm", (1, 3), {"channel_axis": -1}, (2, 4, 3), "axis 1"),
        ("group_norm", (1, 3), {}, (2, 4, 3), "expected 3 channels"),
    ],
)
def test_device_layouts_it_cannot_read_are_refused(name, args, kwargs, shape, message):
    layer = bn.create_normalization(name, *args, dtype=np.float64, **kwargs).to_device()
    before = layer.state_dict()
    with pytest.raises(ValueError, match=message):
        layer.forward(to_device(np.ones(shape)))
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_batch_renorm_on_the_device_needs_channels_on_axis_1():
    layer = bn.create_normalization("batch_renorm", 3, channel_axis=-1, dtype=np.float64)
    layer.to_device()
    with pytest.raises(ValueError, match="axis 1"):
        layer.forward(to_device(np.ones((4, 2, 3))))
    assert layer.num_batches_tracked == 0


def test_state_dict_round_trip_through_the_device():
    host, device = _pair("instance_norm", ((3,), {"affine": True, "track_running_stats": True}),
                         np.float32)  # fmt: skip
    device.forward(to_device(np.random.default_rng(3).standard_normal((2, 3, 4)).astype("f4")))
    state = device.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert int(state["num_batches_tracked"]) == 1
    back = device.to_host()
    assert not back.on_device and isinstance(back.weight, np.ndarray)
    np.testing.assert_array_equal(back.running_mean, state["running_mean"])


@pytest.mark.parametrize("name", ["ghost_batch_norm", "instance_norm", "batch_renorm"])
def test_device_nonfinite_statistics_leave_the_running_statistics_alone(name):
    kwargs = {
        "ghost_batch_norm": {"virtual_batch_size": 2},
        "instance_norm": {"track_running_stats": True},
        "batch_renorm": {},
    }[name]
    layer = bn.create_normalization(name, 3, dtype=np.float64, **kwargs).to_device()
    x = np.random.default_rng(4).standard_normal((3, 3, 4))
    layer.forward(to_device(x))
    before = layer.state_dict()
    x[-1, 1, 0] = np.inf  # only in the last virtual batch
    with pytest.raises(FloatingPointError, match="not finite"):
        layer.forward(to_device(x))
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


# --- the layers' argument rules, on the device -----------------------------------------

DEVICE_LAYERS = {
    "group_norm": ((1, 3), {}),
    "instance_norm": ((3,), {"affine": True, "track_running_stats": True}),
    "frozen_batch_norm": ((3,), {}),
    "ghost_batch_norm": ((3,), {"virtual_batch_size": 2}),
    "batch_renorm": ((3,), {}),
}


@pytest.mark.parametrize("name", sorted(DEVICE_LAYERS))
def test_device_bad_input_is_named_and_changes_nothing(name):
    args, kwargs = DEVICE_LAYERS[name]
    layer = bn.create_normalization(name, *args, **kwargs).to_device()
    x = np.random.default_rng(5).standard_normal((4, 3, 2)).astype(np.float32)
    layer.forward(to_device(x))
    before = layer.state_dict()
    cases = [
        (to_device(x[:, :2]), ValueError, "x: expected 3 channels on axis 1"),
        (to_device(x.astype(np.float64)), TypeError,
         r"x: dtype float64 does not match the layer's float32; cast x"),
    ]  # fmt: skip
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            layer.forward(bad)
    with pytest.raises(TypeError, match="training"):
        layer.forward(to_device(x), "False")
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


@pytest.mark.parametrize("name", ["ghost_batch_norm", "instance_norm", "batch_renorm"])
def test_device_skip_warning_points_at_the_caller(name):
    kwargs = {
        "ghost_batch_norm": {"virtual_batch_size": 2},
        "instance_norm": {"track_running_stats": True},
        "batch_renorm": {},
    }[name]
    layer = bn.create_normalization(name, 3, on_nonfinite="skip", **kwargs).to_device()
    x = np.random.default_rng(4).standard_normal((3, 3, 4)).astype(np.float32)
    x[-1, 1, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="not finite") as record:
        layer(to_device(x))
    assert [w.filename for w in record] == [__file__] * len(record)
    assert layer.skipped_updates == 1


@pytest.mark.parametrize("name", ["ghost_batch_norm", "batch_renorm"])
def test_device_layer_without_bias_matches_the_host_layer(name):
    kwargs = {"ghost_batch_norm": {"virtual_batch_size": 2}, "batch_renorm": {}}[name]
    host, device = _pair(name, ((3,), {"bias": False, **kwargs}), np.float64)
    assert device.bias is None and device.grad_bias is None
    rng = np.random.default_rng(9)
    for training in (True, False):
        x = rng.standard_normal((4, 3, 2)) + 1
        dy = rng.standard_normal(x.shape)
        y = to_host(device.forward(to_device(x), training))
        np.testing.assert_allclose(
            y, host.forward(x, training), rtol=0, atol=_tolerance(np.float64, 3)
        )
        dx = to_host(device.backward(to_device(dy)))
        np.testing.assert_allclose(dx, host.backward(dy), rtol=0, atol=_tolerance(np.float64, 10))
        np.testing.assert_allclose(
            to_host(device.grad_weight), host.grad_weight, rtol=0,
            atol=_tolerance(np.float64, 10 * np.abs(host.grad_weight).max()),
        )  # fmt: skip
