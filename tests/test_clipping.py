"""clip_grad_norm and clip_grad_value against PyTorch and an exact float64 reference."""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bnsgd_numba as bn
from bnsgd_numba import config
from tests import naive_sgd

DTYPES = [np.float32, np.float64]
SHAPES = [(3, 4), (7,), (), (config.CPU_ITEM_ELEMENTS * 2 + 5,), (config.CPU_SERIAL_BELOW + 9,)]
NORM_TYPES = [2.0, 1.0, math.inf, 3.0, 0.5]


@pytest.fixture(scope="module", autouse=True)
def warm_clipping_kernels():
    for dtype in DTYPES:
        for size in (5, config.CPU_SERIAL_BELOW + 5):
            for norm_type in NORM_TYPES:
                bn.clip_grad_norm([np.ones(size, dtype)], 1.0, norm_type)
            bn.clip_grad_value([np.ones(size, dtype)], 0.5)


def _grads(rng, dtype, shapes=SHAPES, scale=1.0):
    return [np.asarray(scale * rng.standard_normal(shape), dtype=dtype) for shape in shapes]


def _torch_params(grads):
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype))
        p.grad = torch.tensor(g.copy())
        params.append(p)
    return params


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_clip_grad_norm_matches_torch_and_the_exact_norm(norm_type, dtype):
    rng = np.random.default_rng(1)
    grads = _grads(rng, dtype)
    exact = naive_sgd.naive_total_norm(grads, norm_type)
    max_norm = exact / 3  # the case must clip
    params = _torch_params(grads)
    torch_total = float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type))
    expected = [g.astype(np.float64) * (max_norm / (exact + 1e-6)) for g in grads]
    total = bn.clip_grad_norm(grads, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    # float64 accumulation: within a few float64 ulps of the exact value
    # (the power and root of a p-norm cost a few more).
    assert total == pytest.approx(exact, rel=float(64 * np.finfo(np.float64).eps))
    # torch accumulates float32 in float32: its error grows with the length
    # (one tensor is above CPU_SERIAL_BELOW), so it is allowed on top
    torch_error = abs(torch_total - exact) / exact
    assert total == pytest.approx(torch_total, rel=float(32 * np.finfo(dtype).eps) + torch_error)
    eps = np.finfo(dtype).eps
    for g, p, e in zip(grads, params, expected, strict=True):
        assert g.dtype == dtype
        # our coefficient carries the total's error and one rounding, the
        # product another rounding (and the reference its own)
        coef_error = abs(total - exact) / exact
        np.testing.assert_allclose(g, e, rtol=4 * eps + coef_error, atol=0)
        # torch's differs as much as its total norm does
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=40 * eps + torch_error, atol=0)


def test_no_clipping_below_max_norm_leaves_gradients_bitwise():
    rng = np.random.default_rng(2)
    grads = _grads(rng, np.float32, [(5,), (3, 3)], scale=0.01)
    before = [g.copy() for g in grads]
    total = bn.clip_grad_norm(grads, 10.0)
    assert total < 10.0
    for g, b in zip(grads, before, strict=True):
        assert g.tobytes() == b.tobytes()


def test_arena_and_list_of_its_views_give_the_same_bits():
    rng = np.random.default_rng(3)
    values = _grads(rng, np.float32)
    for norm_type in NORM_TYPES:
        arena = bn.ParameterArena([v.shape for v in values])
        for view, v in zip(arena.grads, values, strict=True):
            view[...] = v
        listed = [v.copy() for v in values]
        total_arena = bn.clip_grad_norm(arena, 1.0, norm_type)
        total_list = bn.clip_grad_norm(listed, 1.0, norm_type)
        assert total_arena == total_list
        for view, g in zip(arena.grads, listed, strict=True):
            assert view.tobytes() == g.tobytes()


def test_total_norm_is_bitwise_independent_of_thread_count():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    rng = np.random.default_rng(4)
    values = _grads(rng, np.float32, [(300_001,), (5,), (70_000,)])
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            grads = [v.copy() for v in values]
            totals = [bn.clip_grad_norm(grads, 1.0, t) for t in (2.0, 1.0, math.inf, 3.0)]
            results.append((totals, b"".join(g.tobytes() for g in grads)))
    finally:
        numba.set_num_threads(previous)
    assert results[0] == results[1]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_total_raises_on_request_and_modifies_nothing(bad):
    grads = [np.ones(4, np.float32), np.array([1.0, bad], np.float32)]
    before = [g.copy() for g in grads]
    with pytest.raises(RuntimeError, match="non-finite"):
        bn.clip_grad_norm(grads, 1.0, error_if_nonfinite=True)
    for g, b in zip(grads, before, strict=True):
        np.testing.assert_array_equal(g, b)


def test_nonfinite_total_without_error_scales_as_torch():
    for bad in (np.nan, np.inf):
        grads = [np.ones(4, np.float32), np.array([1.0, bad], np.float32)]
        params = _torch_params(grads)
        torch_total = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        total = bn.clip_grad_norm(grads, 1.0)
        assert (math.isnan(total) and math.isnan(torch_total)) or total == torch_total
        for g, p in zip(grads, params, strict=True):
            np.testing.assert_array_equal(g, p.grad.numpy())


def test_nan_in_one_tensor_is_found_with_inf_norm():
    grads = [np.ones(3, np.float64), np.array([np.nan, 100.0, 1.0])]
    assert math.isnan(bn.clip_grad_norm(grads, 1.0, norm_type="inf"))


def test_none_entries_and_single_arrays_are_accepted():
    g = np.full(4, 3.0)
    assert bn.clip_grad_norm([None, g, None], 3.0) == 6.0
    np.testing.assert_allclose(g, 1.5, rtol=1e-6)
    single = np.full(4, 3.0)
    assert bn.clip_grad_norm(single, 3.0) == 6.0
    assert bn.clip_grad_norm([], 1.0) == 0.0
    np.testing.assert_allclose(single, 1.5, rtol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    grads=st.lists(
        hnp.arrays(
            np.float32,
            st.integers(0, 30),
            elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False),
        ),
        min_size=1,
        max_size=4,
    ),
    max_norm=st.floats(1e-3, 1e3),
    norm_type=st.sampled_from([2.0, 1.0, math.inf, 3.0]),
)
@example(grads=[np.array([1e6, -1e6], np.float32)], max_norm=1e-3, norm_type=2.0)
def test_clipping_leaves_the_total_norm_at_most_max_norm(grads, max_norm, norm_type):
    exact = naive_sgd.naive_total_norm(grads, norm_type)
    total = bn.clip_grad_norm(grads, max_norm, norm_type)
    assert total == pytest.approx(exact, rel=1e-12)
    after = naive_sgd.naive_total_norm(grads, norm_type)
    # Scaling by a float32 coefficient rounds each element (relative eps/2
    # each, plus the coefficient's own rounding): allow 2 float32 eps.
    assert after <= max_norm * (1 + 2 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_clip_grad_value_matches_torch_nan_included(dtype):
    rng = np.random.default_rng(5)
    grads = _grads(rng, dtype, [(5, 7), (config.CPU_SERIAL_BELOW + 3,)], scale=3.0)
    grads[0][0, 0] = np.nan
    grads[0][0, 1] = -np.inf
    params = _torch_params(grads)
    torch.nn.utils.clip_grad_value_(params, 0.7)
    assert bn.clip_grad_value(grads, 0.7) is None
    for g, p in zip(grads, params, strict=True):
        np.testing.assert_array_equal(g, p.grad.numpy())
    assert np.nanmax(np.abs(grads[1])) == np.asarray(0.7, dtype)


def test_clip_grad_value_on_an_arena():
    arena = bn.ParameterArena([(3,), (2,)])
    arena.flat_grads[...] = [-5, 0.5, 5, 2, -0.1]
    bn.clip_grad_value(arena, 1.0)
    np.testing.assert_array_equal(arena.flat_grads, np.float32([-1, 0.5, 1, 1, -0.1]))


BAD_CALLS = {
    "negative max_norm": (lambda g: bn.clip_grad_norm(g, -1.0), ValueError, "max_norm"),
    "nan max_norm": (lambda g: bn.clip_grad_norm(g, float("nan")), ValueError, "max_norm"),
    "zero norm_type": (lambda g: bn.clip_grad_norm(g, 1.0, 0), ValueError, "norm_type"),
    "word norm_type": (lambda g: bn.clip_grad_norm(g, 1.0, "fro"), TypeError, "norm_type"),
    "bad flag": (
        lambda g: bn.clip_grad_norm(g, 1.0, error_if_nonfinite="no"),
        TypeError,
        "error_if_nonfinite",
    ),
    "integer grad": (
        lambda g: bn.clip_grad_norm([g[0], g[1].astype(np.int64)], 0.1),
        TypeError,
        r"grads\[1\]: dtype int64",
    ),
    "list in list": (lambda g: bn.clip_grad_norm([g[0], [1.0]], 0.1), TypeError, r"grads\[1\]"),
    "not a sequence": (lambda g: bn.clip_grad_norm(3, 0.1), TypeError, "grads"),
    "negative clip_value": (lambda g: bn.clip_grad_value(g, -1.0), ValueError, "clip_value"),
    "string clip_value": (lambda g: bn.clip_grad_value(g, "1"), TypeError, "clip_value"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_and_modifies_nothing(case):
    call, error, fragment = BAD_CALLS[case]
    grads = [np.full(3, 10.0, np.float32), np.full((2, 2), -10.0, np.float32)]
    with pytest.raises(error, match=fragment):
        call(grads)
    np.testing.assert_array_equal(grads[0], 10.0)
    np.testing.assert_array_equal(grads[1], -10.0)


def test_read_only_gradient_is_rejected_before_any_is_scaled():
    frozen = np.full(3, 10.0, np.float32)
    frozen.flags.writeable = False
    first = np.full(3, 10.0, np.float32)
    with pytest.raises(ValueError, match=r"grads\[1\]: array is not writable"):
        bn.clip_grad_norm([first, frozen], 1.0)
    np.testing.assert_array_equal(first, 10.0)
