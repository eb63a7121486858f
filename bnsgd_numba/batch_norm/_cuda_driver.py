"""BatchNorm on CUDA arrays: the host drivers of :mod:`bnsgd_numba.batch_norm._cuda`.

:func:`bnsgd_numba.batch_norm_forward` and :func:`~bnsgd_numba.batch_norm_backward`
hand their arguments here when any of them is a CUDA array (a numba device
array, or anything with ``__cuda_array_interface__``: CuPy arrays, PyTorch
CUDA tensors, read in place without copying). The functions check every
argument with the CPU path's rules before any kernel runs, size the grids,
launch the kernels and return numba device arrays on the same device.

Layouts: a C-contiguous input is read as ``(N, C, S)`` (or ``(R, C)`` when
the channel axis is last); a dense channels-last input (an NCHW-shaped array
whose memory is NHWC, as PyTorch's ``channels_last`` tensors) as ``(R, C)``.
Other strided device arrays are rejected (the CPU path copies them; here the
caller decides where a copy goes). Outputs are written in the input's layout;
``out``, ``dy`` and ``x`` must share it.
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

import numpy as np

from bnsgd_numba._core import cuda as backend
from bnsgd_numba._core.arrays import is_device_array
from bnsgd_numba._core.checks import check_eps_in_dtype, check_flag, gpu_threads_per_block
from bnsgd_numba._core.layouts import NCS, RC, normalize_channel_axis
from bnsgd_numba.batch_norm._common import (
    BatchNormGrads,
    BatchNormOutput,
    NonFiniteStatisticsError,
    check_channels,
    check_dy,
    check_forward_options,
    check_input,
    check_running_statistics,
    check_vector,
)

ITEMS_PER_THREAD = 16
"""Least elements each thread reduces per span of a channel-first reduction.

Together with ``config.GPU_THREADS_PER_BLOCK`` and
:data:`TARGET_REDUCTION_BLOCKS` it fixes the number of blocks per channel,
so the reduction order depends on the shape and these settings only, not on
the device (tests lower it to get several blocks per channel).
"""
RC_ROWS_PER_THREAD = 32
"""Least rows each thread reduces per span of a channels-last reduction."""
MAX_SPANS = 65535
"""Most blocks per channel (the grid's y limit)."""
TARGET_REDUCTION_BLOCKS = 2048
"""Blocks a reduction aims at in all (a few waves on a large GPU): past that,
threads take more than the least items each, so the per-block merges are
amortized. A constant, not the device's size, so results do not depend on
the device."""
MAX_ELEMENTWISE_BLOCKS = 4096
"""Most blocks of an elementwise (grid-stride) kernel."""
MAX_PLANE_BLOCKS = 1 << 20
"""Most blocks of a one-plane-per-block elementwise kernel (a plane stride beyond)."""
COLUMN_GRIDS = True
"""``rc``: round the elementwise grid up so that its stride is a multiple of C
(each thread then keeps one channel's constants in registers), when that
needs at most 4 * MAX_ELEMENTWISE_BLOCKS blocks."""
MIN_PLANE_INNER: int | None = None
"""``ncs`` rows (S) at least this long are written one (n, c) plane per block,
the channel's constants read once per thread; shorter ones by a grid-stride
loop over the flat array. None: half a block."""
WORKSPACES_KEPT = 32
"""Workspaces (per-shape intermediate buffers) each host thread keeps per device."""

_WORKSPACE = threading.local()

_OVERFLOW = {
    np.dtype(dtype): float(np.finfo(dtype).max)
    + 2.0 ** (np.finfo(dtype).maxexp - np.finfo(dtype).nmant - 2)
    for dtype in (np.float32, np.float64)
}
"""Per dtype, the least float64 magnitude that rounds to infinity in it (inf for float64)."""


class _Launch:
    """Launch shapes of one BatchNorm call, a function of the view's shape only."""

    def __init__(self, layout: str, shape: tuple[int, ...]) -> None:
        threads = _threads_per_block()
        self.threads = threads
        self.channels = shape[1]
        if layout == NCS:
            n, channels, s = shape
            m = n * s
            self.count = m
            most = max(1, -(-m // (threads * ITEMS_PER_THREAD)))
            spans = min(MAX_SPANS, most, max(1, -(-TARGET_REDUCTION_BLOCKS // max(1, channels))))
            self.span = -(-m // spans) if m else 1
            self.spans = max(1, -(-m // self.span)) if m else 1
            self.reduce_grid = (channels, self.spans)
            self.reduce_block = threads
            self.inner = s
        else:
            rows, channels = shape
            self.count = rows
            tile_rows = threads // backend.WARP_SIZE
            most = max(1, -(-rows // (tile_rows * RC_ROWS_PER_THREAD)))
            tiles = max(1, -(-channels // backend.WARP_SIZE))
            spans = min(MAX_SPANS, most, max(1, -(-TARGET_REDUCTION_BLOCKS // tiles)))
            self.span = -(-rows // spans) if rows else 1
            self.spans = max(1, -(-rows // self.span)) if rows else 1
            self.reduce_grid = (-(-channels // backend.WARP_SIZE), self.spans)
            self.reduce_block = (backend.WARP_SIZE, tile_rows)
            self.inner = 1
        size = math.prod(shape)
        # ncs rows of at least half a block: one (n, c) plane per block, the
        # channel's constants read once per thread
        min_inner = threads // 2 if MIN_PLANE_INNER is None else MIN_PLANE_INNER
        self.planes = layout == NCS and self.inner >= min_inner
        self.plane_grid = max(1, min(MAX_PLANE_BLOCKS, size // self.inner if self.inner else 1))
        self.elementwise_grid = max(1, min(MAX_ELEMENTWISE_BLOCKS, -(-size // threads)))
        # rc: a grid whose stride is a multiple of C gives each thread one channel
        self.columns = False
        if COLUMN_GRIDS and layout == RC and self.channels:
            period = self.channels // math.gcd(self.channels, threads)
            grid = -(-self.elementwise_grid // period) * period
            if grid <= 4 * MAX_ELEMENTWISE_BLOCKS:
                self.columns = True
                self.elementwise_grid = grid
        stride = self.elementwise_grid * threads
        self.step_s = stride % self.inner
        self.step_c = (stride // self.inner) % self.channels if self.channels else 0


def _threads_per_block() -> int:
    return gpu_threads_per_block(backend.WARP_SIZE, backend.MAX_THREADS_PER_BLOCK)


def _check_all_device(caller: str, arrays: dict[str, Any]) -> None:
    given = {name: value for name, value in arrays.items() if value is not None}
    host = [name for name, value in given.items() if not is_device_array(value)]
    if host:
        device = [name for name in given if name not in host]
        device_verb = "is a CUDA array" if len(device) == 1 else "are CUDA arrays"
        host_verb = "is" if len(host) == 1 else "are"
        raise TypeError(
            f"{caller}: {', '.join(device)} {device_verb} but {', '.join(host)} {host_verb} "
            "not: host and device arrays cannot be mixed in one call (move them all to the "
            "device, or all to the host)"
        )
    backend.require_cuda(caller)


def _float_device(value: Any, name: str) -> Any:
    array = backend.as_device_array(value)
    check_input(tuple(array.shape), np.dtype(array.dtype), name)
    return array


def _device_vector(
    value: Any,
    name: str,
    dtype: np.dtype,
    channels: int,
    *,
    writable: bool = False,
    required: bool = False,
) -> Any:
    if value is None:
        if required:
            raise ValueError(f"{name} is required")
        return None
    if writable and backend.readonly(value):
        raise ValueError(f"{name} is read-only, but it is updated in place when training")
    array = backend.as_device_array(value)
    check_vector(name, tuple(array.shape), np.dtype(array.dtype), dtype, channels)
    return array


def _channels_last_strides(shape: tuple[int, ...], axis: int, itemsize: int) -> tuple[int, ...]:
    # Strides of a dense array of ``shape`` whose channel axis varies fastest.
    order = [d for d in range(len(shape)) if d != axis] + [axis]
    strides = [0] * len(shape)
    step = itemsize
    for d in reversed(order):
        strides[d] = step
        step *= shape[d]
    return tuple(strides)


def _same_strides(a: tuple[int, ...], b: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    return all(size <= 1 or sa == sb for sa, sb, size in zip(a, b, shape, strict=True))


def _layout(array: Any, axis: int, name: str) -> str:
    shape = tuple(array.shape)
    if array.is_c_contiguous():
        return RC if axis == len(shape) - 1 else NCS
    expected = _channels_last_strides(shape, axis, np.dtype(array.dtype).itemsize)
    if _same_strides(backend.array_strides(array), expected, shape):
        return RC
    raise ValueError(
        f"{name}: a CUDA array must be C-contiguous or dense channels-last, got strides "
        f"{backend.array_strides(array)} for shape {shape} (copy it into one of those layouts)"
    )


def _kernel_shape(shape: tuple[int, ...], axis: int, layout: str) -> tuple[int, ...]:
    """The (N, C, S) or (R, C) shape the kernels see an array of ``shape`` as."""
    channels = shape[axis]
    if layout == NCS:
        return (math.prod(shape[:axis]), channels, math.prod(shape[axis + 1 :]))
    size = math.prod(shape)
    return (size // channels if channels else 0, channels)


def _normalize(
    kernels: Any, launch: _Launch, x_flat: Any, y_flat: Any, constants: Any, status: Any
) -> None:
    if launch.planes:
        kernels.normalize_planes[launch.plane_grid, launch.threads](
            x_flat, y_flat, launch.inner, launch.channels, constants, status
        )
    elif launch.columns:
        kernels.normalize_columns[launch.elementwise_grid, launch.threads](
            x_flat, y_flat, launch.channels, constants, status
        )
    else:
        kernels.normalize[launch.elementwise_grid, launch.threads](
            x_flat, y_flat, launch.inner, launch.channels, launch.step_s, launch.step_c,
            constants, status,
        )  # fmt: skip


def _empty_like_layout(x: Any, axis: int, layout: str) -> Any:
    shape = tuple(x.shape)
    if x.is_c_contiguous():
        return backend.device_empty(shape, x.dtype)
    flat = backend.device_empty(math.prod(shape), x.dtype)
    strides = _channels_last_strides(shape, axis, np.dtype(x.dtype).itemsize)
    return backend.strided_view(flat, shape, strides)


def _check_out(out: Any, x: Any, name: str, others: tuple[Any, ...]) -> Any:
    if backend.readonly(out):
        raise ValueError(f"{name} is read-only")
    out = backend.as_device_array(out)
    if tuple(out.shape) != tuple(x.shape):
        raise ValueError(f"{name}: shape {tuple(out.shape)} does not match x {tuple(x.shape)}")
    if np.dtype(out.dtype) != np.dtype(x.dtype):
        raise TypeError(
            f"{name}: dtype {np.dtype(out.dtype)} does not match x ({np.dtype(x.dtype)})"
        )
    if not _same_strides(backend.array_strides(out), backend.array_strides(x), tuple(x.shape)):
        raise ValueError(f"{name}: must have the memory layout (strides) of x")
    if backend.overlaps(out, x):
        raise ValueError(f"{name} overlaps the input x; pass a separate array")
    for other in others:
        if other is not None and backend.overlaps(out, other):
            raise ValueError(f"{name} overlaps another argument; pass a separate array")
    return out


def _check_apart(written: tuple[tuple[str, Any], ...], read: tuple[tuple[str, Any], ...]) -> None:
    # _core.arrays.check_apart for device arrays (each given array against the written ones)
    for k, (name, array) in enumerate(written):
        for other_name, other in (*written[k + 1 :], *read):
            if other is not None and backend.overlaps(array, other):
                raise ValueError(
                    f"{name} and {other_name} overlap in memory: {name} is written in place, "
                    "so it must not share memory with another argument (pass a copy)"
                )


def _dummy(dtype: np.dtype) -> Any:
    # A one-element stand-in for an absent weight, bias or running statistic.
    return _cached(("dummy", np.dtype(dtype)), lambda: backend.to_device(np.zeros(1, dtype)))


def _cached(key: tuple[Any, ...], make: Any) -> Any:
    # This thread's device arrays, per current device (kernels run on it).
    cache = getattr(_WORKSPACE, "arrays", None)
    if cache is None:
        cache = _WORKSPACE.arrays = {}
    key = (backend.current_device_id(), *key)
    value = cache.get(key)
    if value is None:
        value = cache[key] = make()
    return value


class _Workspace:
    """Intermediate device buffers of one (kind, dtype, channels, spans), reused from call to call.

    Kernels run in order on one stream, so a later call's writes come after
    this call's reads. Kept per host thread and per device (see
    :func:`_cached`), at most :data:`WORKSPACES_KEPT` of them.
    """

    def __init__(self, dtype: np.dtype, channels: int, spans: int) -> None:
        self.parts = backend.device_empty((3, channels, spans), np.float64)
        self.stats = backend.device_empty((2, channels), np.float64)
        self.constants = backend.device_empty((4, channels), dtype)
        self.bad = backend.device_empty(channels, np.int32)
        self.status = backend.device_empty(2, np.int32)


def _workspace(kind: str, dtype: np.dtype, channels: int, spans: int) -> _Workspace:
    key = ("workspace", kind, np.dtype(dtype), channels, spans)
    cache = getattr(_WORKSPACE, "arrays", None)
    if cache is not None and (backend.current_device_id(), *key) not in cache:
        workspaces = [k for k in cache if k[1] == "workspace"]
        for old in workspaces[: max(0, len(workspaces) - WORKSPACES_KEPT + 1)]:
            del cache[old]
    return _cached(key, lambda: _Workspace(dtype, channels, spans))


def _constant_status() -> Any:
    # [no non-finite channel, write the output]: the status of eval mode.
    return _cached(("status",), lambda: backend.to_device(np.array([0, 1], dtype=np.int32)))


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
    warn_stacklevel: int = 3,
) -> tuple[BatchNormOutput, int]:
    """:func:`bnsgd_numba.batch_norm_forward` on CUDA arrays, with the non-finite count.

    Parameters
    ----------
    x, weight, bias, running_mean, running_var, out
        As :func:`bnsgd_numba.batch_norm_forward`; every array given must be
        a CUDA array (numba device array or ``__cuda_array_interface__``).
    training, momentum, eps, channel_axis, on_nonfinite
        As :func:`bnsgd_numba.batch_norm_forward`.
    warn_stacklevel : int
        ``stacklevel`` the CPU path would give the RuntimeWarning of
        ``on_nonfinite="skip"``; one more is added for this function's frame.

    Returns
    -------
    tuple of (BatchNormOutput, int)
        The output as numba device arrays, and the number of channels whose
        batch statistics are not finite (counted in training with running
        statistics only, which reads one integer back from the device and
        so waits for the kernels; 0 otherwise).

    Raises
    ------
    TypeError, ValueError
        Bad input, or host and device arrays mixed, before anything is written.
    CudaUnavailableError
        CUDA arrays were passed but CUDA kernels cannot run here.
    NonFiniteStatisticsError
        As on the CPU (only ``save_mean``/``save_invstd`` were computed).
    """
    arrays = {
        "x": x, "weight": weight, "bias": bias, "running_mean": running_mean,
        "running_var": running_var, "out": out,
    }  # fmt: skip
    _check_all_device("batch_norm_forward", arrays)
    x = _float_device(x, "x")
    shape = tuple(x.shape)
    axis, channels = check_channels(shape, channel_axis)
    dtype = np.dtype(x.dtype)
    training, momentum, eps = check_forward_options(training, momentum, eps, on_nonfinite)
    check_eps_in_dtype(eps, dtype)
    weight = _device_vector(weight, "weight", dtype, channels)
    bias = _device_vector(bias, "bias", dtype, channels)
    running_mean = _device_vector(running_mean, "running_mean", dtype, channels, writable=training)
    running_var = _device_vector(running_var, "running_var", dtype, channels, writable=training)
    check_running_statistics(shape, channels, training, running_mean, running_var)
    if training and running_mean is not None:
        _check_apart(
            (("running_mean", running_mean), ("running_var", running_var)),
            (("x", x), ("weight", weight), ("bias", bias)),
        )
    layout = _layout(x, axis, "x")
    if out is not None:
        out = _check_out(out, x, "out", (running_mean, running_var, weight, bias))

    from bnsgd_numba.batch_norm import _cuda as kernels

    threads = _threads_per_block()
    y = out if out is not None else _empty_like_layout(x, axis, layout)
    dummy = _dummy(dtype)
    has_weight, has_bias = weight is not None, bias is not None
    weight = dummy if weight is None else weight
    bias = dummy if bias is None else bias
    if math.prod(shape) == 0:
        # the CPU path's empty batch: no kernel over the data; in training the
        # statistics of zero sums, the running ones left alone
        if training:
            empty = np.array([[0.0] * channels, [1.0 / math.sqrt(eps)] * channels], dtype)
            saved = backend.to_device(empty)
        else:
            saved = backend.device_empty((2, channels), dtype)
            kernels.eval_constants[-(-channels // threads), threads](
                running_mean, running_var, eps, weight, bias, has_weight, has_bias,
                saved, backend.device_empty((4, channels), dtype),
            )  # fmt: skip
        save_mean, save_invstd = backend.row_views(saved)
        return BatchNormOutput(y, save_mean, save_invstd), 0

    launch = _Launch(layout, _kernel_shape(shape, axis, layout))
    x_flat = backend.flat_view(x)
    y_flat = backend.flat_view(y)
    saved = backend.device_empty((2, channels), dtype)
    save_mean, save_invstd = backend.row_views(saved)
    work = _workspace("forward", dtype, channels, launch.spans)

    if not training:
        kernels.eval_constants[-(-channels // threads), threads](
            running_mean, running_var, eps, weight, bias, has_weight, has_bias,
            saved, work.constants,
        )  # fmt: skip
        _normalize(kernels, launch, x_flat, y_flat, work.constants, _constant_status())
        return BatchNormOutput(y, save_mean, save_invstd), 0

    if layout == NCS:
        kernels.moments_ncs[launch.reduce_grid, launch.reduce_block](
            x_flat, channels, launch.inner, launch.span, work.parts
        )
    else:
        kernels.moments_rc[launch.reduce_grid, launch.reduce_block](
            x_flat, channels, launch.span, work.parts
        )
    kernels.finish_moments[channels, threads](
        work.parts, eps, weight, bias, has_weight, has_bias, work.stats, saved,
        work.constants, work.bad,
    )  # fmt: skip
    tracked = running_mean is not None
    status = work.status
    kernels.finish_running[1, threads](
        work.bad, float(launch.count), momentum, tracked, tracked and on_nonfinite == "raise",
        work.stats, running_mean if tracked else dummy, running_var if tracked else dummy,
        _OVERFLOW[dtype], status,
    )  # fmt: skip
    _normalize(kernels, launch, x_flat, y_flat, work.constants, status)
    n_bad = 0
    if tracked:
        n_bad = int(status.copy_to_host()[0])
        if n_bad:
            channels_bad = np.flatnonzero(work.bad.copy_to_host())
            if on_nonfinite == "raise":
                raise NonFiniteStatisticsError(channels_bad)
            warnings.warn(
                f"batch statistics are not finite in {n_bad} channel(s) "
                f"{channels_bad.tolist()}; the running statistics were not updated",
                RuntimeWarning,
                stacklevel=warn_stacklevel + 1,
            )
    return BatchNormOutput(y, save_mean, save_invstd), n_bad


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
    """:func:`bnsgd_numba.batch_norm_backward` on CUDA arrays.

    Parameters
    ----------
    dy, x, weight, save_mean, save_invstd, training, channel_axis, out
        As :func:`bnsgd_numba.batch_norm_backward`; every array given must be
        a CUDA array, and ``dy`` (and ``out``) in the memory layout of ``x``.

    Returns
    -------
    BatchNormGrads
        ``(dx, dweight, dbias)`` as numba device arrays in the dtype of ``x``.

    Raises
    ------
    TypeError, ValueError
        Bad input, or host and device arrays mixed, before anything is written.
    CudaUnavailableError
        CUDA arrays were passed but CUDA kernels cannot run here.
    """
    arrays = {
        "dy": dy, "x": x, "weight": weight, "save_mean": save_mean,
        "save_invstd": save_invstd, "out": out,
    }  # fmt: skip
    _check_all_device("batch_norm_backward", arrays)
    x = _float_device(x, "x")
    dy = _float_device(dy, "dy")
    shape = tuple(x.shape)
    dtype = np.dtype(x.dtype)
    check_dy(tuple(dy.shape), np.dtype(dy.dtype), shape, dtype)
    axis = normalize_channel_axis(channel_axis, len(shape))
    channels = shape[axis]
    training = check_flag(training, "training")
    weight = _device_vector(weight, "weight", dtype, channels)
    save_mean = _device_vector(save_mean, "save_mean", dtype, channels, required=True)
    save_invstd = _device_vector(save_invstd, "save_invstd", dtype, channels, required=True)
    layout = _layout(x, axis, "x")
    if not _same_strides(backend.array_strides(dy), backend.array_strides(x), shape):
        raise ValueError("dy: must have the memory layout (strides) of x")
    if out is not None:
        out = _check_out(out, x, "out", (dy, weight, save_mean, save_invstd))

    from bnsgd_numba.batch_norm import _cuda as kernels

    dx = out if out is not None else _empty_like_layout(x, axis, layout)
    if math.prod(shape) == 0:
        # the CPU path's empty batch: sums over no values
        dweight, dbias = backend.row_views(backend.to_device(np.zeros((2, channels), dtype)))
        return BatchNormGrads(dx, dweight, dbias)
    launch = _Launch(layout, _kernel_shape(shape, axis, layout))
    x_flat = backend.flat_view(x)
    dy_flat = backend.flat_view(dy)
    dx_flat = backend.flat_view(dx)
    threads = launch.threads
    grads = backend.device_empty((2, channels), dtype)
    dweight, dbias = backend.row_views(grads)
    if channels:
        work = _workspace("backward", dtype, channels, launch.spans)
        part, constants = work.parts, work.constants
        if layout == NCS:
            kernels.gradient_sums_ncs[launch.reduce_grid, launch.reduce_block](
                dy_flat, x_flat, channels, launch.inner, save_mean, launch.span, part
            )
        else:
            kernels.gradient_sums_rc[launch.reduce_grid, launch.reduce_block](
                dy_flat, x_flat, channels, save_mean, launch.span, part
            )
        has_weight = weight is not None
        kernels.finish_gradient_sums[channels, threads](
            part, float(launch.count), training, _dummy(dtype) if weight is None else weight,
            has_weight, save_invstd, grads, constants,
        )  # fmt: skip
        if launch.planes:
            kernels.input_gradient_planes[launch.plane_grid, threads](
                dy_flat, x_flat, dx_flat, launch.inner, channels, save_mean, constants
            )
        elif launch.columns:
            kernels.input_gradient_columns[launch.elementwise_grid, threads](
                dy_flat, x_flat, dx_flat, channels, save_mean, constants
            )
        else:
            kernels.input_gradient[launch.elementwise_grid, threads](
                dy_flat, x_flat, dx_flat, launch.inner, channels, launch.step_s, launch.step_c,
                save_mean, constants,
            )  # fmt: skip
    return BatchNormGrads(dx, dweight, dbias)
