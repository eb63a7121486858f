"""What SGD's facade and its backends share: the validated hyperparameters.

The checks read Python scalars only, so the CPU and CUDA paths apply the same
rules with the same messages before anything is written.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnsgd_numba._core.checks import check_flag, check_non_negative

MODE_PLAIN = 0
"""No momentum: ``p -= lr * g``."""
MODE_FIRST = 1
"""Momentum, first step: the buffer becomes the gradient (no dampening)."""
MODE_MOMENTUM = 2
"""Momentum, later steps: ``buf = momentum * buf + (1 - dampening) * g``."""

NORM_L2, NORM_L1, NORM_INF, NORM_P = 0, 1, 2, 3
"""Kinds of norm partials: sums of squares, of absolute values, maxima of
absolute values, sums of ``|g| ** p``."""


@dataclass(frozen=True)
class Hyperparameters:
    """Validated SGD hyperparameters (Python floats and bools)."""

    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    decoupled_weight_decay: bool
    maximize: bool

    def as_dict(self) -> dict[str, Any]:
        """Return the hyperparameters as a plain dict (the keyword arguments of SGD)."""
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
            "decoupled_weight_decay": self.decoupled_weight_decay,
            "maximize": self.maximize,
        }


def check_hyperparameters(
    *,
    lr: Any,
    momentum: Any = 0.0,
    dampening: Any = 0.0,
    weight_decay: Any = 0.0,
    nesterov: Any = False,
    decoupled_weight_decay: Any = False,
    maximize: Any = False,
) -> Hyperparameters:
    """Validate SGD's hyperparameters; raise TypeError/ValueError naming the bad one."""
    hyper = Hyperparameters(
        lr=check_non_negative(lr, "lr"),
        momentum=check_non_negative(momentum, "momentum"),
        dampening=check_non_negative(dampening, "dampening"),
        weight_decay=check_non_negative(weight_decay, "weight_decay"),
        nesterov=check_flag(nesterov, "nesterov"),
        decoupled_weight_decay=check_flag(decoupled_weight_decay, "decoupled_weight_decay"),
        maximize=check_flag(maximize, "maximize"),
    )
    if hyper.nesterov and (hyper.momentum <= 0.0 or hyper.dampening != 0.0):
        raise ValueError(
            "nesterov=True requires momentum > 0 and dampening == 0, got "
            f"momentum={hyper.momentum!r}, dampening={hyper.dampening!r}"
        )
    return hyper


def update_mode(momentum: float, buffer_exists: bool) -> int:
    """Kernel mode for a step: plain, first momentum step, or later momentum step."""
    if momentum == 0.0:
        return MODE_PLAIN
    return MODE_MOMENTUM if buffer_exists else MODE_FIRST


def check_limit(value: Any, name: str) -> float:
    """Return a clipping limit as a float >= 0 (inf allowed), or raise naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number) or number < 0.0:
        raise ValueError(f"{name} must be >= 0 (inf allowed), got {number!r}")
    return number


def check_norm_type(norm_type: Any) -> tuple[int, float]:
    """Return ``(kind, order)`` of a norm order > 0 or inf, or raise naming ``norm_type``."""
    if isinstance(norm_type, (bool, np.bool_)):
        raise TypeError(f"norm_type must be a number or 'inf', got {norm_type!r}")
    try:
        order = float(norm_type)
    except (TypeError, ValueError):
        raise TypeError(f"norm_type must be a number or 'inf', got {norm_type!r}") from None
    if not order > 0.0:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type!r}")
    if order == 2.0:
        return NORM_L2, order
    if order == 1.0:
        return NORM_L1, order
    return (NORM_INF if math.isinf(order) else NORM_P), order
