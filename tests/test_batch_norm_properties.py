"""Hypothesis properties of BatchNorm that hold for any shape, dtype and data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bnsgd_numba as bn
from tests import naive

pytestmark = pytest.mark.usefixtures("warm_batch_norm")

DTYPES = st.sampled_from([np.float32, np.float64])


@st.composite
def batches(draw, max_rank=4, min_per_channel=2):
    """(x, channel_axis): offset and scaled data of rank 2..max_rank."""
    dtype = draw(DTYPES)
    rank = draw(st.integers(2, max_rank))
    shape = draw(hnp.array_shapes(min_dims=rank, max_dims=rank, min_side=1, max_side=5))
    axis = draw(st.sampled_from([1, -1]))
    channels = shape[axis]
    assume(np.prod(shape) // channels >= min_per_channel)
    base = draw(
        hnp.arrays(np.float64, shape, elements=st.floats(-1, 1, allow_subnormal=False, width=32))
    )
    offset = draw(st.sampled_from([0.0, 1.0, -3.0, 1e3, 1e4]))
    scale = draw(st.sampled_from([1.0, 1e-2, 10.0, 1e3]))
    return (offset + scale * base).astype(dtype), axis


def per_channel(values, axis):
    return naive.channels_first(values, axis)


@given(batches())
@example((np.full((2, 3), 7.0, np.float32), 1))
@example(((1e4 + 1e-2 * np.arange(8.0).reshape(4, 2)).astype(np.float32), 1))
@example((np.array([[[[1.0, 1.01]]]]), 1))
def test_training_output_has_zero_mean_and_unit_variance(case):
    x, axis = case
    y = bn.batch_norm_forward(x, training=True, channel_axis=axis, eps=1e-5).y
    eps = np.finfo(x.dtype).eps
    rows = per_channel(y, axis)
    mean, var = naive.batch_norm_statistics(x, axis)
    # Centering is ill-conditioned when |mean| >> std: the float64 mean's own
    # rounding, relative to the spread, shifts every output alike.
    centering = 16 * np.finfo(np.float64).eps * np.abs(mean) / np.sqrt(var + 1e-5)
    bound = np.abs(rows).max(axis=1) + 1
    assert np.all(np.abs(rows.mean(axis=1)) <= 8 * eps * bound + centering)
    expected_var = var / (var + 1e-5)
    assert np.all(
        np.abs(rows.var(axis=1) - expected_var) <= 16 * eps * bound**2 + 2 * centering * bound
    )


@given(
    batches(),
    st.floats(0.25, 8.0),
    st.floats(-10.0, 10.0),
)
def test_output_is_invariant_under_positive_affine_maps_of_the_input(case, a, b):
    x, axis = case
    x = x.astype(np.float64)
    spread = per_channel(x, axis).std(axis=1)
    assume(np.all(spread > 1e-3))
    shifted = a * x + b
    y = bn.batch_norm_forward(x, training=True, channel_axis=axis, eps=1e-5).y
    # var(a x + b) = a^2 var(x): eps scales with it for an exact invariance
    y_mapped = bn.batch_norm_forward(shifted, training=True, channel_axis=axis, eps=1e-5 * a * a).y
    condition = (np.abs(b) + a * np.abs(x).max()) / (a * spread.min())
    assert np.max(np.abs(y - y_mapped)) <= 64 * np.finfo(np.float64).eps * condition * (
        1 + np.abs(y).max()
    )


@given(batches(max_rank=3), st.randoms(use_true_random=False))
def test_output_is_equivariant_under_permuting_the_batch(case, random):
    x, axis = case
    order = list(range(x.shape[0]))
    random.shuffle(order)
    y = bn.batch_norm_forward(x, training=True, channel_axis=axis).y
    y_permuted = bn.batch_norm_forward(x[order], training=True, channel_axis=axis).y
    eps = np.finfo(x.dtype).eps
    mean, var = naive.batch_norm_statistics(x, axis)
    centering = 16 * np.finfo(np.float64).eps * np.max(np.abs(mean) / np.sqrt(var + 1e-5))
    assert np.max(np.abs(y[order] - y_permuted)) <= 4 * eps * (1 + np.abs(y).max()) + centering


@st.composite
def well_conditioned_float64(draw):
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=2, max_side=4))
    axis = draw(st.sampled_from([1, -1]))
    x = draw(hnp.arrays(np.float64, shape, elements=st.floats(-4, 4, allow_subnormal=False)))
    assume(np.all(per_channel(x, axis).std(axis=1) > 0.3))
    return x, axis


@given(well_conditioned_float64(), st.booleans(), st.integers(0, 2**31 - 1))
def test_backward_matches_central_finite_differences(case, affine, seed):
    x, axis = case
    rng = np.random.default_rng(seed)
    channels = x.shape[axis]
    weight = rng.normal(1, 0.3, channels) if affine else None
    bias = rng.normal(0, 0.3, channels) if affine else None
    r = rng.normal(size=x.shape)

    def loss(x_, w_=weight, b_=bias):
        return np.sum(bn.batch_norm_forward(x_, w_, b_, training=True, channel_axis=axis).y * r)

    out = bn.batch_norm_forward(x, weight, bias, training=True, channel_axis=axis)
    dx, dweight, dbias = bn.batch_norm_backward(r, x, weight, out.save_mean, out.save_invstd,
                                                channel_axis=axis)  # fmt: skip
    h = 1e-6
    numeric = np.empty_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        numeric[index] = (loss(up) - loss(down)) / (2 * h)
    tolerance = 1e-6 * (1 + np.abs(numeric).max())
    assert np.max(np.abs(dx - numeric)) <= tolerance
    if affine:
        for c in range(channels):
            step = np.zeros(channels)
            step[c] = h
            dw = (loss(x, weight + step, bias) - loss(x, weight - step, bias)) / (2 * h)
            db = (loss(x, weight, bias + step) - loss(x, weight, bias - step)) / (2 * h)
            assert abs(dweight[c] - dw) <= tolerance
            assert abs(dbias[c] - db) <= tolerance


@given(batches(), st.integers(0, 2**31 - 1))
@example((np.array([[[[-3.0, -2.99]]]], dtype=np.float32), 1), 0)
@example((np.array([[[1.00125, 1.0]]]), 1), 1)
def test_input_gradient_is_orthogonal_to_ones_and_to_x_hat(case, seed):
    x, axis = case
    spread = per_channel(x, axis).std(axis=1)
    assume(np.all(spread > 0))
    rng = np.random.default_rng(seed)
    dy = rng.normal(size=x.shape).astype(x.dtype)
    out = bn.batch_norm_forward(x, training=True, channel_axis=axis)
    dx = bn.batch_norm_backward(dy, x, None, out.save_mean, out.save_invstd, channel_axis=axis).dx
    x_hat = per_channel(out.y, axis)
    dx_rows = per_channel(dx, axis)
    scale = per_channel(np.abs(dy), axis).sum(axis=1) * out.save_invstd.astype(np.float64)
    eps = np.finfo(x.dtype).eps
    mean, var = naive.batch_norm_statistics(x, axis)
    centering = 16 * np.finfo(np.float64).eps * np.abs(mean) / np.sqrt(var + 1e-5)
    bound = (
        (32 * eps + centering)
        * (scale + np.abs(dx_rows).sum(axis=1))
        * (1 + np.abs(x_hat).max(axis=1))
    )
    assert np.all(np.abs(dx_rows.sum(axis=1)) <= bound)
    # sum(dx * x_hat) = g * sum(dy * x_hat) * (1 - mean(x_hat**2)): zero as eps -> 0
    dweight = (per_channel(dy, axis) * x_hat).sum(axis=1)
    expected = out.save_invstd * dweight * (1 - (x_hat**2).mean(axis=1))
    assert np.all(np.abs((dx_rows * x_hat).sum(axis=1) - expected) <= bound)


@given(st.lists(batches(max_rank=3), min_size=1, max_size=4), st.floats(0.0, 1.0))
def test_running_statistics_follow_the_closed_form_moving_average(cases, momentum):
    x0, axis = cases[0]
    batches_ = [x.astype(x0.dtype) for x, ax in cases if ax == axis and x.shape == x0.shape]
    channels = x0.shape[axis]
    running_mean = np.zeros(channels, x0.dtype)
    running_var = np.ones(channels, x0.dtype)
    for x in batches_:
        bn.batch_norm_forward(x, None, None, running_mean, running_var, training=True,
                              momentum=momentum, channel_axis=axis)  # fmt: skip
    expected_mean, expected_var = naive.running_statistics(batches_, momentum, axis)
    eps = np.finfo(x0.dtype).eps
    magnitude_mean = max(np.abs(np.stack(batches_)).max(), 1)
    steps = len(batches_)
    assert np.all(np.abs(running_mean - expected_mean) <= 8 * steps * eps * magnitude_mean)
    np.testing.assert_allclose(
        running_var, expected_var, rtol=8 * steps * eps, atol=8 * steps * eps * magnitude_mean**2
    )


@given(batches(), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_eval_mode_is_a_per_channel_affine_map(case, alpha, seed):
    x1, axis = case
    rng = np.random.default_rng(seed)
    x2 = rng.normal(size=x1.shape).astype(x1.dtype)
    channels = x1.shape[axis]
    weight = rng.normal(size=channels).astype(x1.dtype)
    bias = rng.normal(size=channels).astype(x1.dtype)
    rm = rng.normal(size=channels).astype(x1.dtype)
    rv = rng.uniform(0.1, 3, channels).astype(x1.dtype)

    def f(x):
        y = bn.batch_norm_forward(x, weight, bias, rm, rv, training=False, channel_axis=axis).y
        return y.astype(np.float64)

    mixed = (alpha * x1.astype(np.float64) + (1 - alpha) * x2).astype(x1.dtype)
    lhs = f(mixed)
    rhs = alpha * f(x1) + (1 - alpha) * f(x2)
    eps = np.finfo(x1.dtype).eps
    magnitude = (np.abs(x1).max() + np.abs(x2).max() + np.abs(rm).max()) * np.abs(weight).max()
    magnitude = magnitude / np.sqrt(rv.min()) + np.abs(bias).max()
    assert np.max(np.abs(lhs - rhs)) <= 16 * eps * (1 + magnitude)
