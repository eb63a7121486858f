"""Parameter checks the built-in schedulers share.

Each returns the value in the form the schedule computes with, or raises
``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, out of
range) naming the parameter. They import nothing heavy, so creating a
scheduler stays cheap.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

#: The largest step count a schedule accepts (the range of a signed 64-bit counter).
MAX_STEP = 2**63 - 1


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclude_minimum: bool = False,
    exclude_maximum: bool = False,
) -> float:
    """Return ``value`` as a finite float within the bounds, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    low = "" if minimum is None else f"{minimum!r} {'<' if exclude_minimum else '<='} "
    high = "" if maximum is None else f" {'<' if exclude_maximum else '<='} {maximum!r}"
    too_low = minimum is not None and (number <= minimum if exclude_minimum else number < minimum)
    too_high = maximum is not None and (number >= maximum if exclude_maximum else number > maximum)
    if not math.isfinite(number) or too_low or too_high:
        bounds = f", {low}{name}{high}" if low or high else ""
        raise ValueError(f"{name} must be a finite number{bounds}; got {value!r}")
    return number


def check_rate(value: Any, name: str) -> float:
    """Return a learning rate (or a rate-like value) as a finite float >= 0."""
    return check_number(value, name, minimum=0.0)


def check_integer(value: Any, name: str, *, minimum: int = 0) -> int:
    """Return ``value`` as an int >= ``minimum`` (not a bool, not a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    number = int(value)
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {number}")
    return number


def check_flag(value: Any, name: str) -> bool:
    """Return ``value`` if it is True or False (numpy's too), else raise TypeError."""
    if value is True or value is False or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ValueError listing them."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(repr(c) for c in options)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value


def check_callable(value: Any, name: str) -> Callable[..., Any]:
    """Return ``value`` if it is callable, else raise TypeError."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__} {value!r}")
    return value


def call_factor(function: Callable[[Any], Any], name: str, step: int) -> float:
    """Return ``function(step)`` checked by :func:`check_factor`; arithmetic errors name it."""
    try:
        value = function(step)
    except ArithmeticError as exc:  # 10.0 ** step overflowing: no rate at this step
        raise ValueError(f"{name}({step}) raised {type(exc).__name__}: {exc}") from exc
    return check_factor(value, name, step)


def check_factor(value: Any, name: str, step: int) -> float:
    """Return a user function's result at ``step`` as a finite float >= 0, or raise naming it."""
    if type(value) is float and 0.0 <= value < math.inf:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name}({step}) returned {type(value).__name__} {value!r}, not a real number"
        )
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name}({step}) returned {number!r}; it must be finite and >= 0")
    return number


def check_step(step: Any, max_step: int | None = None, name: str = "step") -> int:
    """Return ``step`` as an int in ``[0, max_step]`` (``MAX_STEP`` without one)."""
    number = check_integer(step, name)
    last = MAX_STEP if max_step is None else min(max_step, MAX_STEP)
    if number > last:
        raise ValueError(f"{name} {number} is past the last step {last} of this schedule")
    return number


def power_or_raise(base: float, exponent: float | int, what: str) -> float:
    """Return ``base ** exponent``; an overflow raises ValueError naming ``what``."""
    try:
        return float(base**exponent)
    except OverflowError:
        raise ValueError(f"{what}: {base!r} ** {exponent!r} overflows a float") from None


def finite_rate(value: float, what: str) -> float:
    """Return ``value`` if finite and >= 0, else raise ValueError saying ``what`` gave it."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} gives the learning rate {value!r}; it must be finite and >= 0")
    return value
