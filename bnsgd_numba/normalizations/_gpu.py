"""Host drivers of the GPU normalization kernels (:mod:`bnsgd_numba._norm_kernels_gpu`).

Imported only when a layer receives a CUDA array. The layers check every
argument first (shapes, dtypes, device or host) and call these functions,
which size the grids and launch the kernels in order on one stream.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnsgd_numba import _cuda_backend as backend
from bnsgd_numba import config

MAX_ELEMENTWISE_BLOCKS = 4096


def _threads() -> int:
    threads = int(config.GPU_THREADS_PER_BLOCK)
    if (
        threads < backend.WARP_SIZE
        or threads > backend.MAX_THREADS_PER_BLOCK
        or (threads & (threads - 1))
    ):
        raise ValueError(
            "config.GPU_THREADS_PER_BLOCK must be a power of two in "
            f"[{backend.WARP_SIZE}, {backend.MAX_THREADS_PER_BLOCK}], got {threads}"
        )
    return threads


def _elementwise_grid(size: int, threads: int) -> int:
    return max(1, min(MAX_ELEMENTWISE_BLOCKS, -(-size // threads)))


def _dummy(dtype: np.dtype) -> Any:
    return backend.to_device(np.zeros(1, dtype))


def _empty(shape: Any, dtype: Any) -> Any:
    return backend.device_empty(shape, dtype)


def row_statistics(rows: Any, eps: float, centered: bool) -> tuple[Any, ...]:
    """Return device (mean, var, invstd) float64 and (hi, lo, scale) in the dtype, per row."""
    from bnsgd_numba import _norm_kernels_gpu as kernels

    count = rows.shape[0]
    dtype = np.dtype(rows.dtype)
    mean, var, invstd = (_empty(count, np.float64) for _ in range(3))
    hi, lo, scale = (_empty(count, dtype) for _ in range(3))
    if count:
        kernels.row_statistics[count, _threads()](
            rows, eps, centered, mean, var, invstd, hi, lo, scale
        )
    return mean, var, invstd, hi, lo, scale


def rows_forward(
    rows: Any, y: Any, weight: Any, bias: Any, eps: float, centered: bool
) -> tuple[Any, Any]:
    """Normalize the rows (R, L) into ``y``; return the float64 (mean, invstd) per row."""
    from bnsgd_numba import _norm_kernels_gpu as kernels

    dtype = np.dtype(rows.dtype)
    mean, _, invstd, hi, lo, scale = row_statistics(rows, eps, centered)
    threads = _threads()
    kernels.rows_normalize[_elementwise_grid(rows.size, threads), threads](
        rows, y, hi, lo, scale, _dummy(dtype) if weight is None else weight,
        _dummy(dtype) if bias is None else bias, weight is not None, bias is not None,
    )  # fmt: skip
    return mean, invstd


def rows_backward(
    dy: Any, rows: Any, dx: Any, weight: Any, mean: Any, invstd: Any, centered: bool,
    grad_weight: Any, grad_bias: Any,
) -> None:  # fmt: skip
    """Write dx of the rows and the per-column ``grad_weight``/``grad_bias`` (None: not kept)."""
    from bnsgd_numba import _norm_kernels_gpu as kernels

    count, length = rows.shape
    dtype = np.dtype(rows.dtype)
    threads = _threads()
    c1, c2 = _empty(count, np.float64), _empty(count, np.float64)
    affine = weight is not None
    w = weight if affine else _dummy(dtype)
    if count:
        kernels.rows_gradient_sums[count, threads](
            dy, rows, w, mean, invstd, centered, affine, c1, c2
        )
        kernels.rows_input_gradient[_elementwise_grid(rows.size, threads), threads](
            dy, rows, dx, w, mean, invstd, affine, c1, c2
        )
    if grad_weight is None and grad_bias is None:
        return
    kernels.rows_parameter_gradients[-(-length // threads), threads](
        dy, rows, mean, invstd,
        _empty(length, dtype) if grad_weight is None else grad_weight,
        _empty(length, dtype) if grad_bias is None else grad_bias,
    )  # fmt: skip


def group_forward(
    x3: Any, y3: Any, weight: Any, bias: Any, groups: int, eps: float
) -> tuple[Any, ...]:
    """Normalize x (N, C, S) per (sample, group) into ``y3``.

    Returns the device (mean, var, invstd) float64 and (hi, lo) per row.
    """
    mean, var, invstd, hi, lo = group_statistics(x3, groups, eps)
    group_normalize(x3, y3, weight, bias, groups, invstd, hi, lo)
    return mean, var, invstd, hi, lo


def group_statistics(x3: Any, groups: int, eps: float) -> tuple[Any, ...]:
    """Device (mean, var, invstd, hi, lo) of the N * G rows of x (N, C, S)."""
    n, channels, s = x3.shape
    rows = x3.reshape(n * groups, (channels // groups) * s)
    mean, var, invstd, hi, lo, _ = row_statistics(rows, eps, True)
    return mean, var, invstd, hi, lo


def group_normalize(
    x3: Any, y3: Any, weight: Any, bias: Any, groups: int, invstd: Any, hi: Any, lo: Any
) -> None:
    """y = ((x - hi) - lo) * (weight * invstd) + bias with the rows' statistics."""
    from bnsgd_numba import _norm_kernels_gpu as kernels

    n, channels, _ = x3.shape
    dtype = np.dtype(x3.dtype)
    threads = _threads()
    affine = weight is not None
    scale, offset = _empty((n, channels), dtype), _empty(channels, dtype)
    if n == 0:
        return
    kernels.group_constants[-(-(n * channels) // threads), threads](
        invstd, weight if affine else _dummy(dtype), bias if affine else _dummy(dtype),
        groups, affine, scale, offset,
    )  # fmt: skip
    kernels.group_normalize[_elementwise_grid(x3.size, threads), threads](
        x3, y3, groups, hi, lo, scale, offset
    )


def group_backward(
    dy3: Any, x3: Any, dx3: Any, weight: Any, groups: int, invstd: Any, mean: Any, hi: Any,
    lo: Any, grad_weight: Any, grad_bias: Any,
) -> None:  # fmt: skip
    """Write dx of GroupNorm and the per-channel ``grad_weight``/``grad_bias`` (None: not kept)."""
    from bnsgd_numba import _norm_kernels_gpu as kernels

    n, channels, s = x3.shape
    dtype = np.dtype(x3.dtype)
    threads = _threads()
    affine = weight is not None
    w = weight if affine else _dummy(dtype)
    sum_dy, sum_dy_xmu = _empty((n, channels), np.float64), _empty((n, channels), np.float64)
    rows = n * groups
    dy_scale = _empty((n, channels), dtype)
    shift, xmu_scale = _empty(rows, dtype), _empty(rows, dtype)
    if n:
        kernels.group_channel_sums[(n, channels), threads](
            dy3, x3, groups, mean, sum_dy, sum_dy_xmu
        )
        kernels.group_gradient_constants[-(-rows // threads), threads](
            sum_dy, sum_dy_xmu, w, invstd, groups, float((channels // groups) * s), affine,
            dy_scale, shift, xmu_scale,
        )  # fmt: skip
        kernels.group_input_gradient[_elementwise_grid(x3.size, threads), threads](
            dy3, x3, dx3, groups, hi, lo, dy_scale, shift, xmu_scale
        )
    if grad_weight is None and grad_bias is None:
        return
    kernels.group_parameter_gradients[-(-channels // threads), threads](
        sum_dy, sum_dy_xmu, invstd, groups,
        _empty(channels, dtype) if grad_weight is None else grad_weight,
        _empty(channels, dtype) if grad_bias is None else grad_bias,
    )  # fmt: skip


def contiguous(array: Any, name: str, what: str) -> Any:
    """Return a C-contiguous device array, or raise ValueError naming the argument."""
    array = backend.as_device_array(array)
    if not array.is_c_contiguous():
        raise ValueError(
            f"{name}: on the GPU this layer reads {what} from a C-contiguous array; "
            "pass a contiguous one"
        )
    return array


def channel_moments(x3: Any) -> tuple[np.ndarray, np.ndarray]:
    """Host float64 (mean, M2) per channel of x (N, C, S) on the device."""
    from bnsgd_numba import _norm_kernels_gpu as kernels

    channels = x3.shape[1]
    mean, m2 = _empty(channels, np.float64), _empty(channels, np.float64)
    kernels.channel_moments[channels, _threads()](x3, mean, m2)
    return mean.copy_to_host(), m2.copy_to_host()


def channel_normalize(x3: Any, y3: Any, constants: tuple[np.ndarray, ...]) -> None:
    """y = ((x - hi) - lo) * scale + offset per channel; ``constants`` are host arrays."""
    from bnsgd_numba import _norm_kernels_gpu as kernels

    hi, lo, scale, offset = (backend.to_device(c) for c in constants)
    threads = _threads()
    kernels.channel_normalize[_elementwise_grid(x3.size, threads), threads](
        x3, y3, hi, lo, scale, offset
    )
