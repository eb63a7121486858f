"""Numerics that used to go silently wrong: overflowing running updates, tiny eps, empty batches.

- Nothing non-finite reaches the running statistics: the update is checked
  in the dtype of the running statistics (float32 overflows where float64
  does not) before anything is written.
- ``eps`` below the dtype's smallest normal number is rejected (a constant
  channel would normalize to NaN instead of ``bias``).
- An empty batch gives what PyTorch gives: an empty output, untouched running
  statistics, an empty ``dx`` and zero ``dweight``/``dbias``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bnsgd_numba as bn
from bnsgd_numba.batch_norm import NonFiniteStatisticsError

C = 3


def _overflowing_batch(channel_axis):
    # Channel 1 holds +-1e20: its variance, 1e40, is finite in float64 but the
    # running update (0.1 * 1e40 * m / (m - 1)) overflows float32.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, C, 5)).astype(np.float32)
    x[:, 1] = np.where(np.arange(40).reshape(8, 5) % 2 == 0, 1e20, -1e20)
    if channel_axis == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1)).reshape(40, C)
    return x


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_a_running_update_that_overflows_float32_raises_and_writes_nothing(channel_axis):
    x = _overflowing_batch(channel_axis)
    running_mean = np.full(C, 0.5, np.float32)
    running_var = np.full(C, 2.0, np.float32)
    out = np.full_like(x, 7.0)
    with pytest.raises(NonFiniteStatisticsError, match=r"1 channel\(s\) \[1\]") as error:
        bn.batch_norm_forward(
            x, None, None, running_mean, running_var, training=True,
            channel_axis=channel_axis, out=out,
        )  # fmt: skip
    np.testing.assert_array_equal(error.value.channels, [1])
    np.testing.assert_array_equal(running_mean, 0.5)
    np.testing.assert_array_equal(running_var, 2.0)
    np.testing.assert_array_equal(out, 7.0)

    x[x == np.float32(1e20)] = 1e17  # variance 1e34: the update fits in float32
    x[x == np.float32(-1e20)] = -1e17
    bn.batch_norm_forward(
        x, None, None, running_mean, running_var, training=True, channel_axis=channel_axis
    )
    values = np.moveaxis(x, channel_axis, 0)[1].astype(np.float64)
    expected = 0.9 * 2.0 + 0.1 * np.var(values) * values.size / (values.size - 1)
    np.testing.assert_allclose(running_var[1], expected, rtol=4 * np.finfo(np.float32).eps)


def test_skip_normalizes_and_leaves_the_running_statistics_finite():
    x = _overflowing_batch(1)
    running_mean = np.full(C, 0.5, np.float32)
    running_var = np.full(C, 2.0, np.float32)
    with pytest.warns(RuntimeWarning, match=r"1 channel\(s\) \[1\]"):
        y = bn.batch_norm_forward(
            x, None, None, running_mean, running_var, training=True, on_nonfinite="skip"
        ).y
    np.testing.assert_array_equal(running_mean, 0.5)
    np.testing.assert_array_equal(running_var, 2.0)
    # the statistics themselves are finite in float64: the output is normalized
    np.testing.assert_allclose(np.abs(y[:, 1]), 1.0, rtol=8 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_eps_below_the_smallest_normal_number_is_rejected_naming_eps(dtype, training):
    tiny = np.finfo(dtype).tiny
    x = np.full((4, C), 3.0, dtype)  # a constant channel
    running_mean = np.full(C, 3.0, dtype)
    running_var = np.zeros(C, dtype)
    with pytest.raises(ValueError, match=rf"eps=.* underflows {np.dtype(dtype)}"):
        bn.batch_norm_forward(
            x, None, None, running_mean, running_var, training=training, eps=float(tiny) / 2
        )
    np.testing.assert_array_equal(running_var, 0.0)
    # at the bound a constant channel still normalizes to exactly bias
    bias = np.full(C, 0.25, dtype)
    y = bn.batch_norm_forward(
        x, None, bias, running_mean, running_var, training=training, eps=float(tiny)
    ).y
    np.testing.assert_array_equal(y, 0.25)


def test_float32_eps_that_once_gave_nan_for_a_constant_channel():
    x = np.ones((8, 2), np.float32)
    with pytest.raises(ValueError, match="eps=1e-300 underflows float32"):
        bn.batch_norm_forward(x, training=True, eps=1e-300)


EMPTY_SHAPES = [((0, C, 4), 1), ((4, C, 0), 1), ((0, C), 1), ((0, 2, C), -1)]


@pytest.mark.parametrize(("shape", "channel_axis"), EMPTY_SHAPES)
def test_an_empty_batch_gives_an_empty_output_and_leaves_the_running_statistics(
    shape, channel_axis
):
    x = np.zeros(shape, np.float32)
    weight = np.full(C, 2.0, np.float32)
    bias = np.full(C, 0.5, np.float32)
    running_mean = np.full(C, 0.25, np.float32)
    running_var = np.full(C, 1.5, np.float32)
    moved = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, channel_axis, 1)))
    for training in (True, False):
        result = bn.batch_norm_forward(
            x, weight, bias, running_mean, running_var, training=training,
            channel_axis=channel_axis,
        )  # fmt: skip
        assert result.y.shape == shape and result.y.dtype == np.float32
        np.testing.assert_array_equal(running_mean, 0.25)
        np.testing.assert_array_equal(running_var, 1.5)
        assert result.save_mean.shape == result.save_invstd.shape == (C,)
        assert np.isfinite(result.save_mean).all() and np.isfinite(result.save_invstd).all()
        torch_mean, torch_var = torch.full((C,), 0.25), torch.full((C,), 1.5)
        expected = torch.nn.functional.batch_norm(
            moved, torch_mean, torch_var, torch.from_numpy(weight), torch.from_numpy(bias),
            training=training,
        )  # fmt: skip
        assert tuple(expected.shape) == tuple(moved.shape)
        np.testing.assert_array_equal(torch_var.numpy(), running_var)
        out = np.zeros(shape, np.float32)
        again = bn.batch_norm_forward(
            x, weight, bias, running_mean, running_var, training=training,
            channel_axis=channel_axis, out=out,
        )  # fmt: skip
        assert again.y is out


@pytest.mark.parametrize(("shape", "channel_axis"), EMPTY_SHAPES)
def test_the_backward_of_an_empty_batch_is_empty_with_zero_parameter_gradients(shape, channel_axis):
    x = np.zeros(shape, np.float64)
    weight = np.full(C, 2.0)
    moved = np.ascontiguousarray(np.moveaxis(x, channel_axis, 1))
    for training in (True, False):
        forward = bn.batch_norm_forward(
            x, weight, None, np.zeros(C), np.ones(C), training=training,
            channel_axis=channel_axis,
        )  # fmt: skip
        grads = bn.batch_norm_backward(
            x, x, weight, forward.save_mean, forward.save_invstd, training=training,
            channel_axis=channel_axis,
        )  # fmt: skip
        assert grads.dx.shape == shape
        tx = torch.from_numpy(moved).requires_grad_()
        tw = torch.from_numpy(weight.copy()).requires_grad_()
        tb = torch.zeros(C, dtype=torch.float64, requires_grad=True)
        torch.nn.functional.batch_norm(
            tx, torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64), tw,
            tb, training=training,
        ).sum().backward()  # fmt: skip
        np.testing.assert_array_equal(grads.dweight, tw.grad.numpy())
        np.testing.assert_array_equal(grads.dbias, tb.grad.numpy())
        np.testing.assert_array_equal(grads.dweight, 0.0)
