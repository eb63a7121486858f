"""batch_renorm, ghost_batch_norm and frozen_batch_norm against BatchNorm and float64 references."""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba
from bnsgd_numba import BatchNorm


def _pair(name, dtype, channel_axis=1, **kwargs):
    ours = bnsgd_numba.create_normalization(
        name, 3, dtype=dtype, channel_axis=channel_axis, **kwargs
    )
    reference = BatchNorm(3, dtype=dtype, channel_axis=channel_axis)
    return ours, reference


def _set_affine(*layers, seed=0):
    rng = np.random.default_rng(seed)
    weight, bias = rng.uniform(0.5, 1.5, 3), rng.uniform(-1, 1, 3)
    for layer in layers:
        layer.weight[...] = weight
        layer.bias[...] = bias


# -- batch_renorm -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "axis"), [((8, 3, 5), 1), ((4, 6, 5, 3), -1), ((200, 3, 64), 1)])
def test_batch_renorm_with_r_max_1_and_d_max_0_is_batch_norm_bit_for_bit(shape, axis, dtype):
    rng = np.random.default_rng(1)
    renorm, bn = _pair(
        "batch_renorm", dtype, axis, r_max=1.0, d_max=0.0, warmup_steps=0,
        r_max_ramp_steps=0, d_max_ramp_steps=0,
    )  # fmt: skip
    _set_affine(renorm, bn)
    for step in range(3):
        x = (rng.standard_normal(shape) * (step + 1) + 5).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        np.testing.assert_array_equal(renorm.forward(x), bn.forward(x))
        np.testing.assert_array_equal(renorm.backward(dy), bn.backward(dy))
        np.testing.assert_array_equal(renorm.grad_weight, bn.grad_weight)
        np.testing.assert_array_equal(renorm.grad_bias, bn.grad_bias)
        np.testing.assert_array_equal(renorm.running_mean, bn.running_mean)
        np.testing.assert_array_equal(renorm.running_var, bn.running_var)
    np.testing.assert_array_equal(renorm.forward(x, training=False), bn.forward(x, training=False))
    np.testing.assert_array_equal(renorm.backward(dy), bn.backward(dy))


def test_batch_renorm_warm_up_is_batch_norm():
    rng = np.random.default_rng(2)
    renorm, bn = _pair(
        "batch_renorm", np.float64, warmup_steps=3, r_max_ramp_steps=0, d_max_ramp_steps=0
    )
    for _ in range(3):
        x = rng.standard_normal((6, 3, 4)) * 4 - 2
        np.testing.assert_array_equal(renorm.forward(x), bn.forward(x))
    # step 3: the clips jump to r_max=3, d_max=5 and r, d move the output
    x = rng.standard_normal((6, 3, 4)) * 4 - 2
    assert not np.allclose(renorm.forward(x), bn.forward(x))


def test_batch_renorm_clipping_schedule():
    layer = bnsgd_numba.create_normalization(
        "batch_renorm", 2, r_max=3.0, d_max=5.0, warmup_steps=10, r_max_ramp_steps=20,
        d_max_ramp_steps=10,
    )  # fmt: skip
    assert layer.clipping_at(0) == layer.clipping_at(9) == (1.0, 0.0)
    assert layer.clipping_at(10) == (1.0, 0.0)
    assert layer.clipping_at(15) == (1.5, 2.5)
    assert layer.clipping_at(20) == (2.0, 5.0)
    assert layer.clipping_at(30) == layer.clipping_at(10**6) == (3.0, 5.0)


def _renorm_reference(x, weight, bias, running_mean, running_var, r_max, d_max, eps, dy):
    """Ioffe (2017) in float64 with torch autograd; r and d are stop-gradient."""
    import torch

    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    wt = torch.from_numpy(weight.astype(np.float64)).requires_grad_()
    bt = torch.from_numpy(bias.astype(np.float64)).requires_grad_()
    axes = (0, 2)
    mean = xt.mean(dim=axes, keepdim=True)
    var = xt.var(dim=axes, unbiased=False, keepdim=True)
    sigma_b = torch.sqrt(var + eps)
    sigma = torch.sqrt(torch.from_numpy(running_var).reshape(1, -1, 1) + eps)
    mu = torch.from_numpy(running_mean).reshape(1, -1, 1)
    r = torch.clamp(sigma_b / sigma, 1 / r_max, r_max).detach()
    d = torch.clamp((mean - mu) / sigma, -d_max, d_max).detach()
    y = wt.reshape(1, -1, 1) * ((xt - mean) / sigma_b * r + d) + bt.reshape(1, -1, 1)
    y.backward(torch.from_numpy(dy))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()


def test_batch_renorm_matches_the_paper_in_float64():
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    layer = bnsgd_numba.create_normalization(
        "batch_renorm", 3, dtype=np.float64, r_max=1.5, d_max=0.5, warmup_steps=0,
        r_max_ramp_steps=0, d_max_ramp_steps=0, momentum=0.3,
    )  # fmt: skip
    _set_affine(layer)
    clipped = set()
    for step in range(4):
        x = rng.standard_normal((5, 3, 6)) * rng.uniform(0.2, 3, (1, 3, 1)) + step
        dy = rng.standard_normal(x.shape)
        rm, rv = layer.running_mean.copy(), layer.running_var.copy()
        y_ref, dx_ref, gw_ref, gb_ref = _renorm_reference(
            x, layer.weight, layer.bias, rm, rv, 1.5, 0.5, layer.eps, dy
        )
        np.testing.assert_allclose(layer.forward(x), y_ref, rtol=0, atol=1e-13)
        np.testing.assert_allclose(layer.backward(dy), dx_ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(layer.grad_weight, gw_ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(layer.grad_bias, gb_ref, rtol=0, atol=1e-12)
        m = x.shape[0] * x.shape[2]
        np.testing.assert_allclose(
            layer.running_mean, 0.7 * rm + 0.3 * x.mean(axis=(0, 2)), rtol=1e-14
        )
        np.testing.assert_allclose(
            layer.running_var, 0.7 * rv + 0.3 * x.var(axis=(0, 2)) * m / (m - 1), rtol=1e-14
        )
        sigma_b = np.sqrt(x.var(axis=(0, 2)) + layer.eps)
        r = sigma_b / np.sqrt(rv + layer.eps)
        clipped.update(np.flatnonzero((r < 1 / 1.5) | (r > 1.5)).tolist())
    assert clipped, "the test data should exercise the clipping of r"


def test_batch_renorm_state_dict_carries_the_warm_up_step():
    layer = bnsgd_numba.create_normalization("batch_renorm", 3, warmup_steps=2)
    for _ in range(3):
        layer.forward(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    state = layer.state_dict()
    assert int(state["num_batches_tracked"]) == 3
    fresh = bnsgd_numba.create_normalization("batch_renorm", 3, warmup_steps=2)
    fresh.load_state_dict(state)
    assert fresh.clipping_at(fresh.num_batches_tracked) == layer.clipping_at(3)


# -- ghost_batch_norm ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("shape", "axis", "virtual"),
    [((8, 3, 5), 1, 4), ((7, 3, 5), 1, 3), ((6, 4, 5, 3), -1, 2), ((256, 3, 64), 1, 64)],
)
def test_ghost_batch_norm_is_batch_norm_per_virtual_batch(shape, axis, virtual, dtype):
    rng = np.random.default_rng(4)
    ghost, bn = _pair("ghost_batch_norm", dtype, axis, virtual_batch_size=virtual)
    _set_affine(ghost, bn)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = ghost.forward(x)
    dx = ghost.backward(dy)
    grad_weight = np.zeros(3)
    grad_bias = np.zeros(3)
    for start in range(0, shape[0], virtual):
        part = slice(start, start + virtual)
        np.testing.assert_array_equal(y[part], bn.forward(x[part]))
        np.testing.assert_array_equal(dx[part], bn.backward(dy[part]))
        grad_weight += bn.grad_weight
        grad_bias += bn.grad_bias
    np.testing.assert_array_equal(ghost.grad_weight, grad_weight.astype(dtype))
    np.testing.assert_array_equal(ghost.grad_bias, grad_bias.astype(dtype))


def test_ghost_batch_norm_running_statistics_pool_the_virtual_batches():
    rng = np.random.default_rng(5)
    ghost = bnsgd_numba.create_normalization(
        "ghost_batch_norm", 3, virtual_batch_size=3, dtype=np.float64, momentum=0.2
    )
    x = rng.standard_normal((7, 3, 4)) * 2 + 1  # virtual batches of 3, 3 and 1 samples
    ghost.forward(x)
    parts = [x[0:3], x[3:6], x[6:7]]
    m2 = sum(((p - p.mean(axis=(0, 2), keepdims=True)) ** 2).sum(axis=(0, 2)) for p in parts)
    dof = sum(p.shape[0] * p.shape[2] - 1 for p in parts)
    np.testing.assert_allclose(ghost.running_mean, 0.2 * x.mean(axis=(0, 2)), rtol=1e-14)
    np.testing.assert_allclose(ghost.running_var, 0.8 + 0.2 * m2 / dof, rtol=1e-14)
    assert ghost.num_batches_tracked == 1
    bn = BatchNorm(3, dtype=np.float64)
    bn.load_state_dict(ghost.state_dict())
    np.testing.assert_array_equal(ghost.forward(x, training=False), bn.forward(x, training=False))


def test_ghost_batch_norm_virtual_batch_larger_than_the_batch_is_batch_norm():
    rng = np.random.default_rng(6)
    ghost, bn = _pair("ghost_batch_norm", np.float32, virtual_batch_size=128)
    x = rng.standard_normal((16, 3, 9)).astype(np.float32)
    np.testing.assert_array_equal(ghost.forward(x), bn.forward(x))
    np.testing.assert_array_equal(ghost.running_mean, bn.running_mean)
    np.testing.assert_array_equal(ghost.running_var, bn.running_var)


# -- frozen_batch_norm --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "axis"), [((4, 3, 5, 5), 1), ((4, 5, 5, 3), -1), ((6, 3), 1)])
def test_frozen_batch_norm_is_torchvision_formula(shape, axis, dtype):
    rng = np.random.default_rng(7)
    trained = BatchNorm(3, dtype=dtype, channel_axis=axis)
    for _ in range(3):
        trained.forward((rng.standard_normal(shape) * 3 + 1).astype(dtype))
    _set_affine(trained)
    frozen = bnsgd_numba.create_normalization(
        "frozen_batch_norm", 3, dtype=dtype, channel_axis=axis
    )
    frozen.load_state_dict(trained.state_dict())  # num_batches_tracked is ignored
    w, b = trained.weight.astype(np.float64), trained.bias.astype(np.float64)
    rm, rv = trained.running_mean.astype(np.float64), trained.running_var.astype(np.float64)
    scale = w / np.sqrt(rv + frozen.eps)
    shift = b - rm * scale
    view = [1] * len(shape)
    view[axis] = 3
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    expected = x.astype(np.float64) * scale.reshape(view) + shift.reshape(view)
    unit = float(np.finfo(dtype).eps)
    before = frozen.state_dict()
    for training in (True, False):
        y = frozen.forward(x, training=training)
        assert y.dtype == dtype
        np.testing.assert_allclose(y, expected, rtol=0, atol=8 * unit * np.abs(expected).max())
        dx = frozen.backward(dy)
        np.testing.assert_allclose(
            dx, dy * scale.reshape(view), rtol=0, atol=4 * unit * np.abs(dy).max()
        )
    for key, value in frozen.state_dict().items():
        np.testing.assert_array_equal(value, before[key])  # nothing is trained or tracked
    assert frozen.parameters() == []


def test_frozen_batch_norm_gradient_sums_for_inspection():
    rng = np.random.default_rng(8)
    frozen = bnsgd_numba.create_normalization("frozen_batch_norm", 3, dtype=np.float64)
    frozen.running_mean[...] = [1.0, -2.0, 0.5]
    frozen.running_var[...] = [4.0, 0.25, 1.0]
    x = rng.standard_normal((5, 3, 2))
    dy = rng.standard_normal(x.shape)
    frozen.forward(x)
    frozen.backward(dy)
    x_hat = (x - frozen.running_mean.reshape(1, 3, 1)) / np.sqrt(
        frozen.running_var.reshape(1, 3, 1) + frozen.eps
    )
    np.testing.assert_allclose(frozen.grad_weight, (dy * x_hat).sum(axis=(0, 2)), rtol=1e-13)
    np.testing.assert_allclose(frozen.grad_bias, dy.sum(axis=(0, 2)), rtol=1e-13)
