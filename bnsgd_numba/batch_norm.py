"""Functional BatchNorm: ``batch_norm_forward`` and ``batch_norm_backward``.

Both take NumPy arrays (CUDA arrays are handed to the GPU kernels), check
every argument before anything is written, and run the kernels of
:mod:`bnsgd_numba._batch_norm_cpu`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Literal, NamedTuple

import numpy as np

from bnsgd_numba import config
from bnsgd_numba._arrays import any_device_array
from bnsgd_numba._layouts import (
    NCS,
    empty_in_layout,
    kernel_view,
    native_layout,
    normalize_channel_axis,
    to_layout,
    view_in_layout,
)

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_NO_ARRAY = {dtype: np.empty(0, dtype=dtype) for dtype in FLOAT_DTYPES}
_NONFINITE_POLICIES = ("raise", "skip")


class BatchNormOutput(NamedTuple):
    """What :func:`batch_norm_forward` returns."""

    y: np.ndarray
    """The normalized output, shaped and laid out like the input."""
    save_mean: np.ndarray
    """Per-channel mean used (batch mean in training, running mean in eval)."""
    save_invstd: np.ndarray
    """Per-channel 1/sqrt(var + eps) used, var biased in training."""


class BatchNormGrads(NamedTuple):
    """What :func:`batch_norm_backward` returns."""

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


def batch_norm_forward(
    x: Any,
    weight: Any = None,
    bias: Any = None,
    running_mean: Any = None,
    running_var: Any = None,
    *,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
    out: Any = None,
    on_nonfinite: Literal["raise", "skip"] = "raise",
) -> BatchNormOutput:
    """Normalize each channel of ``x`` and scale and shift it.

    Parameters
    ----------
    x : array, float32 or float64, rank >= 2
        The input; the channel is on ``channel_axis``, every other axis is
        reduced over. Any memory layout works: C-contiguous and
        channels-last arrays are read in place, other strided arrays are
        copied once.
    weight, bias : array of shape (C,), optional
        The affine parameters (``None``: 1 and 0).
    running_mean, running_var : array of shape (C,), optional
        Running statistics. Updated in place in training; required in eval.
    training : bool
        Normalize with the batch statistics (True) or the running ones.
    momentum : float in [0, 1]
        Weight of the NEW batch in the running average (PyTorch's
        convention; Keras' ``momentum=0.99`` is ``momentum=0.01`` here).
    eps : float > 0
        Added to the variance.
    channel_axis : int
        The channel axis: 1 (NCHW, default) or -1 (channels-last), or any.
    out : ndarray, optional
        Where to write ``y`` (same shape and dtype as ``x``, not overlapping
        it), so that a training loop runs without allocating.
    on_nonfinite : {"raise", "skip"}
        What to do in training, when running statistics are given, if a
        channel's batch mean or variance is not finite: ``"raise"`` a
        :class:`NonFiniteStatisticsError` (a ``FloatingPointError``) naming
        the channels before anything but nothing is written, or ``"skip"``
        the running update and return the (non-finite) output. Without
        running statistics non-finite input simply gives non-finite output.

    Returns
    -------
    BatchNormOutput
        ``(y, save_mean, save_invstd)`` in the dtype of ``x``.

    Raises
    ------
    TypeError, ValueError
        For bad input, naming the argument, before anything is written.

    Notes
    -----
    Per channel c, over the m values of the channel::

        mean = sum(x) / m,   var = sum((x - mean)**2) / m
        y = weight * (x - mean) / sqrt(var + eps) + bias
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * var * m / (m - 1)

    The statistics are accumulated in float64 per cache-sized block, as
    sums of deviations from a shift (the mean of the block's first rows for
    float32, of the whole block for float64), and the blocks are merged with
    Chan's formula (Chan, Golub & LeVeque 1979); never E[x^2] - E[x]^2.
    They do not depend on the number of threads. Ioffe & Szegedy (2015),
    "Batch Normalization".
    """
    # positional: keywords cost a tiny call a measurable share of its time
    return _forward(
        x, weight, bias, running_mean, running_var, training, momentum, eps, channel_axis,
        out, on_nonfinite, 3,
    )[0]  # fmt: skip


def forward_with_status(
    x: Any,
    weight: Any,
    bias: Any,
    running_mean: Any,
    running_var: Any,
    *,
    training: bool,
    momentum: float,
    eps: float,
    channel_axis: int,
    out: Any,
    on_nonfinite: str,
    warn_stacklevel: int,
) -> tuple[BatchNormOutput, int]:
    """:func:`batch_norm_forward`, also returning the number of non-finite channels.

    The layers use it to know whether the running update was skipped.
    """
    return _forward(
        x, weight, bias, running_mean, running_var, training, momentum, eps, channel_axis,
        out, on_nonfinite, warn_stacklevel + 1,
    )  # fmt: skip


def _forward(
    x, weight, bias, running_mean, running_var, training, momentum, eps, channel_axis,
    out, on_nonfinite, warn_stacklevel,
):  # fmt: skip
    # forward_with_status's body, with positional arguments (a tiny call pays for keywords)
    if any_device_array(x, weight, bias, running_mean, running_var, out):
        from bnsgd_numba import gpu_batch_norm

        return gpu_batch_norm.forward_with_status(
            x, weight, bias, running_mean, running_var, training=training, momentum=momentum,
            eps=eps, channel_axis=channel_axis, out=out, on_nonfinite=on_nonfinite,
        )  # fmt: skip
    x = _float_input(x, "x")
    axis = normalize_channel_axis(channel_axis, x.ndim)
    channels = x.shape[axis]
    if channels == 0:
        raise ValueError(f"x: the channel axis {axis} of shape {x.shape} is empty")
    per_channel = x.size // channels
    if training is not True and training is not False:
        training = _flag(training, "training")
    eps = _positive_eps(eps)
    momentum = _momentum(momentum)
    if on_nonfinite not in _NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
    weight = _channel_vector(weight, "weight", x.dtype, channels)
    bias = _channel_vector(bias, "bias", x.dtype, channels)
    running_mean = _channel_vector(
        running_mean, "running_mean", x.dtype, channels, writable=training
    )
    running_var = _channel_vector(running_var, "running_var", x.dtype, channels, writable=training)
    if (running_mean is None) != (running_var is None):
        missing = "running_var" if running_var is None else "running_mean"
        raise ValueError(f"{missing} is None but the other running statistic is given")
    if training and per_channel <= 1:
        raise ValueError(
            f"x: expected more than 1 value per channel when training, got input of shape {x.shape}"
        )
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    if out is not None:
        _check_out(out, x, "out", (running_mean, running_var, weight, bias))

    layout, x_view = kernel_view(x, axis)
    y = out if out is not None else empty_in_layout(x, axis, layout)
    if x.flags.c_contiguous and y.flags.c_contiguous:
        y_view = y.reshape(x_view.shape)  # what view_in_layout gives, sooner
    else:
        y_view = view_in_layout(y, axis, layout)
    y_kernel = y_view if y_view is not None else np.empty_like(x_view)
    save_mean = np.empty(channels, dtype=x.dtype)
    save_invstd = np.empty(channels, dtype=x.dtype)
    no_array = _NO_ARRAY[x.dtype]
    weight = no_array if weight is None else weight
    bias = no_array if bias is None else bias
    parallel = x.size >= config.CPU_SERIAL_BELOW
    kernels = _kernels()
    if training:
        tracked = running_mean is not None
        bad = kernels.forward_train(
            x_view, y_kernel, weight, bias,
            running_mean if tracked else no_array, running_var if tracked else no_array,
            save_mean, save_invstd, momentum, eps, tracked and on_nonfinite == "raise",
            layout != NCS, parallel, config.CPU_ITEM_ELEMENTS, config.CPU_RC_COLUMNS,
        )  # fmt: skip
        if bad and tracked:
            if on_nonfinite == "raise":
                raise NonFiniteStatisticsError(_nonfinite_channels(save_mean, save_invstd))
            warnings.warn(
                f"batch statistics are not finite in {bad} channel(s) "
                f"{_nonfinite_channels(save_mean, save_invstd).tolist()}; "
                "the running statistics were not updated",
                RuntimeWarning,
                stacklevel=warn_stacklevel,
            )
    else:
        kernels.forward_eval(
            x_view, y_kernel, weight, bias, running_mean, running_var, save_mean, save_invstd,
            eps, layout != NCS, parallel, config.CPU_ITEM_ELEMENTS, config.CPU_RC_COLUMNS,
        )  # fmt: skip
    if y_view is None:
        np.copyto(y, _from_layout(y_kernel, x.shape, axis, layout))
    return BatchNormOutput(y, save_mean, save_invstd), int(bad) if training else 0


def batch_norm_backward(
    dy: Any,
    x: Any,
    weight: Any,
    save_mean: Any,
    save_invstd: Any,
    *,
    training: bool = True,
    channel_axis: int = 1,
    out: Any = None,
) -> BatchNormGrads:
    """Gradients of BatchNorm with respect to its input, weight and bias.

    Parameters
    ----------
    dy : array shaped like ``x``
        Gradient of the loss with respect to the forward output.
    x : array, float32 or float64
        The forward input.
    weight : array of shape (C,) or None
        The forward weight (``None``: 1).
    save_mean, save_invstd : array of shape (C,)
        What :func:`batch_norm_forward` returned for this ``x``.
    training : bool
        Whether the forward pass used batch statistics (the mean and the
        variance then depend on ``x`` too) or running ones.
    channel_axis : int
        As in the forward pass.
    out : ndarray, optional
        Where to write ``dx`` (shape and dtype of ``x``).

    Returns
    -------
    BatchNormGrads
        ``(dx, dweight, dbias)`` in the dtype of ``x``.

    Notes
    -----
    With x_hat = (x - save_mean) * save_invstd and g = weight * save_invstd::

        dbias = sum(dy),  dweight = sum(dy * x_hat)
        dx = g * (dy - dbias / m - x_hat * dweight / m)    (training)
        dx = g * dy                                         (eval)

    One fused reduction pass over (dy, x), accumulated in float64, then one
    elementwise pass.
    """
    if any_device_array(dy, x, weight, save_mean, save_invstd, out):
        from bnsgd_numba import gpu_batch_norm

        return gpu_batch_norm.batch_norm_backward(
            dy, x, weight, save_mean, save_invstd, training=training,
            channel_axis=channel_axis, out=out,
        )  # fmt: skip
    x = _float_input(x, "x")
    dy = _float_input(dy, "dy")
    if dy.shape != x.shape:
        raise ValueError(f"dy: shape {dy.shape} does not match x {x.shape}")
    if dy.dtype != x.dtype:
        raise TypeError(f"dy: dtype {dy.dtype} does not match x {x.dtype}")
    axis = normalize_channel_axis(channel_axis, x.ndim)
    channels = x.shape[axis]
    training = _flag(training, "training")
    weight = _channel_vector(weight, "weight", x.dtype, channels)
    save_mean = _channel_vector(save_mean, "save_mean", x.dtype, channels, required=True)
    save_invstd = _channel_vector(save_invstd, "save_invstd", x.dtype, channels, required=True)
    if out is not None:
        _check_out(out, x, "out", (dy, weight, save_mean, save_invstd))

    layout = native_layout(x, axis)
    x_view = to_layout(x, axis, layout)
    dy_view = to_layout(dy, axis, layout)
    dx = out if out is not None else empty_in_layout(x, axis, layout)
    dx_view = view_in_layout(dx, axis, layout)
    dx_kernel = dx_view if dx_view is not None else np.empty_like(x_view)
    dweight = np.empty(channels, dtype=x.dtype)
    dbias = np.empty(channels, dtype=x.dtype)
    _kernels().backward(
        dy_view, x_view, dx_kernel, _NO_ARRAY[x.dtype] if weight is None else weight,
        save_mean, save_invstd, dweight, dbias, training, layout != NCS,
        x.size >= config.CPU_SERIAL_BELOW, config.CPU_ITEM_ELEMENTS, config.CPU_RC_COLUMNS,
    )  # fmt: skip
    if dx_view is None:
        np.copyto(dx, _from_layout(dx_kernel, x.shape, axis, layout))
    return BatchNormGrads(dx, dweight, dbias)


_KERNELS: list[Any] = []


def _kernels() -> Any:
    # the kernel module, imported (numba with it) on the first call only
    if not _KERNELS:
        from bnsgd_numba import _batch_norm_cpu

        _KERNELS.append(_batch_norm_cpu)
    return _KERNELS[0]


def _float_input(value: Any, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype must be float32 or float64, got {array.dtype}")
    if array.ndim < 2:
        raise ValueError(f"{name}: expected an array of rank >= 2, got shape {array.shape}")
    return array


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _positive_eps(eps: Any) -> float:
    if type(eps) is float and eps > 0 and eps != math.inf:
        return eps
    if not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def _momentum(momentum: Any) -> float:
    if type(momentum) is float and 0.0 <= momentum <= 1.0:
        return momentum
    if not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    return float(momentum)


def _channel_vector(
    value: Any,
    name: str,
    dtype: np.dtype,
    channels: int,
    *,
    writable: bool = False,
    required: bool = False,
) -> np.ndarray | None:
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
    if value.shape != (channels,):
        raise ValueError(
            f"{name}: expected shape ({channels},), one value per channel, got {value.shape}"
        )
    if value.dtype != dtype:
        raise TypeError(f"{name}: dtype {value.dtype} does not match x ({dtype})")
    if writable and not value.flags.writeable:
        raise ValueError(f"{name} is read-only, but it is updated in place when training")
    return value


def _check_out(out: Any, x: np.ndarray, name: str, others: tuple[Any, ...]) -> None:
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name}: shape {out.shape} does not match x {x.shape}")
    if out.dtype != x.dtype:
        raise TypeError(f"{name}: dtype {out.dtype} does not match x ({x.dtype})")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    # Memory owned by two different NumPy arrays cannot overlap: a cheap test
    # first (the per-call cost matters for tiny inputs), NumPy's exact one
    # only when it cannot tell.
    owner = out if out.base is None else out.base
    plain = type(owner) is np.ndarray and owner.base is None
    for index, other in enumerate((x, *others)):
        if other is None:
            continue
        if plain:
            other_owner = other if other.base is None else other.base
            if (
                other_owner is not owner
                and type(other_owner) is np.ndarray
                and other_owner.base is None
            ):
                continue
        if np.shares_memory(out, other):
            what = "the input x" if index == 0 else "another argument"
            raise ValueError(f"{name} overlaps {what}; pass a separate array")


def _nonfinite_channels(mean: np.ndarray, invstd: np.ndarray) -> np.ndarray:
    # invstd is 0 or NaN exactly when the variance is infinite or NaN
    return np.flatnonzero(~(np.isfinite(mean) & np.isfinite(invstd) & (invstd > 0)))


def _from_layout(view: np.ndarray, shape: tuple[int, ...], axis: int, layout: str) -> np.ndarray:
    if layout == NCS:
        return view.reshape(shape)
    view = view.reshape(view.shape[:2])
    moved_shape = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    return np.moveaxis(view.reshape(moved_shape), -1, axis)
