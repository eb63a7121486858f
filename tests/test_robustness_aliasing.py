"""Arrays that share memory: every argument written in place must be apart from the others.

PyTorch raises on a partial overlap between what an in-place operation
writes and what it reads (``p.add_(p)`` is allowed, ``buf[1:].add_(buf[:-1])``
is not). The same rule holds here for ``sgd_step``, ``SGD``, the clipping
functions and the running statistics of ``batch_norm_forward``, and the
error names both arguments before anything is written.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bnsgd_numba as bn
from bnsgd_numba._core.arrays import check_apart, memory_owner

C = 3


def snapshot(*arrays):
    return [np.array(a, copy=True) for a in arrays]


def assert_unchanged(arrays, before):
    for array, old in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(array, old)


# --- the overlap test itself -------------------------------------------------


def test_owners_settle_the_common_case_and_unknown_owners_get_the_exact_test():
    a = np.zeros(8)
    assert memory_owner(a) is a and memory_owner(a[2:]) is a
    from_buffer = np.frombuffer(a.data, dtype=a.dtype)  # owner unknown to the fast test
    strided = np.lib.stride_tricks.as_strided(a, shape=(4,), strides=(16,))
    assert memory_owner(strided) is None
    with pytest.raises(ValueError, match="x and y are the same array in memory"):
        check_apart((("x", a),), (("y", from_buffer),))
    with pytest.raises(ValueError, match="x and y overlap in memory"):
        check_apart((("x", strided),), (("y", a[6:]),))
    check_apart((("x", strided),), (("y", a[1::2]),))  # interleaved: no common element
    check_apart((("x", a[:4]),), (("y", a[4:]), ("z", a[4:])))  # read arrays may overlap
    check_apart((("x", a[:0]),), (("y", a),))  # an empty array overlaps nothing


def test_many_views_of_one_buffer_are_told_apart_by_their_extents():
    flat = np.zeros(1000)
    views = [flat[k * 10 : (k + 1) * 10] for k in range(100)]
    check_apart([(f"v[{k}]", v) for k, v in enumerate(views)])
    with pytest.raises(ValueError, match=r"v\[41\] and w overlap"):
        check_apart([(f"v[{k}]", v) for k, v in enumerate(views)], (("w", flat[415:416]),))


# --- sgd_step ----------------------------------------------------------------


def test_sgd_step_partial_overlap_of_param_and_grad_raises_like_pytorch():
    buf = np.arange(20, dtype=np.float32)
    before = buf.copy()
    with pytest.raises(ValueError, match="param and grad overlap in memory"):
        bn.sgd_step(buf[1:], buf[:-1], lr=0.5)
    np.testing.assert_array_equal(buf, before)
    tensor = torch.arange(20, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="single memory location"):
        tensor[1:].add_(tensor[:-1], alpha=-0.5)
    # grad being param itself is allowed, as p.add_(p) is in PyTorch
    bn.sgd_step(buf, buf, lr=0.5)
    tensor.add_(tensor, alpha=-0.5)
    np.testing.assert_array_equal(buf, tensor.numpy())


@pytest.mark.parametrize("alias", ["param", "grad", "part of param"])
def test_sgd_step_momentum_buffer_overlapping_param_or_grad_raises(alias):
    backing = np.ones(10, np.float32)
    param = backing[:6]
    grad = np.full(6, 0.5, np.float32)
    buffer = {"param": param, "grad": grad, "part of param": backing[4:]}[alias]
    before = snapshot(backing, grad)
    with pytest.raises(ValueError, match="overlap|same array"):
        bn.sgd_step(param, grad, buffer, lr=0.1, momentum=0.9)
    assert_unchanged((backing, grad), before)
    # without momentum the buffer is neither read nor written: no conflict
    assert bn.sgd_step(param, grad, buffer, lr=0.5) is None
    np.testing.assert_array_equal(param, np.float32(0.75))


# --- SGD -----------------------------------------------------------------------


def test_the_same_array_twice_in_sgd_is_rejected_naming_both_indices():
    p = np.ones(3, np.float32)
    q = np.ones(2, np.float32)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[2\] are the same array"):
        bn.SGD([p, q, p], lr=0.1)
    backing = np.zeros(10)
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] overlap in memory"):
        bn.SGD([backing[:6], backing[4:]], lr=0.1)
    # views side by side are fine, and so are gradients in another buffer
    optimizer = bn.SGD([backing[:4], backing[4:9], backing[9:]], lr=0.5, momentum=0.9)
    grads = np.ones(10)
    optimizer.step([grads[:4], grads[4:9], grads[9:]])
    np.testing.assert_array_equal(backing, -0.5)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_grads_overlapping_another_parameter_raise_before_anything_is_written(momentum):
    p0 = np.ones(5, np.float32)
    p1 = np.ones(3, np.float32)
    optimizer = bn.SGD([p0, p1], lr=0.1, momentum=momentum)
    before = snapshot(p0, p1)
    with pytest.raises(ValueError, match=r"params\[0\] and grads\[1\] overlap"):
        optimizer.step([np.ones(5, np.float32), p0[1:4]])
    assert_unchanged((p0, p1), before)
    assert optimizer.momentum_buffers == (None, None) and optimizer.steps == 0
    optimizer.step([p0, np.ones(3, np.float32)])  # grads[i] is params[i]: allowed
    np.testing.assert_array_equal(p0, np.float32(0.9))


def test_sgd_grad_aliasing_a_momentum_buffer_raises():
    p = np.ones(4)
    optimizer = bn.SGD([p], lr=0.1, momentum=0.9)
    optimizer.step([np.ones(4)])
    buffer = optimizer.momentum_buffers[0]
    before = snapshot(p, buffer)
    with pytest.raises(ValueError, match=r"momentum_buffers\[0\] and grads\[0\] are the same"):
        optimizer.step([buffer])
    assert_unchanged((p, buffer), before)
    assert optimizer.steps == 1


# --- clipping ------------------------------------------------------------------


@pytest.mark.parametrize("clip", ["norm", "value"])
def test_clipping_a_gradient_listed_twice_is_rejected(clip):
    g = np.full(4, 3.0, np.float32)
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[2\] are the same array"):
        if clip == "norm":
            bn.clip_grad_norm([g, np.ones(2, np.float32), g], 1.0)
        else:
            bn.clip_grad_value([g, None, g], 1.0)
    np.testing.assert_array_equal(g, 3.0)


def test_a_gradient_listed_twice_among_many_is_rejected():
    # past a few arrays the owners are compared through a set, not pairwise
    grads = [np.full(3, 2.0, np.float32) for _ in range(20)]
    with pytest.raises(ValueError, match=r"grads\[4\] and grads\[17\] are the same array"):
        bn.clip_grad_norm([*grads[:17], grads[4], *grads[18:]], 1.0)
    np.testing.assert_array_equal(np.concatenate(grads), 2.0)
    bn.clip_grad_norm(grads, 1.0)
    np.testing.assert_allclose(
        np.concatenate(grads), 1.0 / np.sqrt(60.0), rtol=8 * np.finfo(np.float32).eps
    )


# --- batch_norm_forward ----------------------------------------------------------


def _bn_args():
    rng = np.random.default_rng(1)
    return {
        "x": rng.standard_normal((6, C, 4)).astype(np.float32),
        "weight": np.full(C, 2.0, np.float32),
        "bias": np.full(C, 0.5, np.float32),
        "running_mean": np.full(C, 0.25, np.float32),
        "running_var": np.full(C, 1.5, np.float32),
    }


def _aliased(case, args):
    backing = np.arange(8, dtype=np.float32)
    if case == "running_var is running_mean":
        return {"running_var": args["running_mean"]}, "running_mean and running_var are the same"
    if case == "running statistics overlap in part":
        return {"running_mean": backing[:3], "running_var": backing[2:5]}, (
            "running_mean and running_var overlap"
        )
    if case == "weight is running_mean":
        return {"weight": args["running_mean"]}, "running_mean and weight are the same"
    if case == "bias is running_var":
        return {"bias": args["running_var"]}, "running_var and bias are the same"
    if case == "running_mean is a view of x":
        return {"running_mean": args["x"][0, :, 0]}, "running_mean and x overlap"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "running_var is running_mean",
        "running statistics overlap in part",
        "weight is running_mean",
        "bias is running_var",
        "running_mean is a view of x",
    ],
)
def test_running_statistics_must_be_apart_from_every_other_argument(case):
    args = _bn_args()
    overrides, message = _aliased(case, args)
    args.update(overrides)
    arrays = list(args.values())
    before = snapshot(*arrays)
    with pytest.raises(ValueError, match=message):
        bn.batch_norm_forward(**args, training=True)
    assert_unchanged(arrays, before)
    # eval only reads the running statistics: aliases are harmless there
    y = bn.batch_norm_forward(**args, training=False).y
    x64 = {key: value.astype(np.float64) for key, value in args.items()}
    shape = (1, C, 1)
    expected = (x64["x"] - x64["running_mean"].reshape(shape)) / np.sqrt(
        x64["running_var"].reshape(shape) + 1e-5
    ) * x64["weight"].reshape(shape) + x64["bias"].reshape(shape)
    np.testing.assert_allclose(y, expected, rtol=0, atol=64 * np.finfo(np.float32).eps)


def test_running_statistics_side_by_side_in_one_buffer_are_fine_but_not_overlapping():
    args = _bn_args()
    state = np.zeros(2 * C + 1, np.float32)
    state[C:] = 1.0
    with pytest.raises(ValueError, match="running_mean and running_var overlap"):
        bn.batch_norm_forward(
            **{**args, "running_mean": state[:C], "running_var": state[2 : 2 + C]}, training=True
        )
    args["running_mean"], args["running_var"] = state[:C], state[C : 2 * C]
    bn.batch_norm_forward(**args, training=True)
    assert np.all(state[:C] != 0.0)
