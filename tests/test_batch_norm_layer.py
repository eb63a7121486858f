"""The BatchNorm layer against torch.nn.BatchNorm{1,2}d over several steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bnsgd_numba as bn

pytestmark = pytest.mark.usefixtures("warm_batch_norm")


def torch_layer(shape, **kwargs):
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}[len(shape)]
    return cls(shape[1], dtype=torch.float64, **kwargs)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (4, 3, 5, 6)])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
def test_layer_matches_torch_over_training_and_eval_steps(shape, momentum, affine, track):
    rng = np.random.default_rng(4)
    ours = bn.BatchNorm(shape[1], momentum=momentum, affine=affine, track_running_stats=track,
                        dtype=np.float64)  # fmt: skip
    theirs = torch_layer(shape, momentum=momentum, affine=affine, track_running_stats=track)
    if affine:
        ours.weight[:] = rng.normal(1, 0.2, shape[1])
        ours.bias[:] = rng.normal(0, 0.2, shape[1])
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(ours.weight))
            theirs.bias.copy_(torch.from_numpy(ours.bias))
    for step in range(5):
        training = step != 3
        theirs.train(training)
        x = rng.normal(step, 1 + step, shape)
        dy = rng.normal(size=shape)
        xt = torch.from_numpy(x).requires_grad_()
        yt = theirs(xt)
        yt.backward(torch.from_numpy(dy))
        y = ours(x, training=training)
        dx = ours.backward(dy)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        if affine:
            np.testing.assert_allclose(
                ours.grad_weight, theirs.weight.grad.numpy(), rtol=1e-10, atol=1e-12
            )
            np.testing.assert_allclose(
                ours.grad_bias, theirs.bias.grad.numpy(), rtol=1e-10, atol=1e-12
            )
            theirs.weight.grad = theirs.bias.grad = None
        if track:
            np.testing.assert_allclose(
                ours.running_mean, theirs.running_mean.numpy(), rtol=1e-12, atol=1e-14
            )
            np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-12)
            assert ours.num_batches_tracked == int(theirs.num_batches_tracked)


def test_state_dict_round_trip_and_keys_match_torch():
    layer = bn.BatchNorm(4)
    layer.forward(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    state = layer.state_dict()
    assert set(state) == set(torch.nn.BatchNorm1d(4).state_dict())
    other = bn.BatchNorm(4)
    other.load_state_dict(state)
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    state["running_mean"][:] = 99  # a copy: the layer is not affected
    assert not np.any(layer.running_mean == 99)


@pytest.mark.parametrize(
    "change,error",
    [
        (lambda s: s.pop("running_var"), KeyError),
        (lambda s: s.update(extra=np.zeros(4)), KeyError),
        (lambda s: s.update(weight=np.ones(5, np.float32)), ValueError),
        (lambda s: s.update(bias=np.ones(4, np.float64)), TypeError),
        (lambda s: s.update(num_batches_tracked=np.array(-1)), ValueError),
    ],
)
def test_load_state_dict_rejects_bad_state_without_changing_anything(change, error):
    layer = bn.BatchNorm(4)
    layer.forward(np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32))
    before = layer.state_dict()
    bad = bn.BatchNorm(4).state_dict()
    bad["running_mean"][:] = 5
    change(bad)
    with pytest.raises(error):
        layer.load_state_dict(bad)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="before forward"):
        bn.BatchNorm(2).backward(np.ones((3, 2), np.float32))


def test_bad_input_leaves_the_layer_untouched():
    layer = bn.BatchNorm(3)
    before = layer.state_dict()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer.forward(np.ones((1, 3), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        layer.forward(np.ones((4, 3), np.float64))
    assert layer.num_batches_tracked == 0
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(num_features=0), ValueError),
        (dict(num_features=2.5), TypeError),
        (dict(num_features=2, eps=0), ValueError),
        (dict(num_features=2, momentum=2.0), ValueError),
        (dict(num_features=2, dtype=np.int32), TypeError),
        (dict(num_features=2, on_nonfinite="warn"), ValueError),
    ],
)
def test_constructor_validates_its_arguments(kwargs, error):
    with pytest.raises(error):
        bn.BatchNorm(**kwargs)


def test_gradients_are_written_in_place_into_given_storage():
    storage = np.zeros(4, np.float32)
    layer = bn.BatchNorm(2)
    layer.grad_weight, layer.grad_bias = storage[:2], storage[2:]
    x = np.random.default_rng(2).normal(size=(6, 2)).astype(np.float32)
    layer.forward(x)
    layer.backward(np.ones_like(x))
    np.testing.assert_allclose(storage[2:], [6.0, 6.0])
    assert layer.parameters()[0] is layer.weight and layer.gradients()[1] is layer.grad_bias


def test_channels_last_layer():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 5, 6, 3))
    layer = bn.BatchNorm(3, channel_axis=-1, dtype=np.float64)
    y = layer(x)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-14)
    assert "channel_axis=-1" in repr(layer)
