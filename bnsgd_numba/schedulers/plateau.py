"""Built-in plugin: ``reduce_on_plateau``, the metric-driven schedule."""

from __future__ import annotations

import math
import numbers
from typing import Any

from bnsgd_numba.hookspecs import Register, hookimpl
from bnsgd_numba.schedulers._checks import (
    check_choice,
    check_integer,
    check_number,
    check_rate,
    check_step,
)
from bnsgd_numba.schedulers.base import Scheduler


class ReduceLROnPlateau(Scheduler):
    """Multiply the learning rate by ``factor`` when a metric stops improving.

    Parameters
    ----------
    base_lr : float, optional
        Initial learning rate; the bound optimizer's by default.
    mode : {"min", "max"}, default "min"
        Whether the metric should decrease or increase.
    factor : float, default 0.1
        Multiplier of a reduction, in ``[0, 1)``.
    patience : int, default 10
        Steps without improvement tolerated (>= 0); the next one reduces.
    threshold : float, default 1e-4
        Least change that counts as an improvement, finite and >= 0.
    threshold_mode : {"rel", "abs"}, default "rel"
        ``rel``: better than ``best * (1 -/+ threshold)``; ``abs``: better
        than ``best -/+ threshold``.
    cooldown : int, default 0
        Steps after a reduction during which bad steps are not counted, >= 0.
    min_lr : float, default 0
        Lower bound of the learning rate, finite and >= 0.
    eps : float, default 1e-8
        A reduction smaller than this is skipped; finite and >= 0.

    Notes
    -----
    The rules of torch's ReduceLROnPlateau for one parameter group.
    ``step(metric)`` is required; ``lr_at(step)`` is defined only for the
    current step, since the rate depends on the metrics seen. As in torch a
    NaN metric is never an improvement.
    """

    requires_metric = True

    def __init__(
        self,
        *,
        base_lr: float | None = None,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0,
        eps: float = 1e-8,
    ) -> None:
        self.mode = check_choice(mode, "mode", ("min", "max"))
        self.factor = check_number(factor, "factor", minimum=0.0, maximum=1.0, exclude_maximum=True)
        self.patience = check_integer(patience, "patience")
        self.threshold = check_rate(threshold, "threshold")
        self.threshold_mode = check_choice(threshold_mode, "threshold_mode", ("rel", "abs"))
        self.cooldown = check_integer(cooldown, "cooldown")
        self.min_lr = check_rate(min_lr, "min_lr")
        self.eps = check_rate(eps, "eps")
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        if step != self.last_step:
            raise ValueError(
                "reduce_on_plateau depends on the metrics seen: lr_at() is defined only for "
                f"the current step {self.last_step}, not {step}"
            )
        return self.base_lr if self._lr is None else self._lr

    def _is_better(self, a: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < self.best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < self.best - self.threshold
        if self.threshold_mode == "rel":
            return a > self.best * (self.threshold + 1.0)
        return a > self.best + self.threshold

    def _advance(self, metric: float | None) -> float:
        assert metric is not None
        if self._is_better(metric):
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        lr = self.lr
        if self.num_bad_epochs > self.patience:
            new_lr = max(lr * self.factor, self.min_lr)
            if lr - new_lr > self.eps:
                lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return lr

    def _extra_state(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        best = state["best"]
        if isinstance(best, bool) or not isinstance(best, numbers.Real) or math.isnan(best):
            raise ValueError(f"state_dict['best'] must be a number (inf allowed), got {best!r}")
        bad = check_integer(state["num_bad_epochs"], "state_dict['num_bad_epochs']")
        cooldown = check_integer(state["cooldown_counter"], "state_dict['cooldown_counter']")
        self.best, self.num_bad_epochs, self.cooldown_counter = float(best), bad, cooldown


@hookimpl
def bnsgd_register_schedulers(register: Register) -> None:
    """Register ``reduce_on_plateau``."""
    register(
        "reduce_on_plateau",
        ReduceLROnPlateau,
        examples=[{}, {"patience": 2, "cooldown": 3, "min_lr": 1e-4}, {"mode": "max"}],
    )
