"""The scheduler contract, for every built-in: named errors, finite rates >= 0, no half changes.

Issues 15 and 16: bad parameters are rejected at construction with the
parameter's name; every step a schedule accepts gives a finite rate >= 0 (far
steps included); ``step``, ``bind`` and ``load_state_dict`` either succeed or
change nothing; a schedule without ``base_lr`` takes the optimizer's.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bnsgd_numba
from bnsgd_numba import Scheduler, create_scheduler
from bnsgd_numba.registry import available_schedulers, scheduler_registration
from bnsgd_numba.testing import strategies

MAX_STEP = 2**63 - 1
#: The built-ins whose parameters are plain numbers, flags and choices.
PLAIN = [
    "constant", "linear", "step", "multistep", "exponential", "polynomial", "cosine",
    "cosine_warm_restarts", "warmup_cosine", "piecewise_constant", "cyclic", "one_cycle",
    "reduce_on_plateau",
]  # fmt: skip
BAD = {
    "float": [(math.nan, ValueError), (math.inf, ValueError), (-1.0, ValueError),
              ("abc", TypeError), (True, TypeError), ([0.5], TypeError)],
    "int": [(-1, ValueError), (2.5, TypeError), ("abc", TypeError), (True, TypeError)],
    "bool": [("False", TypeError), (2, TypeError), (None, TypeError)],
    "str": [("nope", ValueError), (3, ValueError)],
}  # fmt: skip


class StandIn:
    def __init__(self, lr: float = 0.0, momentum: float = 0.9) -> None:
        self.lr = lr
        self.momentum = momentum


def _kind(annotation: str) -> str | None:
    for kind in BAD:
        if annotation.split(" ")[0] == kind:
            return kind
    return None


def _example(name: str) -> dict:
    params = dict(scheduler_registration(name).metadata["examples"][0])
    if params.get("base_lr", 0.1) is None:
        del params["base_lr"]
    else:
        params.setdefault("base_lr", 0.1)
    return params


def _bad_parameter_cases():
    for name in PLAIN:
        signature = inspect.signature(scheduler_registration(name).factory)
        for param in signature.parameters.values():
            kind = _kind(str(param.annotation))
            if kind is None or param.name == "base_lr":
                continue
            for value, error in BAD[kind]:
                yield pytest.param(
                    name, param.name, value, error, id=f"{name}-{param.name}={value!r}"
                )


def test_the_sweep_covers_the_parameters_the_issue_names():
    covered = {(c.values[0], c.values[1]) for c in _bad_parameter_cases()}
    for pair in [("cosine", "T_max"), ("cosine", "eta_min"), ("exponential", "gamma"),
                 ("warmup_cosine", "init_value"), ("cyclic", "max_lr"),
                 ("reduce_on_plateau", "patience"), ("one_cycle", "div_factor"),
                 ("step", "gamma")]:  # fmt: skip
        assert pair in covered


@pytest.mark.parametrize(("name", "param", "value", "error"), _bad_parameter_cases())
def test_every_bad_parameter_is_rejected_naming_it(name, param, value, error):
    params = {**_example(name), param: value}
    with pytest.raises(error, match=param):
        create_scheduler(name, **params)


@pytest.mark.parametrize("name", sorted(set(PLAIN) - {"one_cycle"}))
@pytest.mark.parametrize(
    ("value", "error"), [(math.nan, ValueError), (-0.1, ValueError), ("abc", TypeError)]
)
def test_bad_base_lr_is_rejected_naming_it(name, value, error):
    params = {**_example(name), "base_lr": value}
    with pytest.raises(error, match="base_lr"):
        create_scheduler(name, **params)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("multistep", {"milestones": ["a"]}, r"milestones\[0\]"),
        ("multistep", {"milestones": 5}, "milestones"),
        ("piecewise_constant", {"boundaries_and_scales": {5: math.nan}}, "boundaries_and_scales"),
        ("piecewise_constant", {"boundaries_and_scales": {"5": 0.5}}, "boundaries_and_scales"),
        ("piecewise_constant", {"boundaries_and_scales": [(5, 0.5)]}, "boundaries_and_scales"),
        ("lambda", {"lr_lambda": 3}, "lr_lambda"),
        ("cyclic", {"max_lr": 1.0, "scale_fn": "x"}, "scale_fn"),
        ("one_cycle", {"max_lr": 1e300, "div_factor": 1e-300, "total_steps": 5}, "div_factor"),
        ("sequential", {"schedulers": ["constant", "linear"], "milestones": ["a"]}, "milestones"),
        ("sequential", {"schedulers": "constant", "milestones": []}, "schedulers"),
        ("sequential", {"schedulers": [("cosine", {"T_max": -1})], "milestones": []},
         r"schedulers\[0\].*T_max"),
        ("chained", {"schedulers": [("exponential", {"gamma": 0.9, "base_lr": 1.0})]}, "base_lr"),
    ],
)  # fmt: skip
def test_structured_parameters_name_the_bad_part(name, params, message):
    with pytest.raises((TypeError, ValueError), match=message):
        create_scheduler(name, base_lr=0.1, **params)


def test_chained_needs_a_positive_base_lr_also_from_the_optimizer():
    with pytest.raises(ValueError, match="chained needs base_lr > 0"):
        create_scheduler("chained", base_lr=0.0, schedulers=["constant"])
    waiting = create_scheduler("chained", schedulers=["constant"])
    opt = StandIn(lr=0.0)
    with pytest.raises(ValueError, match="chained needs base_lr > 0"):
        waiting.bind(opt)
    assert waiting.optimizer is None and waiting.schedulers[0]._base_lr is None


# -- rates: finite and >= 0 at every accepted step ------------------------------------

CLOSED_FORM = [n for n in sorted(available_schedulers()) if n != "reduce_on_plateau"]


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(CLOSED_FORM),
    index=st.integers(0, 2),
    base_lr=strategies.learning_rates(),
    step=st.one_of(st.integers(0, 2000), st.integers(0, MAX_STEP)),
)
@example(name="one_cycle", index=1, base_lr=0.1, step=320)  # linear once went negative here
@example(name="one_cycle", index=2, base_lr=0.1, step=310)  # three-phase, last step
@example(name="cosine", index=0, base_lr=0.1, step=MAX_STEP)
def test_every_registered_example_gives_a_finite_rate_at_every_step(name, index, base_lr, step):
    examples = scheduler_registration(name).metadata["examples"]
    params = dict(examples[index % len(examples)])
    if "base_lr" not in params:
        params["base_lr"] = base_lr
    elif params["base_lr"] is None:
        del params["base_lr"]
    sched = create_scheduler(name, **params)
    if sched.requires_metric:  # sequential[2]: a plateau after the warmup
        step = min(step, 4)
    if sched.max_step is not None:
        step = min(step, sched.max_step)
    try:
        lr = sched.lr_at(step)
    except ValueError as exc:  # refusing a step is allowed only where documented
        assert "max_factors" in str(exc), exc
        return
    assert isinstance(lr, float) and math.isfinite(lr) and lr >= 0, (name, index, step, lr)
    momentum = sched.momentum_at(step)
    assert momentum is None or (math.isfinite(momentum) and momentum >= 0)


@pytest.mark.parametrize(
    "params",
    [
        {"max_lr": 0.1, "total_steps": 100, "anneal_strategy": "linear"},
        {"max_lr": 0.3, "total_steps": 320, "anneal_strategy": "linear"},
        {"max_lr": 0.5, "total_steps": 310, "three_phase": True, "anneal_strategy": "linear"},
        {"max_lr": 1.0, "total_steps": 300},
    ],
)
def test_one_cycle_holds_its_final_value_at_the_last_step(params):
    sched = create_scheduler("one_cycle", **params)
    n = params["total_steps"]
    final = sched.max_lr / 25.0 / 1e4
    assert sched.lr_at(n) == sched.lr_at(n - 1) == pytest.approx(final, rel=1e-12)
    assert sched.momentum_at(n) == sched.momentum_at(n - 1) == 0.95
    rates = [sched.step() for _ in range(n)]
    assert min(rates) >= 0 and rates[-1] == sched.lr_at(n)


@pytest.mark.parametrize(
    ("params", "step"),
    [({"pct_start": 1.0, "total_steps": 10}, 10), ({"pct_start": 0.1, "total_steps": 10}, 0)],
)
def test_one_cycle_empty_phases_do_not_divide_by_zero(params, step):
    lr = create_scheduler("one_cycle", max_lr=1.0, **params).lr_at(step)
    assert math.isfinite(lr) and lr >= 0


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("exponential", {"gamma": 1.01}),
        ("step", {"step_size": 1, "gamma": 2.0}),
        ("multistep", {"milestones": [1, 2], "gamma": 1e300}),
        ("cyclic", {"max_lr": 1.0, "step_size_up": 2, "mode": "exp_range", "gamma": 1.5}),
        ("piecewise_constant", {"boundaries_and_scales": {1: 1e300, 2: 1e300}}),
        ("lambda", {"lr_lambda": lambda s: 10.0**s}),
    ],
)
def test_an_overflowing_schedule_refuses_the_step_naming_it(name, params):
    sched = create_scheduler(name, base_lr=0.1, **params)
    with pytest.raises(ValueError, match="1000000"):
        sched.lr_at(10**6)
    state = {**sched.state_dict(), "last_step": 10**6 - 1}
    sched.load_state_dict(state)
    with pytest.raises(ValueError, match="1000000"):
        sched.step()
    assert sched.state_dict() == state


@pytest.mark.parametrize("step", [-1, 2**63, 1.5, True, "3", None])
def test_lr_at_rejects_a_step_that_is_not_a_count(step):
    sched = create_scheduler("cosine", base_lr=0.1, T_max=10)
    with pytest.raises((TypeError, ValueError), match="step"):
        sched.lr_at(step)


def test_lambda_factors_must_be_finite_and_non_negative():
    sched = create_scheduler("lambda", base_lr=0.1, lr_lambda=lambda s: 1.0 - s / 10)
    assert sched.lr_at(10) == 0.0
    with pytest.raises(ValueError, match=r"lr_lambda\(11\) returned -0\.1"):
        sched.lr_at(11)
    with pytest.raises(TypeError, match="lr_lambda"):
        create_scheduler("lambda", base_lr=0.1, lr_lambda=lambda s: "big")


def test_multiplicative_resumed_at_a_far_step_continues_at_once():
    factor = 0.999
    sched = create_scheduler("multiplicative", base_lr=0.1, lr_lambda=lambda s: factor)
    state = {**sched.state_dict(), "last_step": 10**12, "lr": 0.05}
    sched.load_state_dict(state)
    assert sched.step() == 0.05 * factor
    assert sched.lr_at(10**12 + 1) == 0.05 * factor
    with pytest.raises(ValueError, match="max_factors"):
        create_scheduler("multiplicative", base_lr=0.1, lr_lambda=lambda s: factor).lr_at(10**12)


def test_multiplicative_keeps_no_list_of_products():
    sched = create_scheduler("multiplicative", base_lr=1.0, lr_lambda=lambda s: 0.5)
    assert sched.lr_at(1000) == 0.5**1000
    assert all(not isinstance(v, list) for v in vars(sched).values())


# -- bad input changes nothing ---------------------------------------------------------------


def _plateau_after(metrics, **params):
    sched = create_scheduler("reduce_on_plateau", base_lr=0.1, patience=1, **params)
    for m in metrics:
        sched.step(m)
    return sched


@pytest.mark.parametrize("metric", ["abc", [1.0], None, np.array([1.0]), 1 + 2j, b"1"])
def test_plateau_bad_metric_changes_nothing(metric):
    sched = _plateau_after([1.0, 2.0])
    before = sched.state_dict()
    with pytest.raises(TypeError, match="metric"):
        sched.step(metric)
    assert sched.state_dict() == before and sched.last_step == 2


def test_plateau_takes_numpy_and_zero_dimensional_metrics():
    sched = _plateau_after([np.float32(1.0), np.array(2.0), 3])
    assert sched.last_step == 3 and sched.best == 1.0


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.pop("best"),
        lambda s: s.pop("lr"),
        lambda s: s.pop("last_step"),
        lambda s: s.update(lr=math.nan),
        lambda s: s.update(lr=-1.0),
        lambda s: s.update(last_step=-3),
        lambda s: s.update(last_step="7"),
        lambda s: s.update(best=math.nan),
        lambda s: s.update(num_bad_epochs="x"),
        lambda s: s.update(cooldown_counter=-1),
        lambda s: s.update(base_lr=0.2),
    ],
)
def test_load_state_dict_with_a_bad_state_loads_nothing(change):
    source = _plateau_after([3.0, 2.0, 2.0, 2.0, 2.0])
    target = _plateau_after([1.0])
    opt = StandIn(lr=123.0)
    target.bind(opt)
    before, opt_lr = target.state_dict(), opt.lr
    state = source.state_dict()
    change(state)
    with pytest.raises((TypeError, ValueError)):
        target.load_state_dict(state)
    assert target.state_dict() == before and opt.lr == opt_lr


@pytest.mark.parametrize("state", [None, [("lr", 0.1)], "state"])
def test_load_state_dict_wants_a_dict(state):
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        create_scheduler("constant", base_lr=0.1).load_state_dict(state)


def test_composite_loads_no_child_when_a_later_child_state_is_bad():
    def make():
        return create_scheduler(
            "sequential",
            base_lr=0.1,
            schedulers=[("linear", {}), ("reduce_on_plateau", {"patience": 0})],
            milestones=[2],
        )

    source = make()
    for m in [1.0, 1.0, 1.0, 2.0, 3.0]:
        source.step(m)
    state = source.state_dict()
    state["schedulers"][1]["best"] = "oops"
    state["schedulers"][0]["last_step"] = 4  # loads fine on its own
    target = make()
    before = target.state_dict()
    with pytest.raises(ValueError, match="best"):
        target.load_state_dict(state)
    assert target.state_dict() == before


class Downhill(Scheduler):
    """Goes below zero at step 3: the base refuses the rate."""

    def lr_at(self, step):
        return self.base_lr * (1 - step / 2.5)


def test_a_negative_rate_is_refused_before_the_optimizer_sees_it():
    params = [np.ones(3)]
    sgd = bnsgd_numba.SGD(params, lr=0.5)
    sched = Downhill(base_lr=1.0).bind(sgd)
    sched.step()
    sched.step()
    with pytest.raises(ValueError, match="learning rate -0.19.* at step 3"):
        sched.step()
    assert sched.last_step == 2 and sched.lr == sgd.lr == pytest.approx(0.2)


def test_a_momentum_the_optimizer_refuses_advances_nothing():
    # nesterov needs momentum > 0: the cycle reaches base_momentum=0 at its peak
    params = [np.ones(3)]
    sgd = bnsgd_numba.SGD(params, lr=0.5, momentum=0.9, nesterov=True)
    sched = create_scheduler(
        "cyclic", base_lr=0.01, max_lr=0.1, step_size_up=2, base_momentum=0.0, max_momentum=0.9
    ).bind(sgd)
    sched.step()
    with pytest.raises(ValueError, match="momentum"):
        sched.step()
    assert sched.last_step == 1
    assert (sgd.lr, sgd.momentum) == (sched.lr, sched.momentum) == pytest.approx((0.055, 0.45))


def test_a_refused_bind_binds_nothing():
    sgd = bnsgd_numba.SGD([np.ones(3)], lr=0.5, momentum=0.9, nesterov=True)
    sched = create_scheduler("one_cycle", max_lr=1.0, total_steps=10, base_momentum=0.0,
                             max_momentum=0.0)  # fmt: skip
    with pytest.raises(ValueError, match="momentum"):
        sched.bind(sgd)
    assert sched.optimizer is None and (sgd.lr, sgd.momentum) == (0.5, 0.9)


# -- base_lr from the optimizer, get_last_lr --------------------------------------------------


def test_base_lr_comes_from_the_bound_optimizer():
    sgd = bnsgd_numba.SGD([np.ones(3)], lr=0.3)
    sched = create_scheduler("cosine", T_max=10)
    with pytest.raises(TypeError, match="no base_lr yet"):
        sched.lr  # noqa: B018
    with pytest.raises(TypeError, match="no base_lr yet"):
        sched.step()
    assert sched.bind(sgd).base_lr == 0.3 and sgd.lr == 0.3
    assert sched.step() == sgd.lr == pytest.approx(0.3 * (1 + math.cos(math.pi / 10)) / 2)
    sched.bind(bnsgd_numba.SGD([np.ones(3)], lr=7.0))  # the first rate stays
    assert sched.base_lr == 0.3


def test_explicit_base_lr_overrides_the_optimizers_as_before():
    sgd = bnsgd_numba.SGD([np.ones(3)], lr=0.3)
    create_scheduler("step", base_lr=1.0, step_size=2).bind(sgd)
    assert sgd.lr == 1.0


def test_a_bad_optimizer_lr_is_named_and_binds_nothing():
    sched = create_scheduler("cosine", T_max=10)
    with pytest.raises(TypeError, match="optimizer.lr"):
        sched.bind(StandIn(lr="fast"))
    assert sched.optimizer is None and sched._base_lr is None


def test_composites_take_the_optimizers_rate_for_every_child():
    sched = create_scheduler(
        "sequential",
        schedulers=[("linear", {"total_iters": 2}), ("exponential", {"gamma": 0.5})],
        milestones=[2],
    ).bind(StandIn(lr=0.8))
    assert [sched.lr] + [sched.step() for _ in range(4)] == pytest.approx(
        [0.8 / 3, 0.8 * 2 / 3, 0.8, 0.4, 0.2]
    )
    child = create_scheduler("exponential", base_lr=0.2, gamma=0.5)
    adopted = create_scheduler("chained", schedulers=[child, "constant"])
    assert adopted.base_lr == 0.2 and adopted.schedulers[1].base_lr == 0.2


def test_a_resumed_scheduler_without_base_lr_takes_the_states():
    source = create_scheduler("exponential", base_lr=0.4, gamma=0.5)
    source.step()
    resumed = create_scheduler("exponential", gamma=0.5)
    resumed.load_state_dict(source.state_dict())
    opt = StandIn(lr=99.0)
    resumed.bind(opt)  # the optimizer's rate does not replace the state's
    assert resumed.base_lr == 0.4 and opt.lr == 0.2 and resumed.step() == 0.1


def test_get_last_lr_is_a_list_of_the_one_rate_as_in_torch():
    sched = create_scheduler("step", base_lr=1.0, step_size=1, gamma=0.5)
    assert sched.get_last_lr() == [1.0]
    sched.step()
    assert sched.get_last_lr() == [0.5]


def _every_example():
    for name in sorted(available_schedulers()):
        for i, params in enumerate(scheduler_registration(name).metadata["examples"]):
            yield pytest.param(name, dict(params), id=f"{name}[{i}]")


@pytest.mark.parametrize(("name", "params"), _every_example())
def test_every_builtin_can_take_its_rate_from_the_optimizer(name, params):
    base_lr = params.pop("base_lr", 0.2)  # None: one_cycle derives it
    given = create_scheduler(name, **params, **({} if base_lr is None else {"base_lr": base_lr}))
    waiting = create_scheduler(name, **params)
    opt = StandIn(lr=0.2 if base_lr is None else base_lr)
    waiting.bind(opt)
    assert waiting.base_lr == given.base_lr and opt.lr == given.lr == waiting.lr
    metric = 1.0 if given.requires_metric else None
    assert [waiting.step(metric) for _ in range(5)] == [given.step(metric) for _ in range(5)]


def test_no_schedule_accepts_a_step_past_two_to_the_63():
    sched = create_scheduler("one_cycle", max_lr=0.1, epochs=2**40, steps_per_epoch=2**40)
    assert sched.max_step == 2**80
    assert sched.lr_at(MAX_STEP) >= 0
    with pytest.raises(ValueError, match="past the last step"):
        sched.lr_at(MAX_STEP + 1)
    sched.load_state_dict({**sched.state_dict(), "last_step": MAX_STEP})
    with pytest.raises(ValueError, match="past its last step"):
        sched.step()
