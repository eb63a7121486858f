"""The public tunables in ``config`` are checked where the kernels read them.

A zero, negative, float or string work size used to give wrong results, a
ZeroDivisionError, a TypeError from a comparison, or an LLVM error. Every
entry point now raises a TypeError/ValueError naming ``config.X`` before
anything is written.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba as bn
from bnsgd_numba import config
from bnsgd_numba._core.checks import MAX_WORK_ITEM, cpu_tunables

BAD = [
    ("CPU_ITEM_ELEMENTS", 0, ValueError),
    ("CPU_ITEM_ELEMENTS", -5, ValueError),
    ("CPU_ITEM_ELEMENTS", 2.5, TypeError),
    ("CPU_ITEM_ELEMENTS", True, TypeError),
    ("CPU_ITEM_ELEMENTS", MAX_WORK_ITEM + 1, ValueError),
    ("CPU_RC_COLUMNS", 0, ValueError),
    ("CPU_RC_COLUMNS", 1.5, TypeError),
    ("CPU_RC_COLUMNS", "512", TypeError),
    ("CPU_SERIAL_BELOW", -1, ValueError),
    ("CPU_SERIAL_BELOW", "a", TypeError),
    ("CPU_SERIAL_BELOW", None, TypeError),
]


def _entry_points():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    running = [np.zeros(4, np.float32), np.ones(4, np.float32)]
    saved = bn.batch_norm_forward(x, training=True)
    params = [np.ones(5, np.float32), np.ones((2, 3), np.float32)]
    grads = [np.full(5, 0.5, np.float32), np.full((2, 3), 0.5, np.float32)]
    arena = bn.ParameterArena.from_arrays(params)
    arena.flat_grads[...] = 0.5
    listed = bn.SGD(params, lr=0.1, momentum=0.9)
    fused = bn.SGD(arena, lr=0.1, momentum=0.9)
    written = [x, *running, *params, *grads, arena.flat_params, arena.flat_grads]
    calls = {
        "batch_norm_forward train": lambda: bn.batch_norm_forward(
            x, None, None, *running, training=True
        ),
        "batch_norm_forward channels-last": lambda: bn.batch_norm_forward(
            x,
            None,
            None,
            np.zeros(3, np.float32),
            np.ones(3, np.float32),
            training=True,
            channel_axis=-1,
        ),  # fmt: skip
        "batch_norm_forward eval": lambda: bn.batch_norm_forward(
            x, None, None, *running, training=False
        ),
        "batch_norm_backward": lambda: bn.batch_norm_backward(
            x, x, None, saved.save_mean, saved.save_invstd
        ),
        "sgd_step": lambda: bn.sgd_step(params[0], grads[0], lr=0.1),
        "SGD.step list": lambda: listed.step(grads),
        "SGD.step arena": lambda: fused.step(),
        "SGD.step skip_if_nonfinite": lambda: fused.step(skip_if_nonfinite=True),
        "clip_grad_norm": lambda: bn.clip_grad_norm(grads, 0.1),
        "clip_grad_value": lambda: bn.clip_grad_value(arena, 0.1),
    }
    return calls, written, (listed, fused)


ENTRY_POINTS = sorted(_entry_points()[0])


@pytest.mark.parametrize(("name", "value", "error"), BAD, ids=lambda v: repr(v))
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_bad_tunable_is_named_before_anything_is_written(monkeypatch, name, value, error, entry):
    calls, written, optimizers = _entry_points()
    before = [a.copy() for a in written]
    monkeypatch.setattr(config, name, value)
    with pytest.raises(error, match=f"config.{name}"):
        calls[entry]()
    for array, old in zip(written, before, strict=True):
        np.testing.assert_array_equal(array, old)
    for optimizer in optimizers:
        assert optimizer.steps == optimizer.skipped_steps == 0
        assert all(buffer is None for buffer in optimizer.momentum_buffers)


def test_numpy_integers_are_taken_and_the_defaults_pass(monkeypatch):
    assert cpu_tunables() == (
        config.CPU_ITEM_ELEMENTS,
        config.CPU_RC_COLUMNS,
        config.CPU_SERIAL_BELOW,
    )
    monkeypatch.setattr(config, "CPU_ITEM_ELEMENTS", np.int64(64))
    monkeypatch.setattr(config, "CPU_SERIAL_BELOW", 0)
    assert cpu_tunables() == (64, config.CPU_RC_COLUMNS, 0)
    assert type(cpu_tunables()[0]) is int
    param = np.ones(200)
    bn.sgd_step(param, np.ones(200), lr=0.5)
    np.testing.assert_array_equal(param, 0.5)
