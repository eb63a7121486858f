"""LayerNorm, GroupNorm, InstanceNorm and RMSNorm against PyTorch (the oracle).

Forward, backward (autograd) and running statistics. float64 agrees to a
few ulps; float32 is compared with PyTorch in float64 on the same float32
inputs, within a tolerance in units of float32's eps scaled by the
condition |mean| / std of the data.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba

torch = pytest.importorskip("torch")

EPS32 = float(np.finfo(np.float32).eps)


def _data(shape, dtype, rng, offset=0.0):
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy


def _randomize(layer, module, rng):
    """Give both layers the same random affine parameters."""
    for name in ("weight", "bias"):
        ours = getattr(layer, name, None)
        theirs = getattr(module, name, None)
        assert (ours is None) == (theirs is None), name
        if ours is not None:
            ours[...] = rng.uniform(0.5, 1.5, ours.shape)
            with torch.no_grad():
                theirs.copy_(torch.from_numpy(ours.astype(np.float64)))


def _torch_pass(module, x, dy, to_torch=lambda t: t, from_torch=lambda t: t):
    xt = to_torch(torch.from_numpy(x.astype(np.float64))).requires_grad_()
    yt = module(xt)
    yt.backward(to_torch(torch.from_numpy(dy.astype(np.float64))))
    return (
        from_torch(yt.detach()).numpy(),
        from_torch(xt.grad).numpy(),
        {name: p.grad.numpy() for name, p in module.named_parameters()},
    )


def _tolerance(x, dtype, axes_kept_mean):
    if np.dtype(dtype) == np.float64:
        return 1e-12
    return 64 * EPS32 * (1.0 + axes_kept_mean)


def _compare(layer, module, x, dy, *, tol, to_torch=lambda t: t, from_torch=lambda t: t):
    y_ref, dx_ref, grads_ref = _torch_pass(module, x, dy, to_torch, from_torch)
    y = layer.forward(x)
    dx = layer.backward(dy)
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    scale_y = max(1.0, np.abs(y_ref).max())
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=tol * scale_y)
    scale_dx = max(1.0, np.abs(dx_ref).max())
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=tol * scale_dx * 4)
    for name, ref in grads_ref.items():
        ours = getattr(layer, f"grad_{name}")
        np.testing.assert_allclose(ours, ref, rtol=0, atol=tol * max(1.0, np.abs(ref).max()) * 4)


# -- LayerNorm ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("shape", "normalized_shape", "kwargs"),
    [
        ((4, 6, 5), (5,), {}),
        ((3, 4, 5), (4, 5), {}),
        ((7, 33), 33, {"elementwise_affine": False}),
        ((2, 3, 40), (40,), {"bias": False, "eps": 1e-3}),
        ((600, 64), (64,), {}),  # large enough for the parallel builds
    ],
)
def test_layer_norm_matches_torch(shape, normalized_shape, kwargs, dtype):
    rng = np.random.default_rng(0)
    layer = bnsgd_numba.create_normalization("layer_norm", normalized_shape, dtype=dtype, **kwargs)
    module = torch.nn.LayerNorm(normalized_shape, dtype=torch.float64, **kwargs)
    _randomize(layer, module, rng)
    x, dy = _data(shape, dtype, rng, offset=10.0)
    _compare(layer, module, x, dy, tol=_tolerance(x, dtype, 10.0))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_layer_norm_over_a_channel_axis_is_torch_layer_norm_on_moved_axis(dtype):
    rng = np.random.default_rng(1)
    layer = bnsgd_numba.create_normalization("layer_norm", 6, channel_axis=1, dtype=dtype)
    module = torch.nn.LayerNorm(6, dtype=torch.float64)
    _randomize(layer, module, rng)
    x, dy = _data((3, 6, 4, 5), dtype, rng)
    _compare(
        layer, module, x, dy, tol=_tolerance(x, dtype, 0.0),
        to_torch=lambda t: t.movedim(1, -1), from_torch=lambda t: t.movedim(-1, 1),
    )  # fmt: skip


# -- RMSNorm --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("shape", "normalized_shape", "kwargs"),
    [
        ((4, 6, 5), (5,), {}),
        ((3, 4, 5), (4, 5), {"eps": 1e-3}),
        ((7, 33), 33, {"elementwise_affine": False}),
        ((600, 64), (64,), {}),
    ],
)
def test_rms_norm_matches_torch(shape, normalized_shape, kwargs, dtype):
    rng = np.random.default_rng(2)
    layer = bnsgd_numba.create_normalization("rms_norm", normalized_shape, dtype=dtype, **kwargs)
    # PyTorch's default eps is the eps of the input dtype: give it ours explicitly,
    # since the oracle runs in float64
    eps = kwargs.get("eps", float(np.finfo(dtype).eps))
    torch_kwargs = {**kwargs, "eps": eps}
    module = torch.nn.RMSNorm(normalized_shape, dtype=torch.float64, **torch_kwargs)
    _randomize(layer, module, rng)
    x, dy = _data(shape, dtype, rng, offset=1.0)
    _compare(layer, module, x, dy, tol=_tolerance(x, dtype, 0.0))


def test_rms_norm_default_eps_is_the_dtype_eps_as_in_torch():
    x = np.full((2, 4), 1e-5, dtype=np.float32)
    layer = bnsgd_numba.create_normalization("rms_norm", 4, dtype=np.float32)
    expected = torch.nn.RMSNorm(4)(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(layer.forward(x), expected, rtol=4 * EPS32)


# -- GroupNorm ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("shape", "groups", "kwargs"),
    [
        ((4, 6, 5), 1, {}),
        ((4, 6, 5), 2, {}),
        ((2, 6, 3, 4), 3, {"eps": 1e-3}),
        ((3, 6, 7), 6, {"affine": False}),
        ((5, 4), 2, {}),
        ((4, 64, 24, 24), 8, {}),  # parallel builds, two statistics blocks per row
    ],
)
def test_group_norm_matches_torch(shape, groups, kwargs, dtype):
    rng = np.random.default_rng(3)
    channels = shape[1]
    layer = bnsgd_numba.create_normalization("group_norm", groups, channels, dtype=dtype, **kwargs)
    module = torch.nn.GroupNorm(groups, channels, dtype=torch.float64, **kwargs)
    _randomize(layer, module, rng)
    x, dy = _data(shape, dtype, rng, offset=10.0)
    _compare(layer, module, x, dy, tol=_tolerance(x, dtype, 10.0))


def test_group_norm_channels_last_matches_channels_first():
    rng = np.random.default_rng(4)
    x, dy = _data((2, 6, 3, 4), np.float64, rng)
    first = bnsgd_numba.create_normalization("group_norm", 6, num_groups=3, dtype=np.float64)
    last = bnsgd_numba.create_normalization(
        "group_norm", 6, num_groups=3, channel_axis=-1, dtype=np.float64
    )
    for layer in (first, last):
        layer.weight[...] = np.arange(1.0, 7.0)
        layer.bias[...] = np.arange(6.0)
    y = first.forward(x)
    y_last = last.forward(np.moveaxis(x, 1, -1).copy())
    np.testing.assert_array_equal(np.moveaxis(y_last, -1, 1), y)
    dx = first.backward(dy)
    dx_last = last.backward(np.moveaxis(dy, 1, -1).copy())
    np.testing.assert_array_equal(np.moveaxis(dx_last, -1, 1), dx)
    np.testing.assert_array_equal(first.grad_weight, last.grad_weight)


def test_group_norm_factory_takes_torch_order_and_the_kit_order():
    a = bnsgd_numba.create_normalization("group_norm", 2, 6)
    b = bnsgd_numba.create_normalization("group_norm", 6, num_groups=2)
    assert (a.num_groups, a.num_channels) == (b.num_groups, b.num_channels) == (2, 6)


# -- InstanceNorm ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((4, 3, 10), {}),
        ((2, 3, 4, 5), {"affine": True}),
        ((2, 3, 2, 3, 4), {"affine": True, "eps": 1e-3}),
        ((8, 16, 30, 30), {"affine": True}),
    ],
)
def test_instance_norm_matches_torch(shape, kwargs, dtype):
    rng = np.random.default_rng(5)
    cls = {3: torch.nn.InstanceNorm1d, 4: torch.nn.InstanceNorm2d, 5: torch.nn.InstanceNorm3d}
    layer = bnsgd_numba.create_normalization("instance_norm", shape[1], dtype=dtype, **kwargs)
    module = cls[len(shape)](shape[1], dtype=torch.float64, **kwargs)
    _randomize(layer, module, rng)
    x, dy = _data(shape, dtype, rng, offset=10.0)
    _compare(layer, module, x, dy, tol=_tolerance(x, dtype, 10.0))


def test_instance_norm_running_statistics_and_eval_match_torch():
    rng = np.random.default_rng(6)
    kwargs = {"affine": True, "track_running_stats": True}
    layer = bnsgd_numba.create_normalization("instance_norm", 3, dtype=np.float64, **kwargs)
    module = torch.nn.InstanceNorm2d(3, dtype=torch.float64, **kwargs)
    _randomize(layer, module, rng)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 5, 6)) * 3 + 2
        layer.forward(x, training=True)
        module.train()(torch.from_numpy(x))
    np.testing.assert_allclose(layer.running_mean, module.running_mean.numpy(), rtol=1e-13)
    np.testing.assert_allclose(layer.running_var, module.running_var.numpy(), rtol=1e-13)
    # PyTorch's InstanceNorm leaves num_batches_tracked at 0; ours counts, as BatchNorm
    assert layer.num_batches_tracked == 3
    module.eval()
    x, dy = _data((2, 3, 5, 6), np.float64, rng)
    xt = torch.from_numpy(x).requires_grad_()
    yt = module(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.forward(x, training=False), yt.detach().numpy(), atol=1e-13)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), atol=1e-13)
    np.testing.assert_allclose(layer.grad_weight, module.weight.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(layer.grad_bias, module.bias.grad.numpy(), atol=1e-12)


def test_instance_norm_eval_without_running_stats_uses_instance_statistics():
    rng = np.random.default_rng(7)
    layer = bnsgd_numba.create_normalization("instance_norm", 3, dtype=np.float64)
    x = rng.standard_normal((2, 3, 8))
    np.testing.assert_array_equal(layer.forward(x, training=False), layer.forward(x))


def test_instance_norm_cumulative_average_without_momentum():
    # PyTorch's InstanceNorm turns momentum=None into 0 (no update at all);
    # ours averages cumulatively, as BatchNorm does
    rng = np.random.default_rng(8)
    layer = bnsgd_numba.create_normalization(
        "instance_norm", 2, track_running_stats=True, momentum=None, dtype=np.float64
    )
    batches = [rng.standard_normal((3, 2, 7)) * (k + 1) + k for k in range(4)]
    for x in batches:
        layer.forward(x)
    means = [x.mean(axis=2).mean(axis=0) for x in batches]
    variances = [x.var(axis=2, ddof=1).mean(axis=0) for x in batches]
    np.testing.assert_allclose(layer.running_mean, np.mean(means, axis=0), rtol=1e-13)
    np.testing.assert_allclose(layer.running_var, np.mean(variances, axis=0), rtol=1e-13)
