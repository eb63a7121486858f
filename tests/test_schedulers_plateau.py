"""reduce_on_plateau against torch's ReduceLROnPlateau on scripted and random metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bnsgd_numba

torch = pytest.importorskip("torch")


def _torch_lrs(base_lr: float, metrics: list[float], **params) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **params)
    out = []
    for m in metrics:
        opt.step()
        sched.step(m)
        out.append(opt.param_groups[0]["lr"])
    return out


def _our_lrs(base_lr: float, metrics: list[float], **params) -> list[float]:
    sched = bnsgd_numba.create_scheduler("reduce_on_plateau", base_lr=base_lr, **params)
    return [sched.step(m) for m in metrics]


FLAT_THEN_DOWN = [1.0, 0.9, 0.8] + [0.8] * 12 + [0.5, 0.4] + [0.4] * 20
TINY_GAINS = [1.0 - 1e-5 * k for k in range(40)]  # each gain below a 1e-4 relative threshold
SCRIPTS = {
    "patience-default": (0.1, FLAT_THEN_DOWN, {}),
    "patience-2": (0.1, FLAT_THEN_DOWN, {"patience": 2}),
    "cooldown-3": (0.1, FLAT_THEN_DOWN, {"patience": 1, "cooldown": 3}),
    "cooldown-ignores-bad-steps": (1.0, [5.0] + [6.0] * 30, {"patience": 0, "cooldown": 4}),
    "threshold-rel-tiny-gains": (0.1, TINY_GAINS, {"patience": 3}),
    "threshold-abs-tiny-gains": (
        0.1,
        TINY_GAINS,
        {"patience": 3, "threshold_mode": "abs", "threshold": 5e-5},
    ),
    "threshold-abs-counts": (
        0.1,
        [1.0, 0.95, 0.94, 0.93, 0.80] * 6,
        {"patience": 1, "threshold_mode": "abs", "threshold": 0.05},
    ),
    "max-mode-rel": (
        0.1,
        [0.1 * k for k in range(10)] + [0.9] * 20,
        {"mode": "max", "patience": 2},
    ),
    "max-mode-abs": (
        0.1,
        [0.5, 0.52, 0.6, 0.61, 0.62, 0.7] * 5,
        {"mode": "max", "threshold_mode": "abs", "threshold": 0.05, "patience": 1},
    ),
    "min-lr": (0.1, [1.0] * 40, {"patience": 0, "factor": 0.5, "min_lr": 0.01}),
    "eps-skips-small-reduction": (1e-7, [1.0] * 30, {"patience": 0, "factor": 0.5, "eps": 1e-7}),
    "eps-default": (1e-6, [1.0] * 60, {"patience": 1, "factor": 0.5}),
}


@pytest.mark.parametrize(("base_lr", "metrics", "params"), SCRIPTS.values(), ids=SCRIPTS.keys())
def test_scripted_metrics_match_torch(base_lr, metrics, params):
    ours = _our_lrs(base_lr, metrics, **params)
    expected = _torch_lrs(base_lr, metrics, **params)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=0)


def test_scripts_do_reduce_where_intended():
    assert _our_lrs(0.1, FLAT_THEN_DOWN)[-1] < 0.1
    assert _our_lrs(1e-7, [1.0] * 30, patience=0, factor=0.5, eps=1e-7) == [1e-7] * 30
    assert min(_our_lrs(0.1, [1.0] * 40, patience=0, factor=0.5, min_lr=0.01)) == 0.01


@settings(max_examples=40)
@given(
    metrics=st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=1, max_size=60),
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["rel", "abs"]),
    threshold=st.sampled_from([0.0, 1e-4, 0.1]),
    patience=st.integers(0, 4),
    cooldown=st.integers(0, 3),
    factor=st.sampled_from([0.1, 0.5, 0.9]),
    min_lr=st.sampled_from([0.0, 1e-3]),
)
def test_random_metrics_match_torch(metrics, **params):
    np.testing.assert_allclose(
        _our_lrs(0.1, metrics, **params), _torch_lrs(0.1, metrics, **params), rtol=1e-12, atol=0
    )


def test_resume_mid_plateau_continues_identically():
    metrics = FLAT_THEN_DOWN
    params = {"patience": 2, "cooldown": 2}
    whole = _our_lrs(0.1, metrics, **params)
    first = bnsgd_numba.create_scheduler("reduce_on_plateau", base_lr=0.1, **params)
    for m in metrics[:9]:
        first.step(m)
    resumed = bnsgd_numba.create_scheduler("reduce_on_plateau", base_lr=0.1, **params)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.step(m) for m in metrics[9:]] == whole[9:]


def test_plateau_needs_a_metric_and_has_no_closed_form():
    sched = bnsgd_numba.create_scheduler("reduce_on_plateau", base_lr=0.1)
    with pytest.raises(TypeError, match="metric"):
        sched.step()
    assert sched.lr_at(0) == 0.1
    with pytest.raises(ValueError, match="current step"):
        sched.lr_at(5)
    with pytest.raises(ValueError, match="factor"):
        bnsgd_numba.create_scheduler("reduce_on_plateau", base_lr=0.1, factor=1.0)


def test_infinite_best_survives_state_dict():
    sched = bnsgd_numba.create_scheduler("reduce_on_plateau", base_lr=0.1)
    assert math.isinf(sched.state_dict()["best"])
