"""BatchNorm forward, running statistics and backward against two oracles.

The float64 NumPy reference in ``naive.py`` and PyTorch
(``torch.nn.functional.batch_norm`` with autograd), over layouts, dtypes,
affine on/off, training and eval. Tolerances are in units of the dtype's eps,
relative to the magnitude of the quantity compared.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnsgd_numba as bn
from tests import naive

pytestmark = pytest.mark.usefixtures("warm_batch_norm")


def _channels_last_memory(shape, rng, dtype):
    # An NCHW-shaped view of NHWC memory, as PyTorch's channels_last tensors.
    moved = rng.normal(0.5, 2.0, shape[:1] + shape[2:] + shape[1:2]).astype(dtype)
    return np.moveaxis(moved, -1, 1)


LAYOUTS = {
    "NC": ((16, 3), 1, "contiguous"),
    "NCL": ((4, 3, 7), 1, "contiguous"),
    "NCHW": ((4, 3, 5, 6), 1, "contiguous"),
    "NCDHW": ((2, 3, 2, 3, 4), 1, "contiguous"),
    "NHWC": ((4, 5, 6, 3), -1, "contiguous"),
    "NCHW-view-of-NHWC": ((4, 3, 5, 6), 1, "channels_last_memory"),
    "NCHW-strided": ((4, 3, 10, 6), 1, "strided"),
    "NCHW-large": ((8, 4, 40, 40), 1, "contiguous"),
    "NHWC-large": ((8, 40, 40, 4), -1, "contiguous"),
    # several row groups and column strips of the (N, C) reductions
    "NC-wide": ((100, 1500), 1, "contiguous"),
    # channels of more than 1 MB: the backward's sums and dx in separate passes
    "NCL-long-channels": ((300, 4, 500), 1, "contiguous"),
}


def make_input(layout, dtype, rng):
    shape, axis, memory = LAYOUTS[layout]
    if memory == "channels_last_memory":
        x = _channels_last_memory(shape, rng, dtype)
    else:
        x = rng.normal(0.5, 2.0, shape).astype(dtype)
        if memory == "strided":
            x = x[:, :, ::2]
    return x, axis


def ulp_tolerance(dtype, magnitude, ulps=16):
    return ulps * np.finfo(dtype).eps * (1.0 + magnitude)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
def test_training_forward_and_backward_match_float64_reference(layout, dtype, affine):
    rng = np.random.default_rng(zlib.crc32(f"{layout}{affine}".encode()))
    x, axis = make_input(layout, dtype, rng)
    channels = x.shape[axis]
    weight = rng.normal(1, 0.5, channels).astype(dtype) if affine else None
    bias = rng.normal(0, 0.5, channels).astype(dtype) if affine else None
    running_mean = rng.normal(size=channels).astype(dtype)
    running_var = rng.uniform(0.5, 2, channels).astype(dtype)
    batches_mean, batches_var = running_mean.astype(np.float64), running_var.astype(np.float64)

    y, save_mean, save_invstd = bn.batch_norm_forward(
        x, weight, bias, running_mean, running_var, training=True, channel_axis=axis
    )
    y_ref, mean_ref, invstd_ref = naive.batch_norm_forward(x, weight, bias, axis=axis)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.max(np.abs(y - y_ref)) <= ulp_tolerance(dtype, np.max(np.abs(y_ref)))
    # blocked float64 sums: a few eps of the mean magnitude of the terms
    atol = 16 * np.finfo(np.float64).eps * np.abs(x).mean() + ulp_tolerance(dtype, 0, 1) * np.abs(
        mean_ref
    )
    assert np.all(np.abs(save_mean - mean_ref) <= atol)
    np.testing.assert_allclose(save_invstd, invstd_ref, rtol=8 * np.finfo(dtype).eps)

    m = x.size // channels
    _, var_ref = naive.batch_norm_statistics(x, axis)
    expected_mean = 0.9 * batches_mean + 0.1 * mean_ref
    expected_var = 0.9 * batches_var + 0.1 * var_ref * m / (m - 1)
    # tolerance relative to the terms of the sum: old and new may cancel
    terms_mean = 0.9 * np.abs(batches_mean) + 0.1 * (
        np.abs(mean_ref) + atol / np.finfo(dtype).eps / 4
    )
    assert np.all(np.abs(running_mean - expected_mean) <= 4 * np.finfo(dtype).eps * terms_mean)
    np.testing.assert_allclose(running_var, expected_var, rtol=4 * np.finfo(dtype).eps)

    dy = rng.normal(size=x.shape).astype(dtype)
    dx, dweight, dbias = bn.batch_norm_backward(
        dy, x, weight, save_mean, save_invstd, training=True, channel_axis=axis
    )
    # the exact batch mean: the backward corrects the saved (rounded) one
    dx_ref, dweight_ref, dbias_ref = naive.batch_norm_backward(
        dy, x, weight, mean_ref, save_invstd, training=True, axis=axis
    )
    assert dx.shape == x.shape and dx.dtype == x.dtype
    scale = (
        np.max(np.abs(dy)) * np.max(save_invstd) * (1 if weight is None else np.max(np.abs(weight)))
    )
    assert np.max(np.abs(dx - dx_ref)) <= ulp_tolerance(dtype, scale, 32)
    terms = naive.channels_first(np.abs(dy), axis).sum(axis=1)
    assert np.all(np.abs(dbias - dbias_ref) <= ulp_tolerance(dtype, terms, 2))
    hat_terms = terms * np.max(np.abs(y_ref))
    assert np.all(np.abs(dweight - dweight_ref) <= ulp_tolerance(dtype, hat_terms, 4))


@pytest.mark.parametrize("layout", ["NC", "NCHW", "NHWC", "NCHW-strided"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_eval_forward_and_backward_match_float64_reference(layout, dtype):
    rng = np.random.default_rng(7)
    x, axis = make_input(layout, dtype, rng)
    channels = x.shape[axis]
    weight = rng.normal(1, 0.5, channels).astype(dtype)
    bias = rng.normal(0, 0.5, channels).astype(dtype)
    running_mean = rng.normal(size=channels).astype(dtype)
    running_var = rng.uniform(0.5, 2, channels).astype(dtype)
    before = running_mean.copy(), running_var.copy()

    y, save_mean, save_invstd = bn.batch_norm_forward(
        x, weight, bias, running_mean, running_var, training=False, channel_axis=axis
    )
    y_ref, _, invstd_ref = naive.batch_norm_forward(
        x, weight, bias, running_mean.astype(np.float64), running_var, axis=axis
    )
    assert np.max(np.abs(y - y_ref)) <= ulp_tolerance(dtype, np.max(np.abs(y_ref)))
    np.testing.assert_array_equal(save_mean, running_mean)
    np.testing.assert_allclose(save_invstd, invstd_ref, rtol=2 * np.finfo(dtype).eps)
    np.testing.assert_array_equal(running_mean, before[0])
    np.testing.assert_array_equal(running_var, before[1])

    dy = rng.normal(size=x.shape).astype(dtype)
    dx, dweight, dbias = bn.batch_norm_backward(
        dy, x, weight, save_mean, save_invstd, training=False, channel_axis=axis
    )
    dx_ref, dweight_ref, dbias_ref = naive.batch_norm_backward(
        dy, x, weight, save_mean, save_invstd, training=False, axis=axis
    )
    assert np.max(np.abs(dx - dx_ref)) <= ulp_tolerance(dtype, np.max(np.abs(dx_ref)), 4)
    np.testing.assert_allclose(dbias, dbias_ref, rtol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(dweight, dweight_ref, rtol=1e-5 if dtype == np.float32 else 1e-12)


def _torch_batch_norm(x, axis, weight, bias, running_mean, running_var, training, dy):
    to_torch = lambda a: None if a is None else torch.from_numpy(np.array(a))  # noqa: E731
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, axis, 1))).requires_grad_()
    wt, bt = to_torch(weight), to_torch(bias)
    for t in (wt, bt):
        if t is not None:
            t.requires_grad_()
    rmt, rvt = to_torch(running_mean), to_torch(running_var)
    yt = F.batch_norm(xt, rmt, rvt, wt, bt, training=training, momentum=0.1, eps=1e-5)
    yt.backward(torch.from_numpy(np.ascontiguousarray(np.moveaxis(dy, axis, 1))))
    grad = lambda t: None if t is None else t.grad.numpy()  # noqa: E731
    back = lambda t: np.moveaxis(t.detach().numpy(), 1, axis)  # noqa: E731
    return back(yt), rmt.numpy(), rvt.numpy(), back(xt.grad), grad(wt), grad(bt)


@pytest.mark.parametrize("layout", ["NC", "NCL", "NCHW", "NHWC", "NCHW-view-of-NHWC", "NCHW-large"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_agrees_with_pytorch(layout, dtype, training):
    rng = np.random.default_rng(11)
    x, axis = make_input(layout, dtype, rng)
    channels = x.shape[axis]
    weight = rng.normal(1, 0.5, channels).astype(dtype)
    bias = rng.normal(0, 0.5, channels).astype(dtype)
    running_mean = rng.normal(size=channels).astype(dtype)
    running_var = rng.uniform(0.5, 2, channels).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)

    y_t, rm_t, rv_t, dx_t, dw_t, db_t = _torch_batch_norm(
        x, axis, weight, bias, running_mean, running_var, training, dy
    )
    y, save_mean, save_invstd = bn.batch_norm_forward(
        x, weight, bias, running_mean, running_var, training=training, channel_axis=axis
    )
    dx, dweight, dbias = bn.batch_norm_backward(
        dy, x, weight, save_mean, save_invstd, training=training, channel_axis=axis
    )
    eps = np.finfo(dtype).eps
    m = x.size // channels
    # PyTorch accumulates in the data's dtype: allow for its rounding too.
    slack = 64 if dtype == np.float32 else 4096
    assert np.max(np.abs(y - y_t)) <= slack * eps * (1 + np.max(np.abs(y_t)))
    np.testing.assert_allclose(running_mean, rm_t, rtol=slack * eps, atol=slack * eps)
    np.testing.assert_allclose(running_var, rv_t, rtol=slack * eps)
    assert np.max(np.abs(dx - dx_t)) <= slack * eps * (1 + np.max(np.abs(dx_t)))
    grad_scale = np.sqrt(m) * np.max(np.abs(dy)) * 4
    assert np.max(np.abs(dweight - dw_t)) <= slack * eps * grad_scale
    assert np.max(np.abs(dbias - db_t)) <= slack * eps * grad_scale


def test_out_receives_the_result_in_any_layout():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    expected = bn.batch_norm_forward(x, None, None, rm.copy(), rv.copy(), training=True).y
    for out in (np.empty_like(x), np.empty((4, 3, 5, 12), np.float32)[..., ::2]):
        result = bn.batch_norm_forward(x, None, None, rm.copy(), rv.copy(), training=True, out=out)
        assert result.y is out
        np.testing.assert_array_equal(out, expected)
    dy = rng.normal(size=x.shape).astype(np.float32)
    o = bn.batch_norm_forward(x, None, None, rm, rv, training=True)
    dx_out = np.empty_like(x)
    dx = bn.batch_norm_backward(dy, x, None, o.save_mean, o.save_invstd, out=dx_out).dx
    assert dx is dx_out
    np.testing.assert_array_equal(dx, bn.batch_norm_backward(dy, x, None, *o[1:]).dx)


def test_channels_last_output_keeps_the_input_memory_layout():
    rng = np.random.default_rng(5)
    x = _channels_last_memory((4, 3, 5, 6), rng, np.float32)
    y = bn.batch_norm_forward(x, None, None, np.zeros(3, np.float32), np.ones(3, np.float32),
                              training=True).y  # fmt: skip
    assert np.moveaxis(y, 1, -1).flags.c_contiguous


@pytest.mark.parametrize(
    "shape,axis", [((4, 3, 0), 1), ((0, 3), 1), ((0, 3, 5), 1), ((2, 0, 4, 3), -1)]
)
def test_empty_input_gives_empty_output_in_eval_and_backward(shape, axis):
    # PyTorch returns empty outputs here; a zero-length spatial axis once
    # divided by zero when the work items were sized.
    x = np.ones(shape, np.float32)
    rm, rv = np.zeros(3, np.float32), np.full(3, 4.0, np.float32)
    y = bn.batch_norm_forward(x, None, None, rm, rv, training=False, channel_axis=axis).y
    moved = np.moveaxis(x, axis, 1) if axis != 1 else x
    y_t = F.batch_norm(torch.from_numpy(np.ascontiguousarray(moved)), torch.from_numpy(rm),
                       torch.from_numpy(rv), training=False)  # fmt: skip
    assert y.shape == shape and tuple(y_t.shape) == moved.shape
    dx, dweight, dbias = bn.batch_norm_backward(
        x, x, None, rm, np.full(3, 0.5, np.float32), training=False, channel_axis=axis
    )
    assert dx.shape == shape
    np.testing.assert_array_equal(dweight, np.zeros(3, np.float32))
    np.testing.assert_array_equal(dbias, np.zeros(3, np.float32))
