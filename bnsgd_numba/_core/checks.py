"""Argument checks every concept package shares, independent of the backend.

Each returns the value in the form the kernels take (a Python float, bool or
int, a NumPy dtype) or raises ``TypeError``/``ValueError`` naming the
argument. They read plain values only, never an array's memory, so the CPU
and CUDA paths check alike.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np

from bnsgd_numba import config

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
"""The dtypes every kernel takes."""
NONFINITE_POLICIES = ("raise", "skip")
"""What a layer may do with a batch whose statistics are not finite."""
MAX_WORK_ITEM = 2**31 - 1
"""Largest ``config.CPU_ITEM_ELEMENTS``/``CPU_RC_COLUMNS`` (far past one item per array)."""


def check_flag(value: Any, name: str) -> bool:
    """Return ``value`` as a bool, or raise TypeError if it is not a bool."""
    if value is True or value is False:
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_positive_eps(eps: Any) -> float:
    """Return ``eps`` as a finite float > 0, or raise ValueError."""
    if type(eps) is float and eps > 0 and eps != math.inf:
        return eps
    if (
        isinstance(eps, (bool, np.bool_))
        or not isinstance(eps, numbers.Real)
        or not (math.isfinite(eps) and eps > 0)
    ):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


_SMALLEST_NORMAL = {dtype: float(np.finfo(dtype).tiny) for dtype in FLOAT_DTYPES}


def check_eps_in_dtype(eps: float, dtype: np.dtype) -> None:
    """Raise ValueError naming ``eps`` when it (a float > 0) underflows ``dtype``.

    ``eps`` must be at least the dtype's smallest normal number: below it
    (1e-300 for float32, say) 1/sqrt(var + eps) of a constant channel
    overflows the dtype and the channel normalizes to NaN instead of ``bias``.
    """
    if eps < _SMALLEST_NORMAL[dtype]:
        raise ValueError(
            f"eps={eps!r} underflows {dtype}: it must be at least the smallest normal "
            f"{dtype} number, {dtype.type(_SMALLEST_NORMAL[dtype])} (1/sqrt(eps) overflows "
            f"{dtype} for a constant channel)"
        )


def check_unit_momentum(momentum: Any) -> float:
    """Return a running-statistics ``momentum`` as a float in [0, 1], or raise ValueError."""
    if type(momentum) is float and 0.0 <= momentum <= 1.0:
        return momentum
    if (
        isinstance(momentum, (bool, np.bool_))
        or not isinstance(momentum, numbers.Real)
        or not 0.0 <= momentum <= 1.0
    ):
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    return float(momentum)


def check_non_negative(value: Any, name: str) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0.0:
        raise ValueError(f"{name} must be a non-negative finite number, got {number!r}")
    return number


def check_real(value: Any, name: str, *, minimum: float) -> float:
    """Return ``value`` as a finite float >= ``minimum``, or raise ValueError."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < minimum
    ):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int >= 1, or raise TypeError/ValueError naming it."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be positive, got {number}")
    return number


def check_float_dtype(dtype: Any, name: str = "dtype") -> np.dtype:
    """Return ``dtype`` as float32 or float64, or raise TypeError."""
    try:
        checked = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if checked not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {checked}")
    return checked


def check_nonfinite_policy(policy: Any) -> str:
    """Return ``policy`` if it is ``"raise"`` or ``"skip"``, else raise ValueError."""
    if policy not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {policy!r}")
    return policy


def _tunable(name: str, value: Any, least: int, most: int) -> int:
    # the slow path of the tunables' checks: the error, or a NumPy integer as an int
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"config.{name} must be an int, got {type(value).__name__} {value!r}")
    if not least <= value <= most:
        raise ValueError(f"config.{name} must be in [{least}, {most}], got {value}")
    return int(value)


def cpu_tunables() -> tuple[int, int, int]:
    """Return ``config``'s CPU work sizes, checked where the kernels read them.

    Returns
    -------
    tuple of int
        ``(CPU_ITEM_ELEMENTS, CPU_RC_COLUMNS, CPU_SERIAL_BELOW)``.

    Raises
    ------
    TypeError, ValueError
        Naming ``config.X`` when one is not an int, or the first two are not
        in ``[1, MAX_WORK_ITEM]``, or the third is negative: the kernels would
        divide by zero, fail to compile or split the work wrongly.
    """
    global _last_tunables
    item = config.CPU_ITEM_ELEMENTS
    columns = config.CPU_RC_COLUMNS
    serial = config.CPU_SERIAL_BELOW
    last = _last_tunables
    # the very objects checked last time (identity: an int is immutable, and
    # True == 1 would pass an equality test): every call reads them here
    if item is last[0] and columns is last[1] and serial is last[2]:
        return last[3]
    checked = (
        _tunable("CPU_ITEM_ELEMENTS", item, 1, MAX_WORK_ITEM),
        _tunable("CPU_RC_COLUMNS", columns, 1, MAX_WORK_ITEM),
        _tunable("CPU_SERIAL_BELOW", serial, 0, np.iinfo(np.int64).max),
    )
    _last_tunables = (item, columns, serial, checked)  # one assignment: safe across threads
    return checked


_UNSET = object()
_last_tunables: tuple[Any, Any, Any, tuple[int, int, int]] = (_UNSET, _UNSET, _UNSET, (0, 0, 0))


def gpu_threads_per_block(warp_size: int, most: int) -> int:
    """Return ``config.GPU_THREADS_PER_BLOCK``, a power of two in ``[warp_size, most]``.

    Raises
    ------
    TypeError, ValueError
        Naming ``config.GPU_THREADS_PER_BLOCK`` otherwise.
    """
    threads = config.GPU_THREADS_PER_BLOCK
    if type(threads) is not int:
        threads = _tunable("GPU_THREADS_PER_BLOCK", threads, warp_size, most)
    if threads < warp_size or threads > most or threads & (threads - 1):
        raise ValueError(
            f"config.GPU_THREADS_PER_BLOCK must be a power of two in [{warp_size}, {most}], "
            f"got {threads}"
        )
    return threads
