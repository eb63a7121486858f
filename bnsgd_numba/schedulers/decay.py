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
from bnsgd_numba.schedulers.base import Scheduler


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class ConstantLR(Scheduler):
    """``base_lr * factor`` until ``total_iters`` steps, then ``base_lr`` (torch ConstantLR).

    Parameters
    ----------
    base_lr : float
        Learning rate after ``total_iters`` steps.
    factor : float, default 1/3
        Multiplier in ``[0, 1]`` before ``total_iters``.
    total_iters : int, default 5
        Number of steps the factor applies.
    """

    def __init__(self, *, base_lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> None:
        if factor > 1.0 or factor < 0:
            raise ValueError(f"factor must be in [0, 1], got {factor!r}")
        self.factor = float(factor)
        self.total_iters = int(total_iters)
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        return self.base_lr * (self.factor + (step >= self.total_iters) * (1 - self.factor))


class LinearLR(Scheduler):
    """Multiplier moving linearly from ``start_factor`` to ``end_factor`` (torch LinearLR).

    Parameters
    ----------
    base_lr : float
        Learning rate the factors multiply.
    start_factor : float, default 1/3
        Multiplier at step 0, in ``(0, 1]``.
    end_factor : float, default 1.0
        Multiplier from ``total_iters`` on, in ``[0, 1]``.
    total_iters : int, default 5
        Steps of the linear change.
    """

    def __init__(
        self,
        *,
        base_lr: float,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
    ) -> None:
        if start_factor > 1.0 or start_factor <= 0:
            raise ValueError(f"start_factor must be in (0, 1], got {start_factor!r}")
        if end_factor > 1.0 or end_factor < 0:
            raise ValueError(f"end_factor must be in [0, 1], got {end_factor!r}")
        self.start_factor = float(start_factor)
        self.end_factor = float(end_factor)
        self.total_iters = _positive_int("total_iters", total_iters)
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        progress = min(self.total_iters, step) / self.total_iters
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


class StepLR(Scheduler):
    """``base_lr * gamma ** (step // step_size)`` (torch StepLR).

    Parameters
    ----------
    base_lr : float
        Initial learning rate.
    step_size : int
        Steps between two decays.
    gamma : float, default 0.1
        Decay factor.
    """

    def __init__(self, *, base_lr: float, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = float(gamma)
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


class MultiStepLR(Scheduler):
    """Decay by ``gamma`` at each milestone, repeated ones repeatedly (torch MultiStepLR).

    Parameters
    ----------
    base_lr : float
        Initial learning rate.
    milestones : iterable of int
        Steps at which the learning rate is multiplied by ``gamma``.
    gamma : float, default 0.1
        Decay factor.
    """

    def __init__(self, *, base_lr: float, milestones: Iterable[int], gamma: float = 0.1) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma ** bisect_right(self.milestones, step)


class ExponentialLR(Scheduler):
    """``base_lr * gamma ** step`` (torch ExponentialLR).

    Parameters
    ----------
    base_lr : float
        Initial learning rate.
    gamma : float
        Factor per step.
    """

    def __init__(self, *, base_lr: float, gamma: float) -> None:
        self.gamma = float(gamma)
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        return self.base_lr * self.gamma**step


class PolynomialLR(Scheduler):
    """``base_lr * (1 - min(step, total_iters) / total_iters) ** power`` (torch PolynomialLR).

    Parameters
    ----------
    base_lr : float
        Initial learning rate.
    total_iters : int, default 5
        Steps to reach zero.
    power : float, default 1.0
        Exponent of the decay.
    """

    def __init__(self, *, base_lr: float, total_iters: int = 5, power: float = 1.0) -> None:
        self.total_iters = _positive_int("total_iters", total_iters)
        self.power = float(power)
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        return self.base_lr * (1.0 - min(self.total_iters, step) / self.total_iters) ** self.power


class LambdaLR(Scheduler):
    """``base_lr * lr_lambda(step)`` (torch LambdaLR).

    Parameters
    ----------
    base_lr : float
        Learning rate the function's value multiplies.
    lr_lambda : callable
        ``int -> float`` multiplier; not part of ``state_dict``.
    """

    def __init__(self, *, base_lr: float, lr_lambda: Callable[[int], float]) -> None:
        if not callable(lr_lambda):
            raise TypeError(f"lr_lambda must be callable, got {type(lr_lambda).__name__}")
        self.lr_lambda = lr_lambda
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        return self.base_lr * float(self.lr_lambda(step))


class MultiplicativeLR(Scheduler):
    """``base_lr * prod(lr_lambda(k) for k in 1..step)`` (torch MultiplicativeLR).

    Parameters
    ----------
    base_lr : float
        Initial learning rate.
    lr_lambda : callable
        ``int -> float`` factor applied at each step after the first;
        assumed pure (the products are cached).
    """

    def __init__(self, *, base_lr: float, lr_lambda: Callable[[int], float]) -> None:
        if not callable(lr_lambda):
            raise TypeError(f"lr_lambda must be callable, got {type(lr_lambda).__name__}")
        self.lr_lambda = lr_lambda
        self._products = [1.0]
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        # the same left-to-right products torch's step() forms, so values agree exactly
        while len(self._products) <= step:
            k = len(self._products)
            self._products.append(self._products[-1] * float(self.lr_lambda(k)))
        return self.base_lr * self._products[step]


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
