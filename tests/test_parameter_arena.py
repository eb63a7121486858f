"""ParameterArena: layout of the views, construction, errors."""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba as bn
from bnsgd_numba.sgd.arena import work_items


def test_views_lie_one_after_another_in_two_contiguous_buffers():
    arena = bn.ParameterArena([(2, 3), 4, (), (0, 5), (1, 2, 2)])
    assert arena.shapes == ((2, 3), (4,), (), (0, 5), (1, 2, 2))
    assert arena.sizes == (6, 4, 1, 0, 4)
    assert arena.offsets == (0, 6, 10, 11, 11)
    assert arena.size == 15 and len(arena) == 5
    assert arena.flat_params.shape == (15,) and arena.flat_grads.shape == (15,)
    assert arena.flat_params.flags.c_contiguous and arena.flat_grads.flags.c_contiguous
    for flat, views in ((arena.flat_params, arena.params), (arena.flat_grads, arena.grads)):
        for view, shape, offset in zip(views, arena.shapes, arena.offsets, strict=True):
            assert view.shape == shape and view.dtype == np.float32
            assert view.flags.c_contiguous and view.flags.writeable
            if view.size:
                assert np.shares_memory(view, flat)
                assert view.__array_interface__["data"][0] == (
                    flat.__array_interface__["data"][0] + offset * flat.itemsize
                )
    arena.params[1][...] = [1, 2, 3, 4]
    np.testing.assert_array_equal(arena.flat_params[6:10], [1, 2, 3, 4])
    assert not np.shares_memory(arena.flat_params, arena.flat_grads)


def test_parameters_and_gradients_start_at_zero_and_zero_grad_clears():
    arena = bn.ParameterArena([(3,), (2, 2)], dtype=np.float64)
    assert arena.dtype == np.float64
    assert not arena.flat_params.any() and not arena.flat_grads.any()
    arena.grads[0][...] = 5.0
    arena.params[1][...] = 2.0
    arena.zero_grad()
    assert not arena.flat_grads.any()
    np.testing.assert_array_equal(arena.params[1], 2.0)


def test_from_arrays_copies_values_and_takes_the_first_dtype():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    b = np.array([7.0, 8.0])
    arena = bn.ParameterArena.from_arrays([a, b])
    assert arena.dtype == np.float64
    np.testing.assert_array_equal(arena.params[0], a)
    np.testing.assert_array_equal(arena.params[1], b)
    arena.params[0][0, 0] = -1
    assert a[0, 0] == 0
    assert bn.ParameterArena.from_arrays([a], dtype=np.float32).dtype == np.float32


def test_work_items_split_each_tensor_from_its_own_start():
    starts, stops = work_items([5, 0, 3], [0, 5, 5], 2)
    np.testing.assert_array_equal(starts, [0, 2, 4, 5, 7])
    np.testing.assert_array_equal(stops, [2, 4, 5, 7, 8])
    arena = bn.ParameterArena([5, 0, 3])
    items = arena.work_items(2)
    np.testing.assert_array_equal(items[0], starts)
    assert arena.work_items(2) is items


@pytest.mark.parametrize(
    ("shapes", "dtype", "error", "fragment"),
    [
        ([(2, -1)], np.float32, ValueError, r"shapes\[0\]: shape \(2, -1\) has a negative"),
        ([(2,), (1.5,)], np.float32, TypeError, r"shapes\[1\]"),
        ([(2,), "ab"], np.float32, TypeError, r"shapes\[1\]"),
        ([(2,), None], np.float32, TypeError, r"shapes\[1\]"),
        (3, np.float32, TypeError, "shapes"),
        ([(2,)], np.int32, TypeError, "dtype: int32"),
        ([(2,)], np.float16, TypeError, "dtype: float16"),
        ([(2,)], "not a dtype", TypeError, "dtype"),
    ],
)
def test_bad_shapes_or_dtype_raise_naming_the_argument(shapes, dtype, error, fragment):
    with pytest.raises(error, match=fragment):
        bn.ParameterArena(shapes, dtype=dtype)


def test_views_of_a_buffer_of_the_wrong_size_are_rejected():
    arena = bn.ParameterArena([(2,), (3,)])
    with pytest.raises(ValueError, match=r"flat: shape \(4,\) is not \(5,\)"):
        arena.views(np.zeros(4, np.float32))
