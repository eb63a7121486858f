"""Numerical promises of the per-sample normalizations: exact constants, thread independence,
float32 accuracy with |mean| >> std, and Hypothesis-generated rows."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bnsgd_numba

# found by Hypothesis for BatchNorm: sum / m of this constant does not round back to it
CONSTANT_FLOAT64 = 1.7974005664190091


def _layer(name, dtype, features=8):
    if name == "group_norm":
        return bnsgd_numba.create_normalization(name, features, num_groups=2, dtype=dtype)
    if name == "instance_norm":
        return bnsgd_numba.create_normalization(name, features, affine=True, dtype=dtype)
    if name == "ghost_batch_norm":
        return bnsgd_numba.create_normalization(name, features, virtual_batch_size=2, dtype=dtype)
    if name in ("batch_renorm",):
        return bnsgd_numba.create_normalization(name, features, dtype=dtype)
    return bnsgd_numba.create_normalization(name, features, channel_axis=1, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "name", ["layer_norm", "group_norm", "instance_norm", "batch_renorm", "ghost_batch_norm"]
)
@pytest.mark.parametrize("value", [CONSTANT_FLOAT64, 3.0, -1e4 + 0.1, 1e-30, 7e30])
def test_a_constant_normalizes_to_exactly_the_bias(name, dtype, value):
    layer = _layer(name, dtype)
    bias = np.linspace(-1, 1, 8).astype(dtype)
    layer.bias[...] = bias
    layer.weight[...] = 3.0
    x = np.full((4, 8, 6), value, dtype=dtype)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, np.broadcast_to(bias.reshape(1, 8, 1), y.shape))
    dx = layer.backward(np.random.default_rng(0).standard_normal(x.shape).astype(dtype))
    assert np.isfinite(dx).all()


@pytest.mark.parametrize(
    ("name", "shape", "kwargs"),
    [
        ("layer_norm", (512, 256), {}),
        ("rms_norm", (512, 256), {}),
        ("group_norm", (8, 32, 24, 24), {"num_groups": 4}),
        ("instance_norm", (8, 32, 24, 24), {"affine": True}),
    ],
)
def test_results_do_not_depend_on_the_number_of_threads(name, shape, kwargs):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) + 3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    features = shape[-1] if name in ("layer_norm", "rms_norm") else shape[1]
    runs = []
    saved = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            layer = bnsgd_numba.create_normalization(name, features, **kwargs)
            y = layer.forward(x)
            runs.append((y, layer.backward(dy), *(g.copy() for g in layer.gradients())))
    finally:
        numba.set_num_threads(saved)
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["layer_norm", "group_norm"])
def test_float32_accuracy_with_a_large_offset(name):
    # |mean| / std = 1e3: the float32 output errs by the rounding of x itself
    # (1e3 * eps32 relative to the deviation), not by more
    rng = np.random.default_rng(2)
    x = (1e3 + rng.standard_normal((16, 8, 40))).astype(np.float32)
    layer = _layer(name, np.float32)
    reference = _layer(name, np.float64)
    y = layer.forward(x)
    y64 = reference.forward(x.astype(np.float64))
    eps32 = float(np.finfo(np.float32).eps)
    assert np.abs(y - y64).max() <= 8 * eps32 * (1 + 1e3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["layer_norm", "group_norm"])
def test_rows_whose_first_values_are_outliers_keep_the_statistics_accurate(name, dtype):
    # Rows are summed per block about the mean of the block's first values:
    # 1/16 of them for float32, all of them for float64
    # (_reductions.SHIFT_SAMPLE_DIVISOR). Those values far from the rest, at
    # a mean much larger than the spread, are the worst case for the shift;
    # for float64 (mean 1e8, spread 1e-3) unshifted sums would be garbage.
    rng = np.random.default_rng(3)
    mean, spread = (1e4, 1e-2) if dtype == np.float32 else (1e8, 1e-3)
    shape = (4, 1024) if name == "layer_norm" else (4, 8, 256)
    x = (mean + spread * rng.standard_normal(shape)).astype(dtype)
    rows = x.reshape(4, 2, -1) if name == "group_norm" else x.reshape(4, 1, -1)
    rows[..., : rows.shape[-1] // 16] += dtype(100 * spread)  # the float32 sample
    if name == "layer_norm":
        layer = bnsgd_numba.create_normalization(name, 1024, dtype=dtype)
    else:
        layer = _layer(name, dtype)
    y = layer.forward(x)
    x64 = rows.astype(np.float64)
    mu = x64.mean(axis=-1, keepdims=True)  # two passes in float64
    invstd = 1 / np.sqrt(((x64 - mu) ** 2).mean(axis=-1, keepdims=True) + 1e-5)
    y_ref = (x64 - mu) * invstd
    error = np.abs(y.reshape(y_ref.shape) - y_ref).max()
    # a few ulps of y, plus the float64 rounding of the mean (ours and the
    # reference's) seen through invstd
    eps64 = float(np.finfo(np.float64).eps)
    bound = 8 * float(np.finfo(dtype).eps) * np.abs(y_ref).max() + 4 * eps64 * mean * invstd.max()
    assert error <= bound


@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
        elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False),
    ),
)
@example(x=np.full((3, 7), CONSTANT_FLOAT64, dtype=np.float32))
@example(x=np.array([[1e4, 1e4, 1e4 + 1e-3 * 1024]], dtype=np.float32))
def test_layer_norm_rows_are_standardized(x):
    layer = bnsgd_numba.create_normalization("layer_norm", x.shape[1], dtype=np.float32)
    y = layer.forward(x).astype(np.float64)
    x64 = x.astype(np.float64)
    eps32 = float(np.finfo(np.float32).eps)
    for row, out in zip(x64, y, strict=True):
        if np.all(row == row[0]):
            assert np.all(out == 0.0)
            continue
        mean, var = row.mean(), row.var()
        expected = (row - mean) / np.sqrt(var + layer.eps)
        cond = 1.0 + abs(mean) / np.sqrt(var + layer.eps)
        assert np.abs(out - expected).max() <= 16 * eps32 * cond


@pytest.mark.parametrize(
    ("name", "args", "kwargs", "shape", "moved"),
    [
        ("layer_norm", (6,), {}, (4, 5, 6), False),
        ("layer_norm", (5,), {"channel_axis": 1}, (4, 5, 6), False),
        ("rms_norm", (6,), {}, (4, 5, 6), True),
        ("group_norm", (2, 6), {}, (4, 6, 5), False),
        ("group_norm", (2, 6), {"channel_axis": -1}, (4, 5, 6), True),
        ("instance_norm", (6,), {"track_running_stats": True}, (4, 6, 5), False),
    ],
)
def test_out_gives_what_allocating_gives(name, args, kwargs, shape, moved):
    rng = np.random.default_rng(9)
    a = bnsgd_numba.create_normalization(name, *args, dtype=np.float64, **kwargs)
    b = bnsgd_numba.create_normalization(name, *args, dtype=np.float64, **kwargs)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    # a non-contiguous out (a transposed buffer) takes the copying path
    y_out = np.empty(shape[::-1]).T if moved else np.empty(shape)
    dx_out = np.empty(shape[::-1]).T if moved else np.empty(shape)
    for training in (True, False):
        expected = a.forward(x, training)
        assert b.forward(x, training, out=y_out) is y_out
        np.testing.assert_array_equal(y_out, expected)
        expected_dx = a.backward(dy)
        assert b.backward(dy, out=dx_out) is dx_out
        np.testing.assert_array_equal(dx_out, expected_dx)
    with pytest.raises(ValueError, match="out"):
        b.forward(x, out=np.empty(shape[:-1] + (shape[-1] + 1,)))
    with pytest.raises(ValueError, match="overlaps"):
        b.forward(x, out=x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("centered", [True, False])
def test_four_rows_at_a_time_add_the_column_sums_of_four_single_rows(dtype, affine, centered):
    # The LayerNorm/RMSNorm backward takes rows four at a time: its column
    # sums (grad_weight and grad_bias partials) must be the bits of four
    # single-row calls in row order, its row sums those sums up to the order
    # of a float64 reduction.
    from bnsgd_numba.normalizations import _cpu as kernels

    rng = np.random.default_rng(5)
    rows, length = 4, 203
    x = (rng.standard_normal((rows, length)) + 2).astype(dtype)
    dy = rng.standard_normal((rows, length)).astype(dtype)
    mean = x.astype(np.float64).mean(axis=1)
    invstd = rng.uniform(0.5, 2.0, rows)
    weight = rng.uniform(0.5, 1.5, length) if affine else np.empty(0)
    start_gw = rng.standard_normal(length)
    start_gb = rng.standard_normal(length)
    single_gw, single_gb = start_gw.copy(), start_gb.copy()
    single = np.empty((2, rows))
    for r in range(rows):
        mu = mean[r] if centered else 0.0
        single[:, r] = kernels._row_gradient_sums(
            dy[r], x[r], weight, mu, invstd[r], single_gw, single_gb
        )
    quad_gw, quad_gb = start_gw.copy(), start_gb.copy()
    quad = np.empty((2, 4))
    kernels._quad_gradient_sums(dy, x, 0, weight, mean, invstd, centered, quad_gw, quad_gb, quad)
    np.testing.assert_array_equal(quad_gw, single_gw)
    np.testing.assert_array_equal(quad_gb, single_gb)
    # the row sums: float64 sums of `length` terms, reordered at most
    centers = mean[:, None] if centered else 0.0
    g = np.abs(dy.astype(np.float64) * (weight if affine else 1.0))
    scale = g.sum(axis=1) * max(1.0, np.abs(x - centers).max())
    tolerance = length * np.finfo(np.float64).eps * scale
    assert np.all(np.abs(quad[0] - single[0]) <= tolerance)
    assert np.all(np.abs(quad[1] - single[1]) <= tolerance)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_row_of_one_block_gives_the_bits_of_its_merge_into_zeros(dtype):
    # A row that is one block skips merge_chan's divisions (a first part
    # merges with a ratio of exactly 1 and a weight of exactly 0): its mean
    # and M2 must be the merge's bits, for ordinary rows and for a constant
    # row, -0.0, NaN, infinities and (float64) a mean whose square overflows.
    from bnsgd_numba._core.reductions import merge_chan
    from bnsgd_numba.normalizations import _cpu as kernels

    rng = np.random.default_rng(11)
    rows = [
        (3 + 2 * rng.standard_normal(203)).astype(dtype),
        np.full(40, 7.25, dtype),
        np.full(17, -0.0, dtype),
        np.array([1.0, np.nan, 2.0], dtype),
        np.array([1.0, np.inf, 2.0], dtype),
        np.array([-np.inf, -np.inf], dtype),
        (1e4 + 1e-2 * rng.standard_normal(64)).astype(dtype),
    ]
    if dtype == np.float64:
        rows.append(np.full(9, 1e200))
        rows.append(-3e160 * (1 + np.arange(5.0)))
    for row in rows:
        merged = merge_chan(0.0, 0.0, 0.0, float(row.size), *kernels._block_moments(row))[1:]
        shortcut = kernels._row_moments(row, row.size)
        assert np.array(shortcut).tobytes() == np.array(merged).tobytes(), row[:4]
