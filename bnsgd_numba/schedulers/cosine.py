"""Built-in plugin: cosine schedules (PyTorch's two and Optax's warmup_cosine)."""

from __future__ import annotations

import math
import numbers

from bnsgd_numba.hookspecs import Register, hookimpl
from bnsgd_numba.schedulers._checks import check_integer, check_number, check_rate, check_step
from bnsgd_numba.schedulers.base import Scheduler, resolve_alias


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


class CosineAnnealingLR(Scheduler):
    """Cosine annealing to ``eta_min`` over ``T_max`` steps (torch CosineAnnealingLR).

    Parameters
    ----------
    base_lr : float, optional
        Learning rate at step 0; the bound optimizer's by default.
    T_max : int or float
        Steps of half a cosine period, finite and > 0.
    eta_min : float, default 0.0
        Learning rate at ``T_max``, finite and >= 0.

    Notes
    -----
    ``eta_min + (base_lr - eta_min) * (1 + cos(pi * step / T_max)) / 2``, the
    formula torch documents and implements as ``_get_closed_form_lr``; past
    ``T_max`` it rises again, as torch's does. torch's ``step()`` instead
    multiplies the previous value by a ratio of cosines (a recursion). Measured
    with torch 2.13 over 300 steps (T_max 1..59, 99..301, 1000, 5000; eta_min
    0, 1e-3, 0.0999) the recursion stays within 5e-13 relative of the closed
    form, and both give exactly 0 at ``T_max`` when ``eta_min == 0``. They
    part where torch's recursion carries in an outside change of the
    optimizer's rate or a resume through ``last_epoch``; this class always
    returns the closed form, so resuming is exact. The step is reduced
    modulo the period ``2 * T_max`` first, so any step gives a finite rate.
    """

    def __init__(
        self,
        *,
        base_lr: float | None = None,
        T_max: float,  # noqa: N803
        eta_min: float = 0.0,
    ) -> None:
        check_number(T_max, "T_max", minimum=0.0, exclude_minimum=True)
        # an integer period stays an int, so the modulo below is exact
        self.T_max = int(T_max) if isinstance(T_max, numbers.Integral) else float(T_max)
        self.eta_min = check_rate(eta_min, "eta_min")
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        return _cosine(self.base_lr, self.eta_min, step % (2 * self.T_max) / self.T_max)


class CosineAnnealingWarmRestarts(Scheduler):
    """Cosine annealing restarted every ``T_i`` steps, ``T_i`` growing by ``T_mult`` (SGDR).

    Parameters
    ----------
    base_lr : float, optional
        Learning rate at each restart; the bound optimizer's by default.
    T_0 : int
        Steps of the first period, >= 1.
    T_mult : int, default 1
        Factor by which each period is longer than the previous one, >= 1.
    eta_min : float, default 0.0
        Learning rate at the end of each period, finite and >= 0.

    Notes
    -----
    Integer steps, as torch's ``step()`` without an epoch: the period
    boundaries are found exactly with integer arithmetic.
    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", ICLR 2017.
    """

    def __init__(
        self,
        *,
        base_lr: float | None = None,
        T_0: int,  # noqa: N803
        T_mult: int = 1,  # noqa: N803
        eta_min: float = 0.0,
    ) -> None:
        self.T_0 = check_integer(T_0, "T_0", minimum=1)
        self.T_mult = check_integer(T_mult, "T_mult", minimum=1)
        self.eta_min = check_rate(eta_min, "eta_min")
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        if self.T_mult == 1:
            t_cur, t_i = step % self.T_0, self.T_0
        else:
            t_cur, t_i = step, self.T_0
            while t_cur >= t_i:
                t_cur -= t_i
                t_i *= self.T_mult
        return _cosine(self.base_lr, self.eta_min, t_cur / t_i)


class WarmupCosine(Scheduler):
    """Linear warmup then cosine decay, as ``optax.warmup_cosine_decay_schedule``.

    Parameters
    ----------
    init_value : float
        Learning rate at step 0, finite and >= 0.
    peak_value : float, optional
        Learning rate at the end of the warmup; ``base_lr`` is another name
        for it (give one of the two, or neither: then the bound optimizer's
        rate is the peak).
    warmup_steps : int
        Steps of the linear warmup (0: none).
    decay_steps : int
        Total length of the schedule, warmup included, > ``warmup_steps``.
    end_value : float, default 0.0
        Learning rate from ``decay_steps`` on, finite and >= 0.
    exponent : float, default 1.0
        Power of the cosine factor, finite and >= 0.
    base_lr : float, optional
        Same as ``peak_value``.

    Notes
    -----
    After the warmup, ``end_value + (peak_value - end_value) * c ** exponent``
    with ``c = (1 + cos(pi * t / (decay_steps - warmup_steps))) / 2``: Optax's
    ``peak_value * ((1 - alpha) * c ** exponent + alpha)``,
    ``alpha = end_value / peak_value``, without the division (a peak of 0
    is allowed).
    """

    def __init__(
        self,
        *,
        init_value: float,
        warmup_steps: int,
        decay_steps: int,
        peak_value: float | None = None,
        end_value: float = 0.0,
        exponent: float = 1.0,
        base_lr: float | None = None,
    ) -> None:
        peak = resolve_alias(base_lr, "peak_value", peak_value)
        self.init_value = check_rate(init_value, "init_value")
        self.warmup_steps = check_integer(warmup_steps, "warmup_steps")
        self.decay_steps = check_integer(decay_steps, "decay_steps", minimum=1)
        if self.decay_steps <= self.warmup_steps:
            raise ValueError(
                f"decay_steps must be > warmup_steps, got decay_steps={decay_steps!r}, "
                f"warmup_steps={warmup_steps!r}"
            )
        self.end_value = check_rate(end_value, "end_value")
        self.exponent = check_number(exponent, "exponent", minimum=0.0)
        super().__init__(base_lr=peak)

    @property
    def peak_value(self) -> float:
        """The learning rate at the end of the warmup (``base_lr``)."""
        return self.base_lr

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        peak = self.base_lr
        if step < self.warmup_steps:
            fraction = step / self.warmup_steps
            return (self.init_value - peak) * (1 - fraction) + peak
        span = self.decay_steps - self.warmup_steps
        count = min(step - self.warmup_steps, span)
        cosine = 0.5 * (1 + math.cos(math.pi * count / span))
        return self.end_value + (peak - self.end_value) * cosine**self.exponent


@hookimpl
def bnsgd_register_schedulers(register: Register) -> None:
    """Register the cosine schedules."""
    register(
        "cosine",
        CosineAnnealingLR,
        examples=[{"T_max": 100}, {"T_max": 300, "eta_min": 0.001}, {"T_max": 37}],
    )
    register(
        "cosine_warm_restarts",
        CosineAnnealingWarmRestarts,
        examples=[{"T_0": 10}, {"T_0": 7, "T_mult": 2, "eta_min": 0.001}, {"T_0": 50}],
    )
    register(
        "warmup_cosine",
        WarmupCosine,
        examples=[
            {"init_value": 0.0, "warmup_steps": 20, "decay_steps": 200},
            {"init_value": 0.01, "warmup_steps": 0, "decay_steps": 100, "end_value": 0.001},
        ],
    )
