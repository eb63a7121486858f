"""Built-in plugin: cyclical schedules, ``cyclic`` and ``one_cycle`` (with momentum)."""

from __future__ import annotations

import math
from collections.abc import Callable

from bnsgd_numba.hookspecs import Register, hookimpl
from bnsgd_numba.schedulers._checks import (
    call_factor,
    check_callable,
    check_choice,
    check_flag,
    check_integer,
    check_number,
    check_rate,
    check_step,
    finite_rate,
    power_or_raise,
)
from bnsgd_numba.schedulers.base import Scheduler


class CyclicLR(Scheduler):
    """Cyclical learning rate between ``base_lr`` and ``max_lr`` (torch CyclicLR).

    Parameters
    ----------
    base_lr : float, optional
        Lower bound of the cycle; the bound optimizer's rate by default.
    max_lr : float
        Upper bound of the cycle (reached only with a scale of 1), finite
        and >= 0.
    step_size_up : int, default 2000
        Steps of the rising half, >= 1.
    step_size_down : int, optional
        Steps of the falling half, >= 0; defaults to ``step_size_up``.
    mode : {"triangular", "triangular2", "exp_range"}, default "triangular"
        Amplitude policy: constant, halved each cycle, or ``gamma ** step``.
    gamma : float, default 1.0
        Base of ``exp_range``, finite and >= 0 (above 1 the amplitude grows
        until a step where it overflows raises ``ValueError``).
    scale_fn : callable, optional
        Custom amplitude policy (overrides ``mode``), of the cycle number or
        of the step as ``scale_mode`` says; finite and >= 0.
    scale_mode : {"cycle", "iterations"}, default "cycle"
        Argument of ``scale_fn``; ignored without one.
    cycle_momentum : bool, default True
        Cycle the bound optimizer's momentum inversely to the learning rate.
    base_momentum, max_momentum : float, default 0.8, 0.9
        Bounds of the momentum cycle, finite and >= 0.

    Notes
    -----
    Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
    With ``cycle_momentum`` (the default, as in torch) the bound optimizer
    needs a ``momentum`` attribute.
    """

    def __init__(
        self,
        *,
        base_lr: float | None = None,
        max_lr: float,
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
    ) -> None:
        if scale_fn is None:
            check_choice(mode, "mode", ("triangular", "triangular2", "exp_range"))
        else:
            check_callable(scale_fn, "scale_fn")
        check_choice(scale_mode, "scale_mode", ("cycle", "iterations"))
        up = check_integer(step_size_up, "step_size_up", minimum=1)
        down = up if step_size_down is None else check_integer(step_size_down, "step_size_down")
        self.max_lr = check_rate(max_lr, "max_lr")
        self.total_size = float(up + down)
        self.step_ratio = up / self.total_size
        self.mode = mode
        self.gamma = check_rate(gamma, "gamma")
        self.scale_fn = scale_fn
        self.scale_mode = (
            scale_mode
            if scale_fn is not None
            else ("iterations" if mode == "exp_range" else "cycle")
        )
        self.cycle_momentum = check_flag(cycle_momentum, "cycle_momentum")
        self.base_momentum = check_rate(base_momentum, "base_momentum")
        self.max_momentum = check_rate(max_momentum, "max_momentum")
        super().__init__(base_lr=base_lr)

    def _scale(self, x: int, step: int) -> float:
        if self.scale_fn is not None:
            return call_factor(self.scale_fn, "scale_fn", x)
        if self.mode == "triangular":
            return 1.0
        what = f"CyclicLR at step {step}"
        if self.mode == "triangular2":
            return power_or_raise(0.5, x - 1, what)
        return power_or_raise(self.gamma, x, what)

    def _position(self, step: int) -> tuple[float, float]:
        step = check_step(step)
        cycle = math.floor(1 + step / self.total_size)
        x = 1.0 + step / self.total_size - cycle
        if x <= self.step_ratio:
            factor = x / self.step_ratio
        else:
            factor = (x - 1) / (self.step_ratio - 1)
        scale = self._scale(cycle if self.scale_mode == "cycle" else step, step)
        return factor, scale

    def lr_at(self, step: int) -> float:
        factor, scale = self._position(step)
        lr = self.base_lr + (self.max_lr - self.base_lr) * factor * scale
        return finite_rate(lr, f"CyclicLR at step {step}")

    def momentum_at(self, step: int) -> float | None:
        if not self.cycle_momentum:
            return None
        factor, scale = self._position(step)
        momentum = self.max_momentum - (self.max_momentum - self.base_momentum) * factor * scale
        return check_number(momentum, f"CyclicLR momentum at step {step}", minimum=0.0)


class OneCycleLR(Scheduler):
    """The 1cycle policy: warm up to ``max_lr``, then anneal far below the start (torch OneCycleLR).

    Parameters
    ----------
    max_lr : float
        Peak learning rate, finite and >= 0.
    total_steps : int, optional
        Length of the cycle, >= 1; or give ``epochs`` and ``steps_per_epoch``.
    epochs, steps_per_epoch : int, optional
        ``total_steps = epochs * steps_per_epoch``.
    pct_start : float, default 0.3
        Fraction of the cycle spent rising, in ``[0, 1]``.
    anneal_strategy : {"cos", "linear"}, default "cos"
        Interpolation within a phase.
    cycle_momentum : bool, default True
        Cycle the bound optimizer's momentum inversely to the learning rate.
    base_momentum, max_momentum : float, default 0.85, 0.95
        Bounds of the momentum cycle, finite and >= 0.
    div_factor : float, default 25.0
        Initial learning rate is ``max_lr / div_factor``; finite and > 0.
    final_div_factor : float, default 1e4
        Final learning rate is the initial one ``/ final_div_factor``;
        finite and > 0.
    three_phase : bool, default False
        Rise, fall back to the initial rate, then anneal (fast.ai's variant).
    base_lr : float, optional
        Must equal ``max_lr / div_factor`` if given: as in torch the schedule
        starts there, whatever the optimizer's rate was.

    Notes
    -----
    Smith & Topin, "Super-Convergence", 2018. The schedule ends at step
    ``total_steps``; stepping past it raises ``ValueError``, as in torch.
    As in torch the phases end at step ``total_steps - 1``; step
    ``total_steps`` holds that final value, ``max_lr / div_factor /
    final_div_factor`` (torch extrapolates the last phase one step further,
    which with ``anneal_strategy="linear"`` gives a negative rate).
    """

    def __init__(
        self,
        *,
        max_lr: float,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        base_lr: float | None = None,
    ) -> None:
        per_epoch = {
            key: check_integer(value, key, minimum=1)
            for key, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch))
            if value is not None
        }
        product = (
            per_epoch["epochs"] * per_epoch["steps_per_epoch"] if len(per_epoch) == 2 else None
        )
        if total_steps is not None:
            self.total_steps = check_integer(total_steps, "total_steps", minimum=1)
            if product is not None and product != self.total_steps:
                raise ValueError(
                    f"total_steps={total_steps!r} but epochs * steps_per_epoch = {product}; "
                    "give one of the two"
                )
        elif product is not None:
            self.total_steps = product
        else:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        self.pct_start = check_number(pct_start, "pct_start", minimum=0.0, maximum=1.0)
        self.anneal_strategy = check_choice(anneal_strategy, "anneal_strategy", ("cos", "linear"))
        self.max_lr = check_rate(max_lr, "max_lr")
        div_factor = check_number(div_factor, "div_factor", minimum=0.0, exclude_minimum=True)
        final_div_factor = check_number(
            final_div_factor, "final_div_factor", minimum=0.0, exclude_minimum=True
        )
        self.initial_lr = check_rate(self.max_lr / div_factor, "max_lr / div_factor")
        self.min_lr = check_rate(
            self.initial_lr / final_div_factor, "max_lr / div_factor / final_div_factor"
        )
        if base_lr is not None and not math.isclose(
            check_rate(base_lr, "base_lr"), self.initial_lr, rel_tol=1e-12
        ):
            raise ValueError(
                f"one_cycle starts at max_lr / div_factor = {self.initial_lr!r}; "
                f"base_lr={base_lr!r} disagrees (leave it out)"
            )
        self.cycle_momentum = check_flag(cycle_momentum, "cycle_momentum")
        self.base_momentum = check_rate(base_momentum, "base_momentum")
        self.max_momentum = check_rate(max_momentum, "max_momentum")
        self.three_phase = check_flag(three_phase, "three_phase")
        self.max_step = self.total_steps
        n = self.total_steps
        rise_end = float(self.pct_start * n) - 1
        lr, top, low = self.initial_lr, self.max_lr, self.min_lr
        hi_m, lo_m = self.max_momentum, self.base_momentum
        if self.three_phase:
            self._phases = [
                (rise_end, lr, top, hi_m, lo_m),
                (float(2 * self.pct_start * n) - 2, top, lr, lo_m, hi_m),
                (n - 1, lr, low, hi_m, hi_m),
            ]
        else:
            self._phases = [(rise_end, lr, top, hi_m, lo_m), (n - 1, top, low, lo_m, hi_m)]
        super().__init__(base_lr=self.initial_lr)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _values(self, step: int) -> tuple[float, float]:
        step = check_step(step, self.total_steps)
        start_step = 0.0
        for i, (end_step, lr0, lr1, m0, m1) in enumerate(self._phases):
            if step <= end_step or i == len(self._phases) - 1:
                # torch's last phase ends at total_steps - 1; the step after it, and an
                # empty phase, hold the phase's end value instead of extrapolating past it
                span = end_step - start_step
                pct = 1.0 if span <= 0 else min(max((step - start_step) / span, 0.0), 1.0)
                return self._anneal(lr0, lr1, pct), self._anneal(m0, m1, pct)
            start_step = end_step
        raise AssertionError("unreachable")  # pragma: no cover

    def lr_at(self, step: int) -> float:
        return self._values(step)[0]

    def momentum_at(self, step: int) -> float | None:
        return self._values(step)[1] if self.cycle_momentum else None


@hookimpl
def bnsgd_register_schedulers(register: Register) -> None:
    """Register ``cyclic`` and ``one_cycle``."""
    register(
        "cyclic",
        CyclicLR,
        examples=[
            {"max_lr": 1.0, "step_size_up": 20},
            {"max_lr": 0.5, "step_size_up": 10, "step_size_down": 30, "mode": "triangular2"},
            {"max_lr": 0.4, "step_size_up": 25, "mode": "exp_range", "gamma": 0.99},
        ],
    )
    register(
        "one_cycle",
        OneCycleLR,
        examples=[
            # base_lr None: derived from max_lr / div_factor, as in torch
            {"base_lr": None, "max_lr": 1.0, "total_steps": 300},
            {"base_lr": None, "max_lr": 0.3, "total_steps": 320, "anneal_strategy": "linear"},
            {
                "base_lr": 0.02,
                "max_lr": 0.5,
                "epochs": 10,
                "steps_per_epoch": 31,
                "three_phase": True,
                "div_factor": 25.0,
            },
        ],
    )
