"""Bad input the adversarial probe's classes still let through, named before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import bnsgd_numba as bn


def test_a_written_array_whose_elements_share_memory_is_rejected_like_pytorch():
    base = np.zeros(1, np.float32)
    param = as_strided(base, shape=(5,), strides=(0,))
    with pytest.raises(ValueError, match="param has elements that share one memory location"):
        bn.sgd_step(param, np.ones(5, np.float32), lr=0.5)
    assert base[0] == 0
    buffer = as_strided(np.zeros(1, np.float32), shape=(5,), strides=(0,))
    with pytest.raises(ValueError, match="momentum_buffer has elements that share"):
        bn.sgd_step(np.zeros(5, np.float32), np.ones(5, np.float32), buffer, lr=0.5, momentum=0.9)


def test_a_broadcast_size_one_axis_is_not_an_overlap():
    param = np.zeros((1, 5), np.float32)
    bn.sgd_step(param[:, :], np.ones((1, 5), np.float32), lr=0.5)
    np.testing.assert_array_equal(param, -0.5)


@pytest.mark.parametrize("axis", [True, np.True_])
def test_a_bool_channel_axis_is_a_type_error(axis):
    running_mean = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match="channel_axis must be an integer, got bool"):
        bn.batch_norm_forward(
            np.ones((4, 3), np.float32), None, None, running_mean, np.ones(3, np.float32),
            training=True, channel_axis=axis,
        )  # fmt: skip
    np.testing.assert_array_equal(running_mean, 0)


def test_arena_views_and_work_items_name_their_argument():
    arena = bn.ParameterArena([(3,)])
    with pytest.raises(TypeError, match="flat must be a NumPy array, got list"):
        arena.views([1, 2, 3])
    with pytest.raises(ValueError, match="chunk"):
        arena.work_items(0)
