"""What the BatchNorm facade and its backends share: result types and argument rules.

The rules read shapes, dtypes and scalars only, so the CPU path (NumPy
arrays) and the CUDA driver (device arrays) apply the same ones with the
same messages, before either writes anything.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from bnsgd_numba._core.checks import (
    FLOAT_DTYPES,
    check_flag,
    check_nonfinite_policy,
    check_positive_eps,
    check_unit_momentum,
)
from bnsgd_numba._core.layouts import normalize_channel_axis

WEIGHT_ABSENT = 1
BIAS_ABSENT = 2
RUNNING_ABSENT = 4
"""Bits of ``absent`` for the fast lane's kernel entries: which vectors were not given."""


class BatchNormOutput(NamedTuple):
    """What :func:`~bnsgd_numba.batch_norm_forward` returns."""

    y: np.ndarray
    """The normalized output, shaped and laid out like the input."""
    save_mean: np.ndarray
    """Per-channel mean used (batch mean in training, running mean in eval)."""
    save_invstd: np.ndarray
    """Per-channel 1/sqrt(var + eps) used, var biased in training."""


class BatchNormGrads(NamedTuple):
    """What :func:`~bnsgd_numba.batch_norm_backward` returns."""

    dx: np.ndarray
    """Gradient of the loss with respect to the input."""
    dweight: np.ndarray
    """Per-channel sum(dy * x_hat) (computed even when weight is None)."""
    dbias: np.ndarray
    """Per-channel sum(dy)."""


class NonFiniteStatisticsError(FloatingPointError):
    """A batch whose statistics are not finite met running statistics."""

    def __init__(self, channels: np.ndarray) -> None:
        self.channels = channels
        shown = ", ".join(str(c) for c in channels[:10]) + (" ..." if channels.size > 10 else "")
        super().__init__(
            f"batch statistics are not finite in {channels.size} channel(s) [{shown}]: "
            "the running statistics were not updated and no output was written "
            "(pass on_nonfinite='skip' to normalize anyway and skip the update)"
        )


def nonfinite_channels(mean: np.ndarray, invstd: np.ndarray) -> np.ndarray:
    """Indices of the channels whose saved mean or invstd shows non-finite statistics."""
    # invstd is 0 or NaN exactly when the variance is infinite or NaN
    return np.flatnonzero(~(np.isfinite(mean) & np.isfinite(invstd) & (invstd > 0)))


def check_input(shape: tuple[int, ...], dtype: Any, name: str) -> None:
    """Raise unless an input of ``shape`` and ``dtype`` is float32/float64 of rank >= 2."""
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype must be float32 or float64, got {dtype}")
    if len(shape) < 2:
        raise ValueError(f"{name}: expected an array of rank >= 2, got shape {shape}")


def check_channels(shape: tuple[int, ...], channel_axis: Any) -> tuple[int, int]:
    """Return ``(axis, channels)`` of an input of ``shape``; raise if the channel axis is empty."""
    axis = normalize_channel_axis(channel_axis, len(shape))
    channels = shape[axis]
    if channels == 0:
        raise ValueError(f"x: the channel axis {axis} of shape {shape} is empty")
    return axis, channels


def check_forward_options(
    training: Any, momentum: Any, eps: Any, on_nonfinite: Any
) -> tuple[bool, float, float]:
    """Return ``(training, momentum, eps)`` checked, after checking ``on_nonfinite``."""
    training = check_flag(training, "training")
    eps = check_positive_eps(eps)
    momentum = check_unit_momentum(momentum)
    check_nonfinite_policy(on_nonfinite)
    return training, momentum, eps


def check_running_statistics(
    shape: tuple[int, ...], channels: int, training: bool, running_mean: Any, running_var: Any
) -> None:
    """The rules on running statistics and batch size that do not depend on the backend.

    Training needs more than one value per channel, or none: an empty batch
    gives an empty output and leaves the running statistics alone, as in
    PyTorch.
    """
    if (running_mean is None) != (running_var is None):
        missing = "running_var" if running_var is None else "running_mean"
        raise ValueError(f"{missing} is None but the other running statistic is given")
    if training and _per_channel(shape, channels) == 1:
        raise ValueError(
            f"x: expected more than 1 value per channel when training, got input of shape {shape}"
        )
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")


def check_vector(
    name: str, shape: tuple[int, ...], dtype: Any, expected_dtype: Any, channels: int
) -> None:
    """Raise unless a per-channel vector has shape ``(channels,)`` and the input's dtype."""
    if shape != (channels,):
        raise ValueError(
            f"{name}: expected shape ({channels},), one value per channel, got {shape}"
        )
    if dtype != expected_dtype:
        raise TypeError(f"{name}: dtype {dtype} does not match x ({expected_dtype})")


def check_dy(dy_shape: tuple[int, ...], dy_dtype: Any, shape: tuple[int, ...], dtype: Any) -> None:
    """Raise unless ``dy`` has the shape and dtype of ``x``."""
    if dy_shape != shape:
        raise ValueError(f"dy: shape {dy_shape} does not match x {shape}")
    if dy_dtype != dtype:
        raise TypeError(f"dy: dtype {dy_dtype} does not match x {dtype}")


def _per_channel(shape: tuple[int, ...], channels: int) -> int:
    size = 1
    for extent in shape:
        size *= extent
    return size // channels


def host_input(value: Any, name: str) -> np.ndarray:
    """Return ``value`` as a NumPy array checked by :func:`check_input`."""
    array = np.asarray(value)
    check_input(array.shape, array.dtype, name)
    return array


def host_channel_vector(
    value: Any,
    name: str,
    dtype: np.dtype,
    channels: int,
    *,
    writable: bool = False,
    required: bool = False,
) -> np.ndarray | None:
    """Return a per-channel NumPy vector checked by :func:`check_vector` (None stays None).

    ``writable``: the vector is updated in place, so it must be a writable
    NumPy array. ``required``: None is an error.
    """
    if (
        type(value) is np.ndarray
        and value.shape == (channels,)
        and value.dtype == dtype
        and (not writable or value.flags.writeable)
    ):
        return value
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if not isinstance(value, np.ndarray):
        if writable:
            raise TypeError(f"{name} must be a NumPy array (it is updated in place)")
        value = np.asarray(value)
    check_vector(name, value.shape, value.dtype, dtype, channels)
    if writable and not value.flags.writeable:
        raise ValueError(f"{name} is read-only, but it is updated in place when training")
    return value
