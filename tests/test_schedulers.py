"""Scheduler behaviour beyond the torch oracle: Optax schedules, composition, binding, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bnsgd_numba
from bnsgd_numba import create_scheduler


class StandIn:
    """An optimizer as far as binding is concerned."""

    def __init__(self, lr: float = 0.0, momentum: float = 0.0) -> None:
        self.lr = lr
        self.momentum = momentum


# -- Optax schedules, against values worked out from Optax's definitions --------------


def test_warmup_cosine_as_optax_defines_it():
    sched = create_scheduler(
        "warmup_cosine",
        init_value=0.0,
        peak_value=1.0,
        warmup_steps=10,
        decay_steps=110,
        end_value=0.1,
    )
    assert sched.lr_at(0) == 0.0
    assert sched.lr_at(5) == pytest.approx(0.5)
    assert sched.lr_at(10) == 1.0
    assert sched.lr_at(60) == pytest.approx(0.9 * 0.5 + 0.1)
    assert sched.lr_at(110) == pytest.approx(0.1)
    assert sched.lr_at(500) == pytest.approx(0.1)
    squared = create_scheduler(
        "warmup_cosine", base_lr=1.0, init_value=0.0, warmup_steps=10, decay_steps=110,
        end_value=0.1, exponent=2.0,
    )  # fmt: skip
    assert squared.lr_at(60) == pytest.approx(0.9 * 0.25 + 0.1)
    no_warmup = create_scheduler("warmup_cosine", base_lr=2.0, init_value=0.5, warmup_steps=0,
                                 decay_steps=100)  # fmt: skip
    assert no_warmup.lr_at(0) == 2.0 and no_warmup.lr_at(50) == pytest.approx(1.0)


def test_warmup_cosine_base_lr_is_the_peak_value():
    with pytest.raises(ValueError, match="name one value"):
        create_scheduler("warmup_cosine", base_lr=1.0, peak_value=2.0, init_value=0.0,
                         warmup_steps=1, decay_steps=5)  # fmt: skip
    # neither given: the bound optimizer's rate is the peak
    waiting = create_scheduler("warmup_cosine", init_value=0.0, warmup_steps=1, decay_steps=5)
    with pytest.raises(TypeError, match="no base_lr yet"):
        waiting.step()
    assert waiting.bind(StandIn(lr=0.4)).peak_value == 0.4 and waiting.lr_at(1) == 0.4


def test_piecewise_constant_as_optax_defines_it():
    sched = create_scheduler(
        "piecewise_constant", init_value=1.0, boundaries_and_scales={20: 0.1, 10: 0.5}
    )
    values = [sched.lr_at(t) for t in (0, 9, 10, 19, 20, 1000)]
    assert values == [1.0, 1.0, 0.5, 0.5, pytest.approx(0.05), pytest.approx(0.05)]
    assert create_scheduler("piecewise_constant", base_lr=0.3).lr_at(999) == 0.3
    with pytest.raises(ValueError, match="scale"):
        create_scheduler("piecewise_constant", base_lr=1.0, boundaries_and_scales={5: -1.0})


# -- composition ------------------------------------------------------------------------


def test_sequential_with_a_milestone_at_zero_starts_with_the_second_schedule():
    sched = create_scheduler(
        "sequential",
        base_lr=1.0,
        schedulers=[("exponential", {"gamma": 0.5}), ("step", {"step_size": 2})],
        milestones=[0],
    )
    expected = [0.1 ** (t // 2) for t in range(12)]
    assert [sched.lr] + [sched.step() for _ in range(11)] == pytest.approx(expected, rel=1e-15)


def test_nested_sequential_uses_each_childs_local_step():
    inner = create_scheduler(
        "sequential",
        base_lr=0.2,
        schedulers=[("linear", {"start_factor": 0.25, "total_iters": 4}), ("exponential", {"gamma": 0.9})],
        milestones=[4],
    )  # fmt: skip
    outer = create_scheduler(
        "sequential", base_lr=0.2, schedulers=[inner, ("cosine", {"T_max": 20})], milestones=[10]
    )
    warm = create_scheduler("linear", base_lr=0.2, start_factor=0.25, total_iters=4)
    decay = create_scheduler("exponential", base_lr=0.2, gamma=0.9)
    cosine = create_scheduler("cosine", base_lr=0.2, T_max=20)
    for t in range(40):
        expected = (
            warm.lr_at(t) if t < 4 else decay.lr_at(t - 4) if t < 10 else cosine.lr_at(t - 10)
        )
        assert outer.lr_at(t) == expected
        assert (outer.lr if t == 0 else outer.step()) == expected


def test_sequential_resumes_exactly_across_a_milestone():
    def make():
        return create_scheduler(
            "sequential",
            base_lr=0.1,
            schedulers=[("linear", {"start_factor": 0.1, "total_iters": 5}), ("cosine", {"T_max": 30})],
            milestones=[5],
        )  # fmt: skip

    whole = make()
    rates = [whole.step() for _ in range(40)]
    for split in (3, 5, 6, 20):
        first = make()
        for _ in range(split):
            first.step()
        resumed = make()
        resumed.load_state_dict(first.state_dict())
        assert [resumed.step() for _ in range(40 - split)] == rates[split:]


def test_reduce_on_plateau_after_a_warmup():
    sched = create_scheduler(
        "sequential",
        base_lr=1.0,
        schedulers=[("linear", {"start_factor": 0.25, "total_iters": 3}), ("reduce_on_plateau", {"patience": 1})],
        milestones=[3],
    )  # fmt: skip
    assert sched.requires_metric
    with pytest.raises(TypeError, match="metric"):
        sched.step()
    rates = [sched.lr] + [sched.step(m) for m in [5.0, 4.0, 3.0, 2.0, 2.0, 2.0, 2.0, 1.0]]
    # warmup 0.25, 0.5, 0.75, then 1.0 at the milestone; the plateau sees the metrics from
    # step 4 on (2.0 best, then two bad steps > patience 1 -> x0.1), bad counter reset
    assert rates == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="metric-driven"):
        sched.lr_at(20)


def test_chained_multiplies_factors_and_accepts_a_metric_child():
    chained = create_scheduler(
        "chained",
        base_lr=2.0,
        schedulers=[
            ("step", {"step_size": 3, "gamma": 0.5}),
            ("reduce_on_plateau", {"patience": 0}),
        ],
    )
    rates = [chained.step(m) for m in [1.0, 1.0, 1.0, 0.5]]
    # step factor: 1, 1, 0.5, 0.5 ; plateau: 2.0, 0.2, 0.02, 0.02 (relative factors 1, .1, .01, .01)
    assert rates == pytest.approx([2.0, 0.2, 0.01, 0.01])


def test_composite_children_share_the_base_learning_rate():
    child = create_scheduler("exponential", base_lr=0.5, gamma=0.9)
    with pytest.raises(ValueError, match="share one learning rate"):
        create_scheduler("chained", base_lr=0.1, schedulers=[child])
    with pytest.raises(ValueError, match="milestones"):
        create_scheduler(
            "sequential", base_lr=0.1, schedulers=["constant", "linear"], milestones=[]
        )
    with pytest.raises(TypeError, match="schedulers\\[0\\]"):
        create_scheduler("sequential", base_lr=0.1, schedulers=[3, "linear"], milestones=[2])


# -- binding ----------------------------------------------------------------------------


def test_bind_sets_lr_now_and_on_every_step():
    opt = StandIn(lr=123.0)
    sched = create_scheduler("step", base_lr=1.0, step_size=2).bind(opt)
    assert opt.lr == 1.0
    for _ in range(5):
        assert sched.step() == opt.lr
    assert opt.lr == pytest.approx(0.01)
    sched.unbind()
    sched.step()
    assert opt.lr == pytest.approx(0.01)


def test_cycle_momentum_needs_a_momentum_attribute():
    class LrOnly:
        lr = 0.0

    with pytest.raises(ValueError, match="momentum"):
        create_scheduler("cyclic", base_lr=0.01, max_lr=0.1).bind(LrOnly())
    create_scheduler("cyclic", base_lr=0.01, max_lr=0.1, cycle_momentum=False).bind(LrOnly())
    with pytest.raises(TypeError, match="no 'lr'"):
        create_scheduler("constant", base_lr=0.1).bind(object())


def test_bound_to_the_real_sgd_cycles_its_momentum():
    params = [np.ones(4), np.ones(3)]
    sgd = bnsgd_numba.SGD(params, lr=0.5, momentum=0.5)
    sched = create_scheduler("one_cycle", max_lr=0.1, total_steps=20).bind(sgd)
    assert sgd.lr == pytest.approx(0.004) and sgd.momentum == pytest.approx(0.95)
    for _ in range(19):
        sgd.step([np.ones(4), np.ones(3)])
        sched.step()
        assert sgd.lr == sched.lr and sgd.momentum == sched.momentum
    # torch's phases end at total_steps - 1: there the rate is initial / final_div_factor
    assert sgd.lr == pytest.approx(0.004 / 1e4) and sgd.momentum == pytest.approx(0.95)
    assert np.all(params[0] < 1.0)


# -- errors and state ------------------------------------------------------------------


def test_one_cycle_ends_at_total_steps_and_derives_base_lr():
    sched = create_scheduler("one_cycle", max_lr=1.0, total_steps=10)
    assert sched.base_lr == 0.04 and sched.max_step == 10
    for _ in range(10):
        sched.step()
    with pytest.raises(ValueError, match="past its last step"):
        sched.step()
    assert sched.last_step == 10
    with pytest.raises(ValueError, match="max_lr / div_factor"):
        create_scheduler("one_cycle", base_lr=0.1, max_lr=1.0, total_steps=10)
    agreeing = create_scheduler("one_cycle", base_lr=0.04, max_lr=1.0, total_steps=10)
    assert agreeing.lr == pytest.approx(0.04, rel=1e-15)


def test_load_state_dict_refuses_another_schedulers_state():
    state = create_scheduler("cosine", base_lr=0.1, T_max=10).state_dict()
    with pytest.raises(ValueError, match="'CosineAnnealingLR'"):
        create_scheduler("step", base_lr=0.1, step_size=2).load_state_dict(state)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("constant", {"factor": 1.5}, "factor"),
        ("linear", {"start_factor": 0.0}, "start_factor"),
        ("step", {"step_size": 0}, "step_size"),
        ("polynomial", {"total_iters": -1}, "total_iters"),
        ("cosine", {"T_max": 0}, "T_max"),
        ("cosine_warm_restarts", {"T_0": 2.5}, "T_0"),
        ("cosine_warm_restarts", {"T_0": 3, "T_mult": 0}, "T_mult"),
        ("cyclic", {"max_lr": 1.0, "mode": "zigzag"}, "mode"),
        ("lambda", {"lr_lambda": 3}, "callable"),
        ("reduce_on_plateau", {"threshold_mode": "pct"}, "threshold_mode"),
        ("reduce_on_plateau", {"mode": "up"}, "mode"),
    ],
)
def test_bad_parameters_are_rejected(name, params, message):
    with pytest.raises((ValueError, TypeError), match=message):
        create_scheduler(name, base_lr=0.1, **params)


@pytest.mark.parametrize("base_lr", [-0.1, math.nan, math.inf])
def test_bad_base_lr_is_rejected(base_lr):
    with pytest.raises(ValueError, match="base_lr"):
        create_scheduler("constant", base_lr=base_lr)


def test_scheduler_is_the_public_base_class():
    assert isinstance(create_scheduler("cosine", base_lr=0.1, T_max=5), bnsgd_numba.Scheduler)
    with pytest.raises(NotImplementedError):
        bnsgd_numba.Scheduler(base_lr=0.1)
