"""Built-in plugin: cosine schedules (PyTorch's two and Optax's warmup_cosine)."""

from __future__ import annotations

import math

from bnsgd_numba.hookspecs import Register, hookimpl
from bnsgd_numba.schedulers.base import Scheduler, resolve_alias


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


class CosineAnnealingLR(Scheduler):
    """Cosine annealing to ``eta_min`` over ``T_max`` steps (torch CosineAnnealingLR).

    Parameters
    ----------
    base_lr : float
        Learning rate at step 0.
    T_max : int
        Steps of half a cosine period.
    eta_min : float, default 0.0
        Learning rate at ``T_max``.

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
    returns the closed form, so resuming is exact.
    """

    def __init__(self, *, base_lr: float, T_max: int, eta_min: float = 0.0) -> None:  # noqa: N803
        if isinstance(T_max, bool) or not isinstance(T_max, (int, float)) or T_max <= 0:
            raise ValueError(f"T_max must be a number > 0, got {T_max!r}")
        self.T_max = T_max
        self.eta_min = float(eta_min)
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        return _cosine(self.base_lr, self.eta_min, step / self.T_max)


class CosineAnnealingWarmRestarts(Scheduler):
    """Cosine annealing restarted every ``T_i`` steps, ``T_i`` growing by ``T_mult`` (SGDR).

    Parameters
    ----------
    base_lr : float
        Learning rate at each restart.
    T_0 : int
        Steps of the first period.
    T_mult : int, default 1
        Factor by which each period is longer than the previous one.
    eta_min : float, default 0.0
        Learning rate at the end of each period.

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
        base_lr: float,
        T_0: int,  # noqa: N803
        T_mult: int = 1,  # noqa: N803
        eta_min: float = 0.0,
    ) -> None:
        if isinstance(T_0, bool) or not isinstance(T_0, int) or T_0 <= 0:
            raise ValueError(f"Expected positive integer T_0, but got {T_0!r}")
        if isinstance(T_mult, bool) or not isinstance(T_mult, int) or T_mult < 1:
            raise ValueError(f"Expected integer T_mult >= 1, but got {T_mult!r}")
        self.T_0 = T_0
        self.T_mult = T_mult
        self.eta_min = float(eta_min)
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
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
        Learning rate at step 0.
    peak_value : float, optional
        Learning rate at the end of the warmup; ``base_lr`` is another name
        for it (give one of the two).
    warmup_steps : int
        Steps of the linear warmup (0: none).
    decay_steps : int
        Total length of the schedule, warmup included.
    end_value : float, default 0.0
        Learning rate from ``decay_steps`` on.
    exponent : float, default 1.0
        Power of the cosine factor.
    base_lr : float, optional
        Same as ``peak_value``.
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
        self.peak_value = resolve_alias(base_lr, "peak_value", peak_value)
        self.init_value = float(init_value)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        if self.warmup_steps < 0 or self.decay_steps <= self.warmup_steps:
            raise ValueError(
                f"need 0 <= warmup_steps < decay_steps, got {warmup_steps!r}, {decay_steps!r}"
            )
        self.end_value = float(end_value)
        self.exponent = float(exponent)
        super().__init__(base_lr=self.peak_value)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            fraction = step / self.warmup_steps
            return (self.init_value - self.peak_value) * (1 - fraction) + self.peak_value
        span = self.decay_steps - self.warmup_steps
        count = min(step - self.warmup_steps, span)
        cosine = 0.5 * (1 + math.cos(math.pi * count / span))
        alpha = self.end_value / self.peak_value if self.peak_value else 0.0
        return self.peak_value * ((1 - alpha) * cosine**self.exponent + alpha)


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
