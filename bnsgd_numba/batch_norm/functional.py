"""Functional BatchNorm: ``batch_norm_forward`` and ``batch_norm_backward``.

Both take NumPy arrays (CUDA arrays are handed to the GPU kernels), check
every argument before anything is written, and run the kernels of
:mod:`bnsgd_numba.batch_norm._cpu`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np

from bnsgd_numba._core.arrays import any_device_array, apart, check_apart, check_out
from bnsgd_numba._core.checks import check_eps_in_dtype, check_flag, cpu_tunables
from bnsgd_numba._core.layouts import (
    NCS,
    empty_in_layout,
    from_layout,
    kernel_view,
    native_layout,
    normalize_channel_axis,
    rows_per_item,
    to_layout,
    view_in_layout,
)
from bnsgd_numba.batch_norm import _fast_lane
from bnsgd_numba.batch_norm._common import (
    RUNNING_ABSENT,
    BatchNormGrads,
    BatchNormOutput,
    NonFiniteStatisticsError,
    check_channels,
    check_dy,
    check_forward_options,
    check_running_statistics,
    host_channel_vector,
    host_input,
)

_NO_ARRAY = _fast_lane.NO_ARRAY
_new_tuple = tuple.__new__


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
        Running statistics. Updated in place in training, so they must not
        share memory with each other or with ``x``, ``weight``, ``bias`` or
        ``out``; required in eval.
    training : bool
        Normalize with the batch statistics (True) or the running ones.
    momentum : float in [0, 1]
        Weight of the NEW batch in the running average (PyTorch's
        convention; Keras' ``momentum=0.99`` is ``momentum=0.01`` here).
    eps : float
        Added to the variance; at least the smallest normal number of the
        dtype (``numpy.finfo(dtype).tiny``: about 1.2e-38 for float32),
        below which a constant channel would normalize to NaN.
    channel_axis : int
        The channel axis: 1 (NCHW, default) or -1 (channels-last), or any.
    out : ndarray, optional
        Where to write ``y`` (same shape and dtype as ``x``, overlapping no
        other argument), so that a training loop runs without allocating.
    on_nonfinite : {"raise", "skip"}
        What to do in training, when running statistics are given, if a
        channel's batch mean or variance is not finite, or its running
        update is not finite in the dtype of the running statistics (a
        float32 batch variance of 1e40 is finite in float64, its update is
        not in float32): ``"raise"`` a :class:`NonFiniteStatisticsError` (a
        ``FloatingPointError``) naming the channels before anything but
        nothing is written, or ``"skip"`` the running update and return the
        output. Nothing non-finite ever reaches the running statistics.
        Without running statistics non-finite input simply gives non-finite
        output.

    Returns
    -------
    BatchNormOutput
        ``(y, save_mean, save_invstd)`` in the dtype of ``x``.

    Raises
    ------
    TypeError, ValueError
        For bad input, naming the argument (both arguments when two share
        memory that the call writes), or a bad ``config`` work size, before
        anything is written.

    Notes
    -----
    Per channel c, over the m values of the channel::

        mean = sum(x) / m,   var = sum((x - mean)**2) / m
        y = weight * (x - mean) / sqrt(var + eps) + bias
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * var * m / (m - 1)

    The statistics are accumulated in float64 per block of rows (blocks
    set by the shape alone), as sums of deviations from a shift (the mean of
    the block's first rows for float32, of the whole block for float64), and
    the blocks are merged with Chan's formula (Chan, Golub & LeVeque 1979);
    never E[x^2] - E[x]^2. They do not depend on the number of threads.
    Ioffe & Szegedy (2015), "Batch Normalization".

    An empty batch (a zero-length axis other than the channel axis) gives an
    empty output, as in PyTorch, and leaves the running statistics alone;
    in training ``save_mean`` and ``save_invstd`` are then those of zero
    sums, 0 and ``1/sqrt(eps)``.
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
    if type(x) is np.ndarray:
        result = _forward_entry(
            x, weight, bias, running_mean, running_var, training, momentum, eps, channel_axis,
            out, on_nonfinite, warn_stacklevel + 1,
        )  # fmt: skip
        if result is not None:
            return result
        # not a common call, or the kernel found memory written that may meet
        # another array: the general path's exact tests name the arrays (or
        # clear them)
    if any_device_array(x, weight, bias, running_mean, running_var, out):
        from bnsgd_numba.batch_norm import _cuda_driver

        return _cuda_driver.forward_with_status(
            x, weight, bias, running_mean, running_var, training=training, momentum=momentum,
            eps=eps, channel_axis=channel_axis, out=out, on_nonfinite=on_nonfinite,
            warn_stacklevel=warn_stacklevel,
        )  # fmt: skip
    x = host_input(x, "x")
    axis, channels = check_channels(x.shape, channel_axis)
    training, momentum, eps = check_forward_options(training, momentum, eps, on_nonfinite)
    check_eps_in_dtype(eps, x.dtype)
    weight = host_channel_vector(weight, "weight", x.dtype, channels)
    bias = host_channel_vector(bias, "bias", x.dtype, channels)
    running_mean = host_channel_vector(
        running_mean, "running_mean", x.dtype, channels, writable=training
    )
    running_var = host_channel_vector(
        running_var, "running_var", x.dtype, channels, writable=training
    )
    check_running_statistics(x.shape, channels, training, running_mean, running_var)
    # one owner test for every array the call writes (out; the running
    # statistics in training) against the others; the exact tests, which
    # name the arrays, only when it cannot tell
    out_array = out if isinstance(out, np.ndarray) else None  # check_out names anything else
    if training:
        known_apart = apart((running_mean, running_var, out_array), (x, weight, bias))
        if not known_apart and running_mean is not None:
            check_apart(
                (("running_mean", running_mean), ("running_var", running_var)),
                (("x", x), ("weight", weight), ("bias", bias)),
            )
    else:
        known_apart = apart((out_array,), (x, weight, bias, running_mean, running_var))
    if out is not None:
        check_out(out, x, "out", (running_mean, running_var, weight, bias), known_apart)
    cpu_tunables()  # a bad config raises here, before anything is written
    layout, x_view = kernel_view(x, axis)
    y = out if out is not None else empty_in_layout(x, axis, layout)
    if training and x.size == 0:
        # PyTorch's empty batch: an empty output, the running statistics left
        # alone; the saved statistics are those of zero sums (mean 0, variance 0)
        save_mean = np.zeros(channels, dtype=x.dtype)
        save_invstd = np.full(channels, 1.0 / math.sqrt(eps), dtype=x.dtype)
        return BatchNormOutput(y, save_mean, save_invstd), 0
    if x.flags.c_contiguous and y.flags.c_contiguous:
        y_view = y.reshape(x_view.shape)  # what view_in_layout gives, sooner
    else:
        y_view = view_in_layout(y, axis, layout)
    return _forward_common(
        x, axis, layout, x_view, y, y_view, weight, bias, running_mean, running_var, training,
        momentum, eps, on_nonfinite, warn_stacklevel + 1,
    )  # fmt: skip


def _forward_common(
    x, axis, layout, x_view, y, y_view, weight, bias, running_mean, running_var, training,
    momentum, eps, on_nonfinite, warn_stacklevel,
):  # fmt: skip
    # the kernels' part of the general path, on checked arguments (``y_view``
    # None: y has another layout, written from a temporary)
    item_elements, rc_columns, serial_below = cpu_tunables()
    channels = x_view.shape[1]
    y_kernel = y_view if y_view is not None else np.empty_like(x_view)
    save_mean = np.empty(channels, dtype=x.dtype)
    save_invstd = np.empty(channels, dtype=x.dtype)
    no_array = _NO_ARRAY[x.dtype]
    weight = no_array if weight is None else weight
    bias = no_array if bias is None else bias
    parallel = x.size >= serial_below
    if training:
        tracked = running_mean is not None
        bad = _fused("forward_train", layout, x.size)(
            x_view, y_kernel, weight, bias,
            running_mean if tracked else no_array, running_var if tracked else no_array,
            save_mean, save_invstd, momentum, eps, tracked and on_nonfinite == "raise",
            parallel, item_elements, rc_columns, False,
        )  # fmt: skip
        if bad and tracked:
            _report_nonfinite(
                bad, x_view, layout, running_mean, running_var, momentum, on_nonfinite,
                warn_stacklevel + 1, item_elements, rc_columns,
            )  # fmt: skip
    else:
        _fused("forward_eval", layout, x.size)(
            x_view, y_kernel, weight, bias, running_mean, running_var, save_mean, save_invstd,
            eps, parallel, item_elements, rc_columns, False,
        )  # fmt: skip
    if y_view is None:
        np.copyto(y, from_layout(y_kernel, x.shape, axis, layout))
    # tuple.__new__: the named tuple's own constructor costs a tiny call 0.3 us more
    return _new_tuple(BatchNormOutput, (y, save_mean, save_invstd)), int(bad) if training else 0


def _forward_entry(
    x, weight, bias, running_mean, running_var, training, momentum, eps, channel_axis,
    out, on_nonfinite, warn_stacklevel,
):  # fmt: skip
    # the fast lane: a common call in one dispatch of the kernel entry
    # (forward_entry); None, having written nothing, when the call is not a
    # common one or its arrays may meet (the general path then checks and names)
    arguments = _fast_lane.forward_arguments(
        x, weight, bias, running_mean, running_var, training, momentum, eps, channel_axis,
        out, on_nonfinite,
    )  # fmt: skip
    if arguments is None:
        return None
    y, weight, bias, running_mean, running_var, absent, channels, layout = arguments
    item_elements, rc_columns, serial_below = cpu_tunables()
    size = x.size
    tracked = not absent & RUNNING_ABSENT
    dtype = x.dtype
    save_mean = np.empty(channels, dtype)
    save_invstd = np.empty(channels, dtype)
    bad = _entry(_FORWARD_ENTRIES, layout, size, serial_below)(
        x, y, weight, bias, running_mean, running_var, save_mean, save_invstd, absent,
        training, momentum, eps, tracked and on_nonfinite == "raise", channel_axis,
        size >= serial_below, item_elements, rc_columns,
    )  # fmt: skip
    if bad < 0:
        return None
    if bad and training and tracked:
        x_view = kernel_view(x, channel_axis % x.ndim)[1]
        _report_nonfinite(
            bad, x_view, layout, running_mean, running_var, momentum, on_nonfinite,
            warn_stacklevel + 1, item_elements, rc_columns,
        )  # fmt: skip
    return _new_tuple(BatchNormOutput, (y, save_mean, save_invstd)), bad if training else 0


def _report_nonfinite(
    bad, x_view, layout, running_mean, running_var, momentum, on_nonfinite, warn_stacklevel,
    item_elements, rc_columns,
):  # fmt: skip
    # ``bad`` channels' running update was not finite and not made: raise
    # NonFiniteStatisticsError, or warn, naming them
    channels_bad = _nonfinite_update_channels(
        x_view, layout, running_mean, running_var, momentum, item_elements, rc_columns
    )
    if on_nonfinite == "raise":
        raise NonFiniteStatisticsError(channels_bad)
    warnings.warn(
        f"batch statistics are not finite in {bad} channel(s) "
        f"{channels_bad.tolist()}; the running statistics were not updated",
        RuntimeWarning,
        stacklevel=warn_stacklevel,
    )


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
    elementwise pass. An empty batch gives an empty ``dx`` and zero
    ``dweight`` and ``dbias``, as in PyTorch.
    """
    if type(x) is np.ndarray:
        grads = _backward_entry(dy, x, weight, save_mean, save_invstd, training, channel_axis, out)
        if grads is not None:
            return grads
        # as in the forward pass: the general path checks and names
    if any_device_array(dy, x, weight, save_mean, save_invstd, out):
        from bnsgd_numba.batch_norm import _cuda_driver

        return _cuda_driver.batch_norm_backward(
            dy, x, weight, save_mean, save_invstd, training=training,
            channel_axis=channel_axis, out=out,
        )  # fmt: skip
    x = host_input(x, "x")
    dy = host_input(dy, "dy")
    check_dy(dy.shape, dy.dtype, x.shape, x.dtype)
    axis = normalize_channel_axis(channel_axis, len(x.shape))
    channels = x.shape[axis]
    training = check_flag(training, "training")
    weight = host_channel_vector(weight, "weight", x.dtype, channels)
    save_mean = host_channel_vector(save_mean, "save_mean", x.dtype, channels, required=True)
    save_invstd = host_channel_vector(save_invstd, "save_invstd", x.dtype, channels, required=True)
    if out is not None:
        check_out(out, x, "out", (dy, weight, save_mean, save_invstd))
    cpu_tunables()  # a bad config raises here, before anything is written
    if x.size == 0:
        # PyTorch's empty batch: an empty dx, and sums over no values
        dx = out if out is not None else np.empty_like(x)
        return BatchNormGrads(dx, np.zeros(channels, x.dtype), np.zeros(channels, x.dtype))
    layout = native_layout(x, axis)
    dx = out if out is not None else empty_in_layout(x, axis, layout)
    return _backward_common(
        x, axis, layout, to_layout(dy, axis, layout), to_layout(x, axis, layout), dx,
        view_in_layout(dx, axis, layout), weight, save_mean, save_invstd, training,
    )  # fmt: skip


def _backward_entry(dy, x, weight, save_mean, save_invstd, training, channel_axis, out):
    # as _forward_entry, for the backward pass (backward_entry)
    arguments = _fast_lane.backward_arguments(
        dy, x, weight, save_mean, save_invstd, training, channel_axis, out
    )
    if arguments is None:
        return None
    dx, weight, absent, channels, layout = arguments
    item_elements, rc_columns, serial_below = cpu_tunables()
    size = x.size
    dtype = x.dtype
    grad_weight = np.empty(channels, dtype)
    grad_bias = np.empty(channels, dtype)
    if _entry(_BACKWARD_ENTRIES, layout, size, serial_below)(
        dy, x, dx, weight, save_mean, save_invstd, grad_weight, grad_bias, absent, training,
        channel_axis, size >= serial_below, item_elements, rc_columns,
    ):  # fmt: skip
        return None
    return _new_tuple(BatchNormGrads, (dx, grad_weight, grad_bias))


def _backward_common(
    x, axis, layout, dy_view, x_view, dx, dx_view, weight, save_mean, save_invstd, training,
):  # fmt: skip
    # the kernels' part of batch_norm_backward's general path, on checked
    # arguments (``dx_view`` None: dx has another layout, written from a
    # temporary)
    item_elements, rc_columns, serial_below = cpu_tunables()
    channels = x_view.shape[1]
    dx_kernel = dx_view if dx_view is not None else np.empty_like(x_view)
    dweight = np.empty(channels, dtype=x.dtype)
    dbias = np.empty(channels, dtype=x.dtype)
    _fused("backward", layout, x.size)(
        dy_view, x_view, dx_kernel, _NO_ARRAY[x.dtype] if weight is None else weight,
        save_mean, save_invstd, dweight, dbias, training,
        x.size >= serial_below, item_elements, rc_columns, False,
    )  # fmt: skip
    if dx_view is None:
        np.copyto(dx, from_layout(dx_kernel, x.shape, axis, layout))
    return _new_tuple(BatchNormGrads, (dx, dweight, dbias))


def _nonfinite_update_channels(
    x_view: np.ndarray,
    layout: str,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    momentum: float,
    item_elements: int,
    rc_columns: int,
) -> np.ndarray:
    # The channels whose running update forward_train found not finite. Only
    # after it refused the update, so the inputs are as it saw them: the
    # statistics and the update are computed again, by the same kernels.
    kernels = _kernels()
    channels = x_view.shape[1]
    mean = np.empty(channels, dtype=np.float64)
    m2 = np.empty(channels, dtype=np.float64)
    rows = rows_per_item(x_view, layout, item_elements, rc_columns)
    if layout == NCS:
        count = x_view.shape[0] * x_view.shape[2]
        kernels.moments_ncs.for_size(x_view.size)(x_view, rows, mean, m2)
    else:
        count = x_view.shape[0]
        kernels.moments_rc.for_size(x_view.size)(
            x_view.reshape(count, channels), rows, rc_columns, mean, m2
        )
    flags = np.empty(channels, dtype=np.uint8)
    updated = np.empty((2, channels), dtype=running_mean.dtype)
    kernels.running_update(
        running_mean, running_var, mean, m2, float(count), momentum, updated, flags
    )
    return np.flatnonzero(flags)


_KERNELS: list[Any] = []
_FUSED: dict[tuple[str, str], Any] = {}


def _fused(name: str, layout: str, elements: int) -> Any:
    # the build of a fused pass over `layout` to run over `elements` values:
    # below config.CPU_SERIAL_BELOW one that never loads the thread pool
    pair = _FUSED.get((name, layout))
    if pair is None:
        pair = _FUSED.setdefault((name, layout), fused_pair(name, layout))
    return pair.for_size(elements)


_FORWARD_ENTRIES: dict[str, tuple[Any, Any]] = {}
_BACKWARD_ENTRIES: dict[str, tuple[Any, Any]] = {}
"""Layout -> (serial build, :class:`KernelPair`) of ``forward_entry``/``backward_entry``."""


def _entry(
    entries: dict[str, tuple[Any, Any]], layout: str, elements: int, serial_below: int
) -> Any:
    # the build of a whole-call entry to run over ``elements`` values: the
    # serial one below serial_below without asking the pair (a tiny call
    # pays for every lookup), else the pair's choice (KernelPair.for_size)
    builds = entries.get(layout)
    if builds is None:
        name = "forward_entry" if entries is _FORWARD_ENTRIES else "backward_entry"
        pair = fused_pair(name, layout)
        builds = entries.setdefault(layout, (pair.serial, pair))
    return builds[0] if elements < serial_below else builds[1].for_size(elements)


def fused_pair(name: str, layout: str) -> Any:
    """The parallel and serial builds of the fused pass ``name`` for ``layout``.

    Parameters
    ----------
    name : str
        A name of :data:`bnsgd_numba.batch_norm._cpu.FUSED_PASSES`, such as
        ``"forward_train"`` or ``"_normalize"``.
    layout : str
        ``NCS`` or ``RC`` (:mod:`bnsgd_numba._core.layouts`).

    Returns
    -------
    KernelPair
        Made once per pass (:func:`~bnsgd_numba._core.compile.caller_pair`).
    """
    from bnsgd_numba._core.compile import caller_pair

    return caller_pair(_kernels().FUSED_PASSES[layout][name])


def _kernels() -> Any:
    # the kernel module, imported (numba with it) on the first call only
    if not _KERNELS:
        from bnsgd_numba.batch_norm import _cpu

        _KERNELS.append(_cpu)
    return _KERNELS[0]
