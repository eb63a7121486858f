"""The common CPU call of the functional BatchNorm, recognized in one pass of cheap tests.

A training loop calls :func:`~bnsgd_numba.batch_norm_forward` and
:func:`~bnsgd_numba.batch_norm_backward` thousands of times with plain,
C-contiguous NumPy arrays of one dtype and plain Python scalars. On the
seed's (32, 64) batch the general checks cost more than the kernel:
:func:`forward_arguments` and :func:`backward_arguments` recognize that
case with as few attribute reads as possible, checking what Python must
(types, dtypes, flags, scalars), and return what the kernel entry
(``forward_entry``/``backward_entry`` of ``batch_norm._cpu``) takes; that
entry checks the shapes, makes the kernel views and runs the pass, all in
one dispatch. Either returns ``None`` (the entry: a status) as soon as
anything differs (another type, dtype or layout, a bad value or shape),
which sends the call down the general path: it checks every argument
again, names the bad one, and handles every other case. Nothing is written
before that, so falling back loses nothing.

Whether an array the call writes meets another one is left to the kernel,
which tests the byte spans of all its arrays in nanoseconds before it
writes (:mod:`bnsgd_numba._core.spans`); when they may meet, it writes
nothing and the general path's exact tests name the arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bnsgd_numba._core.checks import FLOAT_DTYPES
from bnsgd_numba._core.layouts import NCS, RC
from bnsgd_numba.batch_norm._common import BIAS_ABSENT, RUNNING_ABSENT, WEIGHT_ABSENT

_SMALLEST_NORMAL = {dtype: float(np.finfo(dtype).tiny) for dtype in FLOAT_DTYPES}
_POLICIES = frozenset(("raise", "skip"))
NO_ARRAY = {dtype: np.empty(0, dtype=dtype) for dtype in FLOAT_DTYPES}
"""dtype -> the empty array that stands in for a vector not given."""


def forward_arguments(
    x: np.ndarray,
    weight: Any,
    bias: Any,
    running_mean: Any,
    running_var: Any,
    training: Any,
    momentum: Any,
    eps: Any,
    channel_axis: Any,
    out: Any,
    on_nonfinite: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int, str] | None:
    """``(y, weight, bias, running_mean, running_var, absent, channels, layout)``, else None.

    ``x`` is a NumPy array. The common call: ``x`` and ``out`` C-contiguous,
    the vectors NumPy arrays of ``x``'s dtype, the running statistics
    writable in training, the scalars Python's own and valid. The shapes
    are the entry's to check. A vector not given becomes an empty array of
    ``x``'s dtype, its bit set in ``absent``; ``y`` is ``out``, or a new
    C-contiguous array; ``layout`` the kernel entry's (``RC`` when the
    channels are last, else ``NCS``).
    """
    dtype = x.dtype
    smallest = _SMALLEST_NORMAL.get(dtype)
    if (
        smallest is None
        or not x.flags.c_contiguous
        or type(channel_axis) is not int
        or (training is not True and training is not False)
        or type(momentum) is not float
        or not 0.0 <= momentum <= 1.0
        or type(eps) is not float
        or not smallest <= eps < math.inf
        or type(on_nonfinite) is not str
        or on_nonfinite not in _POLICIES
    ):
        return None
    empty = NO_ARRAY[dtype]
    absent = 0
    if weight is None:
        weight = empty
        absent = WEIGHT_ABSENT
    elif type(weight) is not np.ndarray or weight.dtype is not dtype:
        return None
    if bias is None:
        bias = empty
        absent |= BIAS_ABSENT
    elif type(bias) is not np.ndarray or bias.dtype is not dtype:
        return None
    if running_mean is None and running_var is None:
        if not training:
            return None
        running_mean = running_var = empty
        absent |= RUNNING_ABSENT
    elif (
        type(running_mean) is not np.ndarray
        or type(running_var) is not np.ndarray
        or running_mean.dtype is not dtype
        or running_var.dtype is not dtype
        or (training and not (running_mean.flags.writeable and running_var.flags.writeable))
    ):
        return None
    shape = x.shape
    ndim = len(shape)
    if not -ndim <= channel_axis < ndim:
        return None
    y = _output(out, shape, dtype)
    if y is None:
        return None
    layout = RC if channel_axis == -1 or channel_axis == ndim - 1 else NCS
    return y, weight, bias, running_mean, running_var, absent, shape[channel_axis], layout


def backward_arguments(
    dy: Any,
    x: np.ndarray,
    weight: Any,
    save_mean: Any,
    save_invstd: Any,
    training: Any,
    channel_axis: Any,
    out: Any,
) -> tuple[np.ndarray, np.ndarray, int, int, str] | None:
    """``(dx, weight, absent, channels, layout)`` for the kernel entry, else None.

    As :func:`forward_arguments`: ``dy``, ``x`` and ``out`` C-contiguous,
    of one dtype, the vectors NumPy arrays of that dtype.
    """
    dtype = x.dtype
    if (
        type(dy) is not np.ndarray
        or dtype not in _SMALLEST_NORMAL
        or dy.dtype is not dtype
        or not x.flags.c_contiguous
        or not dy.flags.c_contiguous
        or type(channel_axis) is not int
        or (training is not True and training is not False)
        or type(save_mean) is not np.ndarray
        or type(save_invstd) is not np.ndarray
        or save_mean.dtype is not dtype
        or save_invstd.dtype is not dtype
    ):
        return None
    absent = 0
    if weight is None:
        weight = NO_ARRAY[dtype]
        absent = WEIGHT_ABSENT
    elif type(weight) is not np.ndarray or weight.dtype is not dtype:
        return None
    shape = x.shape
    ndim = len(shape)
    if not -ndim <= channel_axis < ndim:
        return None
    dx = _output(out, shape, dtype)
    if dx is None:
        return None
    layout = RC if channel_axis == -1 or channel_axis == ndim - 1 else NCS
    return dx, weight, absent, shape[channel_axis], layout


def _output(out: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    # ``out`` when it is a writable C-contiguous array of x's shape and dtype,
    # a new one when it is None; None for anything else
    if out is None:
        return np.empty(shape, dtype)
    if type(out) is not np.ndarray or out.shape != shape or out.dtype is not dtype:
        return None
    flags = out.flags
    return out if flags.writeable and flags.c_contiguous else None
