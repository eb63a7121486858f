"""The arena's and the optimizer's state cannot be corrupted from outside, and a failed step writes nothing.

- An arena's buffers, views and layout cannot be rebound (a step once read
  past the end of a rebound ``flat_grads``), and changes made to the
  buffers in place (read-only, reshaped) are caught at every use; momentum
  buffers are handed out as views.
- ``SGD``'s parameters, arena, buffers and counters are read-only.
- A parameter made read-only after ``SGD(...)`` was built: the step raises
  before it writes anything, and no momentum buffer is left uninitialised.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba as bn

SHAPES = [(1000,), (100, 10)]


def test_rebinding_an_arena_attribute_is_an_error_and_steps_stay_in_bounds():
    arena = bn.ParameterArena([(100_000,)])
    optimizer = bn.SGD(arena, lr=1.0)
    flat_grads = arena.flat_grads
    for name in (
        "flat_grads", "flat_params", "params", "grads", "size", "sizes", "offsets", "shapes",
        "dtype",
    ):  # fmt: skip
        with pytest.raises(AttributeError, match=f"ParameterArena.{name} cannot be rebound"):
            setattr(arena, name, np.ones(10, np.float32))
    with pytest.raises(TypeError):
        arena.params[0] = np.ones(3, np.float32)  # a tuple: its views stay the arena's
    assert arena.flat_grads is flat_grads
    optimizer.step()
    np.testing.assert_array_equal(arena.flat_params, 0.0)


@pytest.mark.parametrize("list_form", [False, True])
def test_a_parameter_made_read_only_after_sgd_was_built_fails_before_any_write(list_form):
    arena = bn.ParameterArena(SHAPES)
    arena.flat_grads[...] = 1.0
    if list_form:
        params = [np.ones(s, np.float32) for s in SHAPES]
        optimizer = bn.SGD(params, lr=0.1, momentum=0.9)
        grads = [np.ones(s, np.float32) for s in SHAPES]
        params[1].flags.writeable = False
        step, message = (lambda: optimizer.step(grads)), r"params\[1\]: array is not writable"
    else:
        params = [arena.flat_params]
        optimizer = bn.SGD(arena, lr=0.1, momentum=0.9)
        arena.flat_params.flags.writeable = False
        step, message = optimizer.step, "arena.flat_params: array is not writable"
    before = [p.copy() for p in params]
    for _ in range(2):
        with pytest.raises(ValueError, match=message):
            step()
        for param, old in zip(params, before, strict=True):
            np.testing.assert_array_equal(param, old)
        assert optimizer.momentum_buffers == (None, None)
        assert optimizer.steps == 0
    params[-1].flags.writeable = True
    optimizer.step(grads) if list_form else optimizer.step()
    for buffer in optimizer.momentum_buffers:
        np.testing.assert_array_equal(buffer, 1.0)  # the first step's buffer is the gradient
    for param, old in zip(params, before, strict=True):
        np.testing.assert_array_equal(param, old - np.float32(0.1))


def test_buffers_changed_in_place_are_caught_before_a_step():
    arena = bn.ParameterArena(SHAPES)
    optimizer = bn.SGD(arena, lr=0.1, momentum=0.9)
    optimizer.step()
    arena.flat_grads.shape = (10, 200)
    with pytest.raises(ValueError, match=r"arena.flat_grads: shape \(10, 200\) is no longer"):
        optimizer.step()
    with pytest.raises(ValueError, match="arena.flat_grads: shape"):
        bn.clip_grad_norm(arena, 1.0)
    arena.flat_grads.shape = (2000,)
    arena.flat_params.dtype = np.int32
    with pytest.raises(TypeError, match="arena.flat_params: dtype int32 is no longer"):
        optimizer.step()
    arena.flat_params.dtype = np.float32
    view = optimizer.momentum_buffers[0]
    view.flags.writeable = False  # a view's flags: the step still writes the buffer
    optimizer.step()
    assert optimizer.steps == 2


def _own_buffer(view):
    # the optimizer's buffer behind a view momentum_buffers handed out
    return view if view.base is None else view.base


@pytest.mark.parametrize("change", ["read-only", "reshaped"])
def test_the_arena_momentum_buffer_changed_in_place_through_base_is_caught(change):
    arena = bn.ParameterArena(SHAPES)
    arena.flat_grads[...] = 1.0
    optimizer = bn.SGD(arena, lr=0.1, momentum=0.9)
    optimizer.step()
    owner = _own_buffer(optimizer.momentum_buffers[0])
    before = (arena.flat_params.copy(), owner.copy())
    if change == "read-only":
        owner.flags.writeable = False
        message = "momentum_buffers: the optimizer's buffer was made read-only"
    else:
        owner.shape = (20, 100)
        message = r"momentum_buffers: the optimizer's buffer, \(20, 100\) float32, no longer"
    with pytest.raises(ValueError, match=message):
        optimizer.step()
    np.testing.assert_array_equal(arena.flat_params, before[0])
    np.testing.assert_array_equal(owner.reshape(-1), before[1])
    assert optimizer.steps == 1


def test_a_list_momentum_buffer_made_read_only_through_base_fails_before_any_write():
    params = [np.ones(6), np.ones(4)]
    optimizer = bn.SGD(params, lr=0.1, momentum=0.9)
    grads = [np.ones(6), np.ones(4)]
    optimizer.step(grads)
    _own_buffer(optimizer.momentum_buffers[1]).flags.writeable = False
    before = [p.copy() for p in params]
    with pytest.raises(ValueError, match=r"momentum_buffers\[1\]: the optimizer's buffer was made"):
        optimizer.step(grads)
    for param, old in zip(params, before, strict=True):
        np.testing.assert_array_equal(param, old)
    assert optimizer.steps == 1


def test_momentum_buffers_are_handed_out_as_views_and_parameters_checked_at_every_step():
    params = [np.ones(6), np.ones(4)]
    optimizer = bn.SGD(params, lr=0.1, momentum=0.9)
    grads = [np.ones(6), np.ones(4)]
    optimizer.step(grads)
    view = optimizer.momentum_buffers[0]
    view.shape = (2, 3)  # the metadata of the view handed out, not of the buffer
    view.flags.writeable = False
    optimizer.momentum_buffers[1][...] = 0.0  # values are shared
    optimizer.step(grads)
    np.testing.assert_allclose(params[0], 0.9 - 0.1 * (0.9 * 1.0 + 1.0), rtol=1e-15)
    np.testing.assert_allclose(params[1], 0.9 - 0.1 * 1.0, rtol=1e-15)
    before = [p.copy() for p in params]
    params[1].dtype = np.float32  # 4 float64 values seen as 8 float32 ones
    with pytest.raises(
        ValueError, match=r"momentum_buffers\[1\]: .* no longer matches params\[1\]"
    ):
        optimizer.step([np.ones(6), np.ones(8, np.float32)])
    params[1].dtype = np.float64
    for param, old in zip(params, before, strict=True):
        np.testing.assert_array_equal(param, old)
    assert optimizer.steps == 2


def test_sgd_attributes_are_read_only_but_hyperparameters_settable():
    params = [np.ones(3)]
    optimizer = bn.SGD(params, lr=0.1, momentum=0.9)
    for name in ("params", "arena", "momentum_buffers", "steps", "skipped_steps"):
        with pytest.raises(AttributeError):
            setattr(optimizer, name, None)
    assert isinstance(optimizer.params, tuple) and optimizer.params[0] is params[0]
    optimizer.lr = 0.5
    assert optimizer.lr == 0.5


def test_load_state_dict_errors_name_the_argument_and_load_nothing():
    optimizer = bn.SGD([np.ones(3)], lr=0.1, momentum=0.9)
    optimizer.step([np.ones(3)])
    before = optimizer.state_dict()
    for state in (None, [], "state", 3):
        with pytest.raises(TypeError, match="state_dict: expected a dict"):
            optimizer.load_state_dict(state)
    state = optimizer.state_dict()
    state["hyperparameters"] = {"lr": 0.2, 1: 0.0, (2,): 0.0}  # keys that do not sort together
    with pytest.raises(ValueError, match=r"unknown keys \(2,\), 1"):
        optimizer.load_state_dict(state)
    after = optimizer.state_dict()
    assert after["steps"] == before["steps"] == 1 and optimizer.lr == 0.1
    np.testing.assert_array_equal(after["momentum_buffers"][0], before["momentum_buffers"][0])


@pytest.mark.parametrize(
    ("shapes", "dtype", "message"),
    [
        ([(2**62, 4)], np.float32, r"shapes\[0\]: shape \(4611686018427387904, 4\) has"),
        ([(3,), (2**40, 2**30)], np.float32, r"shapes\[1\]: shape .* more than a float32"),
        ([(2**59,), (2**59,)], np.float64, r"shapes: the tensors hold 1152921504606846976"),
    ],
)
def test_an_arena_too_large_for_an_array_names_the_shape(shapes, dtype, message):
    with pytest.raises(ValueError, match=message):
        bn.ParameterArena(shapes, dtype=dtype)


@pytest.mark.parametrize(
    ("arrays", "error", "message"),
    [
        (
            [np.ones(2, np.float32), np.ones(3, np.complex64)],
            TypeError,
            r"arrays\[1\]: dtype complex64",
        ),
        ([np.ones(2), np.array(["a", "b"])], TypeError, r"arrays\[1\]: dtype <U1"),
        ([np.ones(2), [[1.0, 2.0], [3.0]]], ValueError, r"arrays\[1\]: not an array of numbers"),
        (5, TypeError, "arrays: expected a sequence of arrays, got int"),
    ],
)
def test_from_arrays_names_an_entry_it_cannot_copy_without_loss(arrays, error, message):
    with pytest.raises(error, match=message):
        bn.ParameterArena.from_arrays(arrays)
