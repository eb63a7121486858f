"""The SGD optimizer over lists and arenas: oracles, fusion, skipping, state, errors."""

from __future__ import annotations

import sys
import types

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bnsgd_numba as bn
from bnsgd_numba import config
from tests import naive_sgd

DTYPES = [np.float32, np.float64]
# One tensor above CPU_SERIAL_BELOW (parallel build), odd sizes for loop tails.
SHAPES = [(3, 5), (7,), (), (2, 3, 5), (config.CPU_SERIAL_BELOW + 1001,)]


@pytest.fixture(scope="module", autouse=True)
def warm_sgd_kernels():
    for dtype in DTYPES:
        arena = bn.ParameterArena([(config.CPU_SERIAL_BELOW + 3,), (4,)], dtype=dtype)
        for momentum in (0.0, 0.9):
            optimizer = bn.SGD(arena, lr=0.1, momentum=momentum)
            optimizer.step(skip_if_nonfinite=True)
            optimizer.step()
            listed = bn.SGD(list(arena.params), lr=0.1, momentum=momentum)
            listed.step(list(arena.grads), skip_if_nonfinite=True)


def _lr(step):
    return 0.1 / (1.0 + 0.37 * step)


def _random(rng, dtype, shapes=SHAPES):
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def _within(actual, expected, scale, dtype, ulps):
    eps = np.finfo(dtype).eps
    error = np.abs(np.asarray(actual, np.float64) - expected)
    return np.max(error / (ulps * eps * np.maximum(scale, np.finfo(dtype).tiny)), initial=0.0)


def _snapshot(optimizer):
    return (
        [p.copy() for p in optimizer.params],
        [None if b is None else b.copy() for b in optimizer.momentum_buffers],
        optimizer.hyperparameters,
        optimizer.steps,
        optimizer.skipped_steps,
    )


def _assert_unchanged(optimizer, snapshot):
    params, buffers, hyper, steps, skipped = snapshot
    for p, before in zip(optimizer.params, params, strict=True):
        assert p.tobytes() == before.tobytes()
    for b, before in zip(optimizer.momentum_buffers, buffers, strict=True):
        assert (b is None) == (before is None)
        if b is not None:
            assert b.tobytes() == before.tobytes()
    assert optimizer.hyperparameters == hyper
    assert (optimizer.steps, optimizer.skipped_steps) == (steps, skipped)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("options", naive_sgd.option_sets(), ids=naive_sgd.option_id)
def test_list_and_arena_agree_bitwise_and_match_both_oracles(options, dtype):
    rng = np.random.default_rng(11)
    start = _random(rng, dtype)
    listed_params = [p.copy() for p in start]
    listed = bn.SGD(listed_params, lr=_lr(0), **options)
    arena = bn.ParameterArena.from_arrays(start)
    fused = bn.SGD(arena, lr=_lr(0), **options)
    use_torch = not options["decoupled_weight_decay"]
    if use_torch:
        torch_params = [torch.tensor(p.copy(), requires_grad=True) for p in start]
        torch_options = {k: v for k, v in options.items() if k != "decoupled_weight_decay"}
        reference = torch.optim.SGD(torch_params, lr=_lr(0), foreach=False, **torch_options)
    naive_buffers = [None] * len(start)
    for step in range(12):
        grads = _random(rng, dtype)
        before = [p.copy() for p in listed_params]
        listed.lr = fused.lr = _lr(step)
        assert listed.step(grads) is True
        for view, grad in zip(arena.grads, grads, strict=True):
            view[...] = grad
        assert fused.step() is True
        for i, (param, view) in enumerate(zip(listed_params, arena.params, strict=True)):
            assert param.tobytes() == view.tobytes(), f"step {step}: params[{i}] differ"
            # per-step float64 reference from the same inputs
            kw = dict(lr=_lr(step), **options)
            expected, naive_buffers[i] = naive_sgd.naive_sgd_step(
                before[i], grads[i], naive_buffers[i], **kw
            )
            scale, _ = naive_sgd.naive_sgd_error_scale(before[i], grads[i], naive_buffers[i], **kw)
            assert _within(param, expected, scale, dtype, 12) <= 1.0, f"params[{i}]"
            # continue the reference from our state, so errors do not compound
            if naive_buffers[i] is not None:
                naive_buffers[i] = listed.momentum_buffers[i].astype(np.float64)
        for mine, theirs in zip(listed.momentum_buffers, fused.momentum_buffers, strict=True):
            assert (mine is None) == (theirs is None)
            if mine is not None:
                assert mine.tobytes() == theirs.tobytes()
        if use_torch:
            for group in reference.param_groups:
                group["lr"] = _lr(step)
            for tp, grad in zip(torch_params, grads, strict=True):
                tp.grad = torch.tensor(grad)
            reference.step()
    if use_torch:
        for i, (param, tp) in enumerate(zip(listed_params, torch_params, strict=True)):
            expected = tp.detach().numpy().astype(np.float64)
            assert _within(param, expected, 1.0 + np.abs(expected), dtype, 64) <= 1.0, i
    assert listed.steps == fused.steps == 12


def test_parameters_without_gradient_are_skipped_as_in_torch():
    rng = np.random.default_rng(4)
    start = _random(rng, np.float64, [(3,), (4,)])
    params = [p.copy() for p in start]
    optimizer = bn.SGD(params, lr=0.1, momentum=0.9)
    torch_params = [torch.tensor(p.copy(), requires_grad=True) for p in start]
    reference = torch.optim.SGD(torch_params, lr=0.1, momentum=0.9, foreach=False)
    for step in range(4):
        grads = _random(rng, np.float64, [(3,), (4,)])
        if step < 2:
            grads[1] = None
        optimizer.step(grads)
        for tp, grad in zip(torch_params, grads, strict=True):
            tp.grad = None if grad is None else torch.tensor(grad)
        reference.step()
        if step == 0:
            assert optimizer.momentum_buffers[1] is None
            assert params[1].tobytes() == start[1].tobytes()
    for param, tp in zip(params, torch_params, strict=True):
        np.testing.assert_allclose(param, tp.detach().numpy(), rtol=1e-14, atol=1e-15)


def test_momentum_set_mid_run_starts_buffers_as_torch_does():
    # Schedulers set lr and momentum on the optimizer between steps.
    rng = np.random.default_rng(8)
    start = _random(rng, np.float64, [(5,), (2, 2)])
    arena = bn.ParameterArena.from_arrays(start)
    optimizer = bn.SGD(arena, lr=0.1)
    torch_params = [torch.tensor(p.copy(), requires_grad=True) for p in start]
    reference = torch.optim.SGD(torch_params, lr=0.1, foreach=False)
    for step, momentum in enumerate([0.0, 0.0, 0.9, 0.85, 0.95, 0.0, 0.9]):
        optimizer.momentum = momentum
        optimizer.lr = _lr(step)
        for group in reference.param_groups:
            group["momentum"], group["lr"] = momentum, _lr(step)
        grads = _random(rng, np.float64, [(5,), (2, 2)])
        for view, tp, grad in zip(arena.grads, torch_params, grads, strict=True):
            view[...] = grad
            tp.grad = torch.tensor(grad)
        optimizer.step()
        reference.step()
    for param, tp in zip(arena.params, torch_params, strict=True):
        np.testing.assert_allclose(param, tp.detach().numpy(), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["first", "last", "big-tail"])
@pytest.mark.parametrize("use_arena", [False, True], ids=["list", "arena"])
def test_nonfinite_gradient_skips_the_step_and_changes_nothing(bad, where, use_arena):
    rng = np.random.default_rng(6)
    shapes = [(4,), (3, 3), (config.CPU_SERIAL_BELOW + 77,)]
    start = _random(rng, np.float32, shapes)
    if use_arena:
        arena = bn.ParameterArena.from_arrays(start)
        optimizer = bn.SGD(arena, lr=0.1, momentum=0.9, weight_decay=1e-2)
    else:
        optimizer = bn.SGD([p.copy() for p in start], lr=0.1, momentum=0.9, weight_decay=1e-2)

    def step(grads, **kw):
        if use_arena:
            for view, grad in zip(arena.grads, grads, strict=True):
                view[...] = grad
            return optimizer.step(**kw)
        return optimizer.step(grads, **kw)

    assert step(_random(rng, np.float32, shapes), skip_if_nonfinite=True) is True
    grads = _random(rng, np.float32, shapes)
    index = {"first": (0, 0), "last": (1, -1), "big-tail": (2, -1)}[where]
    grads[index[0]].reshape(-1)[index[1]] = bad
    before = _snapshot(optimizer)
    assert step(grads, skip_if_nonfinite=True) is False
    _assert_unchanged(optimizer, before[:4] + (1,))  # only the skip counter moved
    assert optimizer.skipped_steps == 1 and optimizer.steps == 1
    # without the check the bad value goes through, as in torch
    assert step(grads) is True
    assert not np.isfinite(optimizer.params[index[0]]).all()


def test_learning_rate_is_settable_and_validated():
    optimizer = bn.SGD([np.zeros(3)], lr=0.5, momentum=0.9, nesterov=True)
    optimizer.lr = 0.25
    assert optimizer.lr == 0.25
    with pytest.raises(ValueError, match="lr"):
        optimizer.lr = -1.0
    assert optimizer.lr == 0.25
    with pytest.raises(ValueError, match="nesterov"):
        optimizer.momentum = 0.0
    assert optimizer.momentum == 0.9
    with pytest.raises(AttributeError):
        optimizer.nesterov = False


def test_scheduler_from_the_registry_can_drive_the_optimizer():
    optimizer = bn.SGD([np.zeros(2)], lr=1.0)
    scheduler = bn.create_scheduler("step", base_lr=1.0, step_size=1, gamma=0.5)
    scheduler.bind(optimizer)
    scheduler.step()
    assert optimizer.lr == pytest.approx(0.5)


def test_zero_grad_clears_arena_gradients_and_is_refused_for_lists():
    arena = bn.ParameterArena([(3,)])
    arena.grads[0][...] = 1.0
    bn.SGD(arena, lr=0.1).zero_grad()
    assert not arena.flat_grads.any()
    with pytest.raises(TypeError, match="zero_grad"):
        bn.SGD([np.zeros(3)], lr=0.1).zero_grad()


def test_arena_step_is_bitwise_independent_of_thread_count():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")
    rng = np.random.default_rng(9)
    start = _random(rng, np.float32, [(40000,), (3,), (70001,)])
    grads = _random(rng, np.float32, [(40000,), (3,), (70001,)])
    results = []
    previous = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            arena = bn.ParameterArena.from_arrays(start)
            optimizer = bn.SGD(arena, lr=0.1, momentum=0.9, weight_decay=1e-3)
            for _ in range(2):
                for view, grad in zip(arena.grads, grads, strict=True):
                    view[...] = grad
                optimizer.step(skip_if_nonfinite=True)
            results.append(arena.flat_params.tobytes())
    finally:
        numba.set_num_threads(previous)
    assert results[0] == results[1]


# state_dict ----------------------------------------------------------------


def _run(optimizer, grads_per_step, arena=None):
    for grads in grads_per_step:
        if arena is not None:
            for view, grad in zip(arena.grads, grads, strict=True):
                view[...] = grad
            optimizer.step()
        else:
            optimizer.step(grads)


@pytest.mark.parametrize(
    ("first", "second"),
    [("list", "list"), ("arena", "arena"), ("list", "arena"), ("arena", "list")],
)
def test_resumed_run_continues_bitwise(first, second):
    rng = np.random.default_rng(12)
    shapes = [(3, 4), (5,)]
    start = _random(rng, np.float32, shapes)
    steps = [_random(rng, np.float32, shapes) for _ in range(8)]
    options = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-2)

    def make(kind, values):
        if kind == "arena":
            arena = bn.ParameterArena.from_arrays(values)
            return bn.SGD(arena, **options), arena
        return bn.SGD([v.copy() for v in values], **options), None

    straight, straight_arena = make(first, start)
    _run(straight, steps[:4], straight_arena)
    saved = straight.state_dict()
    saved_params = [p.copy() for p in straight.params]
    straight.lr = 0.05
    _run(straight, steps[4:], straight_arena)

    resumed, resumed_arena = make(second, saved_params)
    resumed.load_state_dict(saved)
    assert resumed.lr == 0.1 and resumed.steps == 4
    resumed.lr = 0.05
    _run(resumed, steps[4:], resumed_arena)
    for a, b in zip(straight.params, resumed.params, strict=True):
        assert a.tobytes() == b.tobytes()
    assert resumed.state_dict()["steps"] == straight.state_dict()["steps"] == 8


def test_state_dict_holds_copies():
    optimizer = bn.SGD([np.zeros(3)], lr=0.1, momentum=0.9)
    optimizer.step([np.ones(3)])
    state = optimizer.state_dict()
    optimizer.step([np.ones(3)])
    np.testing.assert_array_equal(state["momentum_buffers"][0], 1.0)
    assert state["hyperparameters"]["momentum"] == 0.9


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    before=st.integers(0, 4),
    after=st.integers(1, 4),
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
    nesterov=st.booleans(),
    decoupled=st.booleans(),
    use_arena=st.booleans(),
)
def test_state_dict_round_trip(seed, before, after, momentum, nesterov, decoupled, use_arena):
    nesterov = nesterov and momentum > 0
    rng = np.random.default_rng(seed)
    shapes = [(2, 3), (4,), ()]
    start = _random(rng, np.float64, shapes)
    grads = [_random(rng, np.float64, shapes) for _ in range(before + after)]
    options = dict(
        lr=0.05,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=1e-2,
        decoupled_weight_decay=decoupled,
    )
    arena = bn.ParameterArena.from_arrays(start) if use_arena else None
    original = bn.SGD(arena if use_arena else [p.copy() for p in start], **options)
    _run(original, grads[:before], arena)
    state = original.state_dict()
    params_at_save = [p.copy() for p in original.params]
    copy = bn.SGD([p.copy() for p in params_at_save], lr=1.0)
    copy.load_state_dict(state)
    assert copy.hyperparameters == original.hyperparameters
    again = copy.state_dict()
    for a, b in zip(again["momentum_buffers"], state["momentum_buffers"], strict=True):
        assert (a is None and b is None) or a.tobytes() == b.tobytes()
    _run(original, grads[before:], arena)
    _run(copy, grads[before:])
    for a, b in zip(original.params, copy.params, strict=True):
        assert a.tobytes() == b.tobytes()


def _stepped(kind="list"):
    shapes = [(2, 3), (4,)]
    start = [np.full(s, 0.5, np.float32) for s in shapes]
    if kind == "arena":
        arena = bn.ParameterArena.from_arrays(start)
        optimizer = bn.SGD(arena, lr=0.1, momentum=0.9)
        arena.flat_grads[...] = 1.0
        optimizer.step()
    else:
        optimizer = bn.SGD([p.copy() for p in start], lr=0.1, momentum=0.9)
        optimizer.step([np.ones(s, np.float32) for s in shapes])
    return optimizer


def _bad_states():
    good = _stepped().state_dict()

    def edit(function):
        state = {**good, "hyperparameters": dict(good["hyperparameters"])}
        state["momentum_buffers"] = [b.copy() for b in good["momentum_buffers"]]
        function(state)
        return state

    return {
        "fewer tensors": (
            edit(lambda s: s.update(momentum_buffers=s["momentum_buffers"][:1])),
            ValueError,
            "1 momentum buffers, this optimizer has 2",
        ),
        "other shape": (
            edit(lambda s: s["momentum_buffers"].__setitem__(1, np.ones(5, np.float32))),
            ValueError,
            r"momentum_buffers'\]\[1\]: shape \(5,\) does not match params\[1\] \(4,\)",
        ),
        "other dtype": (
            edit(lambda s: s["momentum_buffers"].__setitem__(0, np.ones((2, 3)))),
            TypeError,
            r"momentum_buffers'\]\[0\]: dtype float64 does not match params\[0\] float32",
        ),
        "bad hyperparameter": (
            edit(lambda s: s["hyperparameters"].update(lr=-1.0)),
            ValueError,
            r"hyperparameters'\]: lr",
        ),
        "unknown hyperparameter": (
            edit(lambda s: s["hyperparameters"].update(betas=(0.9, 0.99))),
            ValueError,
            "unknown keys",
        ),
        "missing key": (
            edit(lambda s: s.pop("momentum_buffers")),
            ValueError,
            "missing key 'momentum_buffers'",
        ),
        "negative counter": (edit(lambda s: s.update(steps=-1)), ValueError, "steps"),
        "not a dict": ([1, 2], TypeError, "state_dict"),
    }


@pytest.mark.parametrize("kind", ["list", "arena"])
@pytest.mark.parametrize("case", list(_bad_states()))
def test_state_from_other_parameters_is_rejected_without_changes(case, kind):
    state, error, fragment = _bad_states()[case]
    optimizer = _stepped(kind)
    before = _snapshot(optimizer)
    with pytest.raises(error, match=fragment):
        optimizer.load_state_dict(state)
    _assert_unchanged(optimizer, before)


def test_arena_rejects_a_state_with_momentum_for_some_tensors_only():
    state = _stepped("list").state_dict()
    state["momentum_buffers"][1] = None
    optimizer = _stepped("arena")
    before = _snapshot(optimizer)
    with pytest.raises(ValueError, match="all of its tensors or none"):
        optimizer.load_state_dict(state)
    _assert_unchanged(optimizer, before)
    listed = _stepped("list")
    listed.load_state_dict(state)  # a list keeps momentum per tensor
    assert listed.momentum_buffers[1] is None


# Bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "fragment"),
    [
        (lambda: bn.SGD(np.zeros(3), lr=0.1), TypeError, "single array"),
        (lambda: bn.SGD([], lr=0.1), ValueError, "empty"),
        (lambda: bn.SGD(5, lr=0.1), TypeError, "params"),
        (lambda: bn.SGD([np.zeros(3), np.zeros(2, np.int64)], lr=0.1), TypeError, r"params\[1\]"),
        (lambda: bn.SGD([np.zeros(3), [1.0]], lr=0.1), TypeError, r"params\[1\]"),
        (lambda: bn.SGD([np.zeros(3)], lr=-0.1), ValueError, "lr"),
        (lambda: bn.SGD([np.zeros(3)], lr=0.1, momentum=-1), ValueError, "momentum"),
        (lambda: bn.SGD([np.zeros(3)], lr=0.1, dampening=-1), ValueError, "dampening"),
        (lambda: bn.SGD([np.zeros(3)], lr=0.1, weight_decay=-1), ValueError, "weight_decay"),
        (lambda: bn.SGD([np.zeros(3)], lr=0.1, nesterov=True), ValueError, "nesterov"),
        (
            lambda: bn.SGD([np.zeros(3)], lr=0.1, momentum=0.9, dampening=0.5, nesterov=True),
            ValueError,
            "nesterov",
        ),
        (lambda: bn.SGD(bn.ParameterArena([]), lr=0.1), ValueError, "no tensors"),
    ],
)
def test_bad_construction_raises_naming_the_argument(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make()


def test_read_only_parameter_is_rejected_with_its_index():
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[1\]: array is not writable"):
        bn.SGD([np.zeros(2), frozen], lr=0.1)


BAD_STEPS = {
    "no grads": (lambda: None, TypeError, "grads: required"),
    "too few": (lambda: [np.ones((2, 3), np.float32)], ValueError, "1 gradients for 2"),
    "shape": (
        lambda: [np.ones((2, 3), np.float32), np.ones((2, 2), np.float32)],
        ValueError,
        r"grads\[1\]: shape \(2, 2\) does not match params\[1\] \(4,\)",
    ),
    "dtype": (
        lambda: [np.ones((2, 3), np.float32), np.ones(4)],
        TypeError,
        r"grads\[1\]: dtype float64 does not match params\[1\] float32",
    ),
    "transposed": (
        lambda: [np.ones((3, 2), np.float32), np.ones(4, np.float32)],
        ValueError,
        r"grads\[0\]: shape \(3, 2\) does not match params\[0\] \(2, 3\)",
    ),
    "not a list": (lambda: np.ones(4, np.float32), TypeError, "grads"),
}


@pytest.mark.parametrize("case", list(BAD_STEPS))
def test_bad_step_raises_naming_the_gradient_and_changes_nothing(case):
    make_grads, error, fragment = BAD_STEPS[case]
    optimizer = _stepped("list")
    before = _snapshot(optimizer)
    with pytest.raises(error, match=fragment):
        optimizer.step(make_grads(), skip_if_nonfinite=True)
    _assert_unchanged(optimizer, before)


def test_arena_step_refuses_explicit_gradients_without_changes():
    optimizer = _stepped("arena")
    before = _snapshot(optimizer)
    with pytest.raises(TypeError, match="arena's gradients"):
        optimizer.step([np.ones((2, 3), np.float32), np.ones(4, np.float32)])
    with pytest.raises(TypeError, match="skip_if_nonfinite"):
        optimizer.step(skip_if_nonfinite="yes")
    _assert_unchanged(optimizer, before)


class _FakeDeviceArray:
    __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (0, False), "version": 3}
    shape = (3,)
    dtype = np.dtype(np.float32)


def test_device_parameters_without_cuda_support_give_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bnsgd_numba.sgd._cuda_driver", None)
    with pytest.raises(ImportError, match="SGD: got a CUDA array, but CUDA support is not"):
        bn.SGD([_FakeDeviceArray()], lr=0.1)
    with pytest.raises(ImportError, match="clip_grad_norm: got a CUDA array"):
        bn.clip_grad_norm([_FakeDeviceArray()], 1.0)
    with pytest.raises(TypeError, match=r"params\[1\]: a host array among CUDA arrays"):
        bn.SGD([_FakeDeviceArray(), np.zeros(3, np.float32)], lr=0.1)


def test_device_lists_and_arenas_are_handed_to_the_gpu_module(monkeypatch):
    calls = []
    fake = types.ModuleType("bnsgd_numba.sgd._cuda_driver")
    fake.sgd_optimizer_step = lambda optimizer, grads, *, skip_if_nonfinite: (
        calls.append(("step", optimizer, grads, skip_if_nonfinite)) or False
    )
    fake.check_parameters_apart = lambda params: calls.append(("apart", params))

    class DeviceGradients:  # the clipping backend: partials, scale and clamp
        def __init__(self, grads, name, caller):
            calls.append(("gradients", grads, caller))

        def norm_partials(self, kind, order):
            calls.append(("partials", kind, order))
            return np.array([6.25])

        def scale(self, factor):
            calls.append(("scale", factor))

        def clamp(self, limit):
            calls.append(("clamp", limit))

    fake.DeviceGradients = DeviceGradients
    monkeypatch.setitem(sys.modules, "bnsgd_numba.sgd._cuda_driver", fake)

    params = [_FakeDeviceArray()]
    listed = bn.SGD(params, lr=0.1, momentum=0.9)
    assert calls.pop() == ("apart", tuple(params))
    grads = [_FakeDeviceArray()]
    assert listed.step(grads, skip_if_nonfinite=True) is False
    assert calls.pop() == ("step", listed, grads, True)
    assert (listed.steps, listed.skipped_steps) == (0, 1)

    arena = bn.ParameterArena([(3,)])
    arena._flat_params, arena._flat_grads = _FakeDeviceArray(), _FakeDeviceArray()
    fused = bn.SGD(arena, lr=0.1)
    assert fused.step() is False
    assert calls.pop() == ("step", fused, None, False)

    calls.clear()
    assert bn.clip_grad_norm(arena, 1.0) == 2.5
    assert calls == [
        ("gradients", arena, "clip_grad_norm"),
        ("partials", 0, 2.0),
        ("scale", 1.0 / (2.5 + 1e-6)),
    ]
    calls.clear()
    bn.clip_grad_value(grads, 0.5)
    assert calls == [("gradients", grads, "clip_grad_value"), ("clamp", 0.5)]
