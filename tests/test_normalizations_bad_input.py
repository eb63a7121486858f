"""Bad input to the normalization variants: rejected, naming the argument, changing nothing."""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba

LAYERS = {
    "layer_norm": ((5,), {}),
    "rms_norm": ((5,), {}),
    "group_norm": ((6,), {"num_groups": 3}),
    "instance_norm": ((6,), {"affine": True, "track_running_stats": True}),
    "batch_renorm": ((6,), {}),
    "ghost_batch_norm": ((6,), {"virtual_batch_size": 2}),
    "frozen_batch_norm": ((6,), {}),
}
GOOD_SHAPE = {"layer_norm": (4, 3, 5), "rms_norm": (4, 3, 5)}


def _layer(name, dtype=np.float64):
    args, kwargs = LAYERS[name]
    return bnsgd_numba.create_normalization(name, *args, dtype=dtype, **kwargs)


def _good(name, rng, dtype=np.float64):
    return rng.standard_normal(GOOD_SHAPE.get(name, (4, 6, 5))).astype(dtype)


def _snapshot(layer):
    state = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    for key in ("grad_weight", "grad_bias"):
        value = getattr(layer, key, None)
        if value is not None:
            state[key] = value.copy()
    return state


def _assert_unchanged(layer, before):
    after = _snapshot(layer)
    assert after.keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def _bad_inputs(name, rng):
    good = _good(name, rng)
    bad = {
        "float32 into a float64 layer": (TypeError, "dtype", good.astype(np.float32)),
        "integers": (TypeError, "dtype", good.astype(np.int64)),
        "wrong feature count": (ValueError, "x", rng.standard_normal((4, 5, 4))),
    }
    if name == "instance_norm":
        bad["rank 2"] = (ValueError, "rank", rng.standard_normal((4, 6)))
        bad["one spatial element"] = (ValueError, "spatial", rng.standard_normal((4, 6, 1)))
    if name in ("batch_renorm", "ghost_batch_norm"):
        bad["one value per channel"] = (ValueError, "more than 1", rng.standard_normal((1, 6)))
    if name == "ghost_batch_norm":
        bad["a virtual batch of one value"] = (
            ValueError, "virtual batch", rng.standard_normal((3, 6)),
        )  # fmt: skip
    return good, bad


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bad_forward_input_is_rejected_before_anything_is_written(name):
    rng = np.random.default_rng(0)
    layer = _layer(name)
    good, bad = _bad_inputs(name, rng)
    dy = rng.standard_normal(good.shape)
    layer.forward(good)
    dx = layer.backward(dy)
    before = _snapshot(layer)
    for what, (error, message, x) in bad.items():
        with pytest.raises(error, match=message):
            layer.forward(x)
        _assert_unchanged(layer, before)
        # the saved input of the last good forward is still the one backward uses
        np.testing.assert_array_equal(layer.backward(dy), dx, err_msg=what)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bad_dy_is_rejected_and_gradients_are_unchanged(name):
    rng = np.random.default_rng(1)
    layer = _layer(name)
    good = _good(name, rng)
    layer.forward(good)
    layer.backward(rng.standard_normal(good.shape))
    before = _snapshot(layer)
    with pytest.raises(ValueError, match="dy: shape"):
        layer.backward(rng.standard_normal((*good.shape[:-1], good.shape[-1] + 1)))
    with pytest.raises(TypeError, match="dy: dtype"):
        layer.backward(good.astype(np.float32))
    _assert_unchanged(layer, before)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_backward_before_forward(name):
    with pytest.raises(RuntimeError, match="before forward"):
        _layer(name).backward(np.zeros((4, 6, 5)))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_bad_state_dict_is_rejected_whole(name):
    layer = _layer(name)
    before = _snapshot(layer)
    state = {k: v + 1 for k, v in layer.state_dict().items()}
    first = next(iter(state))
    for broken, error in (
        ({**state, first: state[first][:-1]}, ValueError),
        ({**state, first: state[first].astype(np.float32)}, TypeError),
        ({**state, "surprise": np.zeros(1)}, KeyError),
        ({k: v for k, v in state.items() if k != first}, KeyError),
    ):
        with pytest.raises(error):
            layer.load_state_dict(broken)
        _assert_unchanged(layer, before)


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "error", "message"),
    [
        ("group_norm", (4, 6), {}, ValueError, "divisible"),
        ("group_norm", (0, 6), {}, ValueError, "num_groups"),
        ("group_norm", (2, 6), {"channel_axis": 0}, ValueError, "batch axis"),
        ("layer_norm", ((),), {}, ValueError, "normalized_shape"),
        ("layer_norm", ((3, 0),), {}, ValueError, "normalized_shape"),
        ("layer_norm", ((3, 4),), {"channel_axis": 1}, ValueError, "one dimension"),
        ("layer_norm", (4,), {"eps": 0.0}, ValueError, "eps"),
        ("rms_norm", (4,), {"dtype": np.int32}, TypeError, "dtype"),
        ("instance_norm", (3,), {"momentum": 1.5}, ValueError, "momentum"),
        ("instance_norm", (3,), {"on_nonfinite": "ignore"}, ValueError, "on_nonfinite"),
        ("batch_renorm", (3,), {"r_max": 0.5}, ValueError, "r_max"),
        ("batch_renorm", (3,), {"d_max": -1.0}, ValueError, "d_max"),
        ("batch_renorm", (3,), {"warmup_steps": -1}, ValueError, "warmup_steps"),
        ("ghost_batch_norm", (3,), {"virtual_batch_size": 0}, ValueError, "virtual_batch_size"),
        ("frozen_batch_norm", (0,), {}, ValueError, "num_features"),
        ("frozen_batch_norm", (3.5,), {}, TypeError, "num_features"),
    ],
)
def test_bad_constructor_arguments(name, args, kwargs, error, message):
    with pytest.raises(error, match=message):
        bnsgd_numba.create_normalization(name, *args, **kwargs)


@pytest.mark.parametrize("name", ["instance_norm", "batch_renorm", "ghost_batch_norm"])
def test_nonfinite_statistics_raise_before_anything_is_written(name):
    rng = np.random.default_rng(2)
    layer = _layer(name)
    good = _good(name, rng)
    layer.forward(good)
    layer.backward(np.ones_like(good))
    before = _snapshot(layer)
    bad = good.copy()
    bad[-1, 2, 0] = np.inf  # only the last sample: the last virtual batch of ghost_batch_norm
    with pytest.raises(FloatingPointError, match="not finite"):
        layer.forward(bad)
    _assert_unchanged(layer, before)


@pytest.mark.parametrize("name", ["instance_norm", "batch_renorm", "ghost_batch_norm"])
def test_nonfinite_statistics_skip_the_running_update_with_a_warning(name):
    rng = np.random.default_rng(3)
    args, kwargs = LAYERS[name]
    layer = bnsgd_numba.create_normalization(
        name, *args, dtype=np.float64, on_nonfinite="skip", **kwargs
    )
    bad = _good(name, rng)
    bad[0, 1, 0] = np.nan
    running = (layer.running_mean.copy(), layer.running_var.copy())
    with pytest.warns(RuntimeWarning, match="not finite"):
        y = layer.forward(bad)
    assert np.isnan(y).any()
    np.testing.assert_array_equal(layer.running_mean, running[0])
    np.testing.assert_array_equal(layer.running_var, running[1])
    assert layer.num_batches_tracked == 0 and layer.skipped_updates == 1
