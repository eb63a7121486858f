"""Built-in plugin: PyTorch's factor and decay schedules in closed form.

``constant``, ``linear``, ``step``, ``multistep``, ``exponential``,
``polynomial``, ``lambda`` and ``multiplicative`` take the keyword names and
defaults of the ``torch.optim.lr_scheduler`` class of the same meaning, and
return the value its ``_get_closed_form_lr`` (or, where it has none, its
``step()``) gives after the same number of steps.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable

from bnsgd_numba.hookspecs import Register, hookimpl
from bnsgd_numba.schedulers._checks import (
    call_factor,
    check_callable,
    check_integer,
    check_number,
    check_rate,
    check_step,
    finite_rate,
    power_or_raise,
)
from bnsgd_numba.schedulers.base import Scheduler


def _scaled(sched: Scheduler, factor: float, step: int) -> float:
    """``base_lr * factor``, checked: finite and >= 0."""
    return finite_rate(sched.base_lr * factor, f"{type(sched).__name__} at step {step}")


def _decayed(sched: Scheduler, gamma: float, exponent: int, step: int) -> float:
    """``base_lr * gamma ** exponent``; an overflow raises ValueError naming the step."""
    what = f"{type(sched).__name__} at step {step}"
    return finite_rate(sched.base_lr * power_or_raise(gamma, exponent, what), what)


class ConstantLR(Scheduler):
    """``base_lr * factor`` until ``total_iters`` steps, then ``base_lr`` (torch ConstantLR).

    Parameters
    ----------
    base_lr : float, optional
        Learning rate after ``total_iters`` steps; the bound optimizer's by default.
    factor : float, default 1/3
        Multiplier in ``[0, 1]`` before ``total_iters``.
    total_iters : int, default 5
        Number of steps the factor applies, >= 0.
    """

    def __init__(
        self, *, base_lr: float | None = None, factor: float = 1.0 / 3, total_iters: int = 5
    ) -> None:
        self.factor = check_number(factor, "factor", minimum=0.0, maximum=1.0)
        self.total_iters = check_integer(total_iters, "total_iters")
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        return self.base_lr * (self.factor + (step >= self.total_iters) * (1 - self.factor))


class LinearLR(Scheduler):
    """Multiplier moving linearly from ``start_factor`` to ``end_factor`` (torch LinearLR).

    Parameters
    ----------
    base_lr : float, optional
        Learning rate the factors multiply; the bound optimizer's by default.
    start_factor : float, default 1/3
        Multiplier at step 0, in ``(0, 1]``.
    end_factor : float, default 1.0
        Multiplier from ``total_iters`` on, in ``[0, 1]``.
    total_iters : int, default 5
        Steps of the linear change, >= 1.
    """

    def __init__(
        self,
        *,
        base_lr: float | None = None,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
    ) -> None:
        self.start_factor = check_number(
            start_factor, "start_factor", minimum=0.0, maximum=1.0, exclude_minimum=True
        )
        self.end_factor = check_number(end_factor, "end_factor", minimum=0.0, maximum=1.0)
        self.total_iters = check_integer(total_iters, "total_iters", minimum=1)
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        progress = min(self.total_iters, step) / self.total_iters
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


class StepLR(Scheduler):
    """``base_lr * gamma ** (step // step_size)`` (torch StepLR).

    Parameters
    ----------
    base_lr : float, optional
        Initial learning rate; the bound optimizer's by default.
    step_size : int
        Steps between two decays, >= 1.
    gamma : float, default 0.1
        Decay factor, finite and >= 0. Above 1 the rate grows, and a step
        where it overflows a float raises ``ValueError``.
    """

    def __init__(self, *, base_lr: float | None = None, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = check_integer(step_size, "step_size", minimum=1)
        self.gamma = check_rate(gamma, "gamma")
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        return _decayed(self, self.gamma, step // self.step_size, step)


class MultiStepLR(Scheduler):
    """Decay by ``gamma`` at each milestone, repeated ones repeatedly (torch MultiStepLR).

    Parameters
    ----------
    base_lr : float, optional
        Initial learning rate; the bound optimizer's by default.
    milestones : iterable of int
        Steps (>= 0) at which the learning rate is multiplied by ``gamma``.
    gamma : float, default 0.1
        Decay factor, finite and >= 0.
    """

    def __init__(
        self, *, base_lr: float | None = None, milestones: Iterable[int], gamma: float = 0.1
    ) -> None:
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
            raise TypeError(
                f"milestones must be a list of integers, got {type(milestones).__name__} "
                f"{milestones!r}"
            )
        self.milestones = sorted(
            check_integer(m, f"milestones[{i}]") for i, m in enumerate(milestones)
        )
        self.gamma = check_rate(gamma, "gamma")
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        return _decayed(self, self.gamma, bisect_right(self.milestones, step), step)


class ExponentialLR(Scheduler):
    """``base_lr * gamma ** step`` (torch ExponentialLR).

    Parameters
    ----------
    base_lr : float, optional
        Initial learning rate; the bound optimizer's by default.
    gamma : float
        Factor per step, finite and >= 0. Above 1 the rate grows, and a
        step where it overflows a float raises ``ValueError``.
    """

    def __init__(self, *, base_lr: float | None = None, gamma: float) -> None:
        self.gamma = check_rate(gamma, "gamma")
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        return _decayed(self, self.gamma, step, step)


class PolynomialLR(Scheduler):
    """``base_lr * (1 - min(step, total_iters) / total_iters) ** power`` (torch PolynomialLR).

    Parameters
    ----------
    base_lr : float, optional
        Initial learning rate; the bound optimizer's by default.
    total_iters : int, default 5
        Steps to reach zero, >= 1.
    power : float, default 1.0
        Exponent of the decay, finite and >= 0 (a negative one divides by
        zero at ``total_iters``).
    """

    def __init__(
        self, *, base_lr: float | None = None, total_iters: int = 5, power: float = 1.0
    ) -> None:
        self.total_iters = check_integer(total_iters, "total_iters", minimum=1)
        self.power = check_number(power, "power", minimum=0.0)
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        return self.base_lr * (1.0 - min(self.total_iters, step) / self.total_iters) ** self.power


class LambdaLR(Scheduler):
    """``base_lr * lr_lambda(step)`` (torch LambdaLR).

    Parameters
    ----------
    base_lr : float, optional
        Learning rate the function's value multiplies; the bound optimizer's
        by default.
    lr_lambda : callable
        ``int -> float`` multiplier, finite and >= 0 at every step (a step
        where it is not raises ``ValueError``); not part of ``state_dict``.
    """

    def __init__(self, *, base_lr: float | None = None, lr_lambda: Callable[[int], float]) -> None:
        self.lr_lambda = check_callable(lr_lambda, "lr_lambda")
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        return _scaled(self, call_factor(self.lr_lambda, "lr_lambda", step), step)


class MultiplicativeLR(Scheduler):
    """``base_lr * prod(lr_lambda(k) for k in 1..step)`` (torch MultiplicativeLR).

    Parameters
    ----------
    base_lr : float, optional
        Initial learning rate; the bound optimizer's by default.
    lr_lambda : callable
        ``int -> float`` factor applied at each step after the first, finite
        and >= 0; assumed pure.

    Notes
    -----
    :meth:`step` multiplies the current rate by ``lr_lambda(step)``, as
    torch's does, so a schedule resumed at any step continues at once.
    :meth:`lr_at` multiplies the factors from the nearest step it knows
    (0, the current step, or the last one it computed), in the same order
    and with the same rounding; it refuses (``ValueError``) a step more than
    :attr:`max_factors` factors away from all of them.
    """

    #: The most factors one call of :meth:`lr_at` multiplies.
    max_factors: int = 10**7

    def __init__(self, *, base_lr: float | None = None, lr_lambda: Callable[[int], float]) -> None:
        self.lr_lambda = check_callable(lr_lambda, "lr_lambda")
        self._known: tuple[int, float] | None = None
        super().__init__(base_lr=base_lr)

    def _factor(self, step: int) -> float:
        return call_factor(self.lr_lambda, "lr_lambda", step)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        start, value = 0, self.base_lr
        for known in (self._known, (self.last_step, self._lr)):
            if known is not None and known[1] is not None and start < known[0] <= step:
                start, value = known
        if step - start > self.max_factors:
            raise ValueError(
                f"MultiplicativeLR.lr_at({step}) would multiply {step - start} factors "
                f"(more than max_factors={self.max_factors}); step() or resume there instead"
            )
        for k in range(start + 1, step + 1):
            value *= self._factor(k)
        value = finite_rate(value, f"MultiplicativeLR at step {step}")
        self._known = (step, value)
        return value

    def _advance(self, metric: float | None) -> float:
        step = self.last_step
        return finite_rate(self.lr * self._factor(step), f"MultiplicativeLR at step {step}")


def _decay_to_tenth(step: int) -> float:
    return 0.1 ** (step / 300)


def _factor_095(step: int) -> float:
    return 0.95


@hookimpl
def bnsgd_register_schedulers(register: Register) -> None:
    """Register the factor and decay schedules."""
    register("constant", ConstantLR, examples=[{}, {"factor": 0.5, "total_iters": 40}])
    register(
        "linear",
        LinearLR,
        examples=[{}, {"start_factor": 0.1, "end_factor": 0.9, "total_iters": 100}],
    )
    register("step", StepLR, examples=[{"step_size": 30}, {"step_size": 7, "gamma": 0.5}])
    register(
        "multistep",
        MultiStepLR,
        examples=[{"milestones": [30, 80]}, {"milestones": [10, 10, 200], "gamma": 0.7}],
    )
    register("exponential", ExponentialLR, examples=[{"gamma": 0.99}, {"gamma": 0.9}])
    register(
        "polynomial",
        PolynomialLR,
        examples=[{}, {"total_iters": 250, "power": 2.0}, {"total_iters": 100, "power": 0.5}],
    )
    register("lambda", LambdaLR, examples=[{"lr_lambda": _decay_to_tenth}])
    register("multiplicative", MultiplicativeLR, examples=[{"lr_lambda": _factor_095}])


__all__ = [
    "ConstantLR",
    "ExponentialLR",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "PolynomialLR",
    "StepLR",
]
