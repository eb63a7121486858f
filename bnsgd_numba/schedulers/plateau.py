"""Built-in plugin: ``reduce_on_plateau``, the metric-driven schedule."""

from __future__ import annotations

import math
from typing import Any

from bnsgd_numba.hookspecs import Register, hookimpl
from bnsgd_numba.schedulers.base import Scheduler


class ReduceLROnPlateau(Scheduler):
    """Multiply the learning rate by ``factor`` when a metric stops improving.

    Parameters
    ----------
    base_lr : float
        Initial learning rate.
    mode : {"min", "max"}, default "min"
        Whether the metric should decrease or increase.
    factor : float, default 0.1
        Multiplier of a reduction, < 1.
    patience : int, default 10
        Steps without improvement tolerated; the next one reduces.
    threshold : float, default 1e-4
        Least change that counts as an improvement.
    threshold_mode : {"rel", "abs"}, default "rel"
        ``rel``: better than ``best * (1 -/+ threshold)``; ``abs``: better
        than ``best -/+ threshold``.
    cooldown : int, default 0
        Steps after a reduction during which bad steps are not counted.
    min_lr : float, default 0
        Lower bound of the learning rate.
    eps : float, default 1e-8
        A reduction smaller than this is skipped.

    Notes
    -----
    The rules of torch's ReduceLROnPlateau for one parameter group.
    ``step(metric)`` is required; ``lr_at(step)`` is defined only for the
    current step, since the rate depends on the metrics seen.
    """

    requires_metric = True

    def __init__(
        self,
        *,
        base_lr: float,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0,
        eps: float = 1e-8,
    ) -> None:
        if factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r} is unknown!")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold mode {threshold_mode!r} is unknown!")
        self.mode = mode
        self.factor = float(factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.threshold_mode = threshold_mode
        self.cooldown = int(cooldown)
        self.min_lr = float(min_lr)
        self.eps = float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        if step != self.last_step:
            raise ValueError(
                "reduce_on_plateau depends on the metrics seen: lr_at() is defined only for "
                f"the current step {self.last_step}, not {step}"
            )
        return getattr(self, "_lr", self.base_lr)

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
        lr = self._lr
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
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])


@hookimpl
def bnsgd_register_schedulers(register: Register) -> None:
    """Register ``reduce_on_plateau``."""
    register(
        "reduce_on_plateau",
        ReduceLROnPlateau,
        examples=[{}, {"patience": 2, "cooldown": 3, "min_lr": 1e-4}, {"mode": "max"}],
    )
