"""Host drivers of the GPU normalization kernels (:mod:`bnsgd_numba.normalizations._cuda`).

Imported only when a layer receives a CUDA array. The layers check every
argument first (shapes, dtypes, device or host) and call these functions,
which size the grids and launch the kernels in order on one stream.

A launch costs tens of microseconds of Python in numba (more per array
argument), and so do a device allocation and a ``reshape`` of a device
array: the drivers pass few arrays, keep each layer's statistics and
partials in one float64 workspace per input shape (:func:`workspace`),
allocated once, and see inputs as rows through at most one cheap view
(:func:`view`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnsgd_numba import config
from bnsgd_numba._core import cuda as backend
from bnsgd_numba._core.arrays import is_device_array

MAX_ELEMENTWISE_BLOCKS = 4096
MAX_WORKSPACES = 8
"""Workspaces a layer keeps (one per input shape); past that it starts over."""
COLUMN_ROWS_PER_THREAD = 16
"""Rows each thread adds per column in the first stage of LayerNorm's ``grad_weight``."""
GROUP_ITEMS_PER_THREAD = 8
"""Values per thread of a chunk of a GroupNorm row (or channel plane) when it is split."""
GROUP_TARGET_BLOCKS = 2048
"""Rows (planes) are split into chunks until there are about this many blocks."""


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


def _empty(shape: Any, dtype: Any) -> Any:
    return backend.device_empty(shape, dtype)


def view(array: Any, shape: tuple[int, ...]) -> Any:
    """``array`` (C-contiguous) seen with ``shape``: itself when it has it, else one cheap view.

    Builds the view directly (``backend.strided_view``), not through the
    slow ``reshape`` of numba's device arrays.
    """
    if tuple(array.shape) == shape:
        return array
    step = np.dtype(array.dtype).itemsize
    strides = []
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return backend.strided_view(array, shape, tuple(reversed(strides)))


def _cache(owner: Any) -> dict:
    cache = owner.__dict__.get("_gpu_workspaces")
    if cache is None or len(cache) > MAX_WORKSPACES:
        cache = owner.__dict__["_gpu_workspaces"] = {}
    return cache


def workspace(owner: Any, key: tuple, size: int) -> Any:
    """The float64 device buffer of ``owner`` for ``key``, allocated on first use.

    It holds the statistics a backward needs and the kernels' partials: one
    allocation per layer and shape instead of several per call. A forward
    saves it with its input; the next forward of the same shape overwrites it.
    """
    cache = _cache(owner)
    work = cache.get(key)
    if work is None:
        work = cache[key] = _empty(max(1, size), np.float64)
    return work


def dummy(owner: Any, dtype: Any) -> Any:
    """A one-element device array of ``dtype`` standing in for an absent weight or bias."""
    cache = _cache(owner)
    key = ("dummy", np.dtype(dtype).str)
    array = cache.get(key)
    if array is None:
        array = cache[key] = _empty(1, dtype)
    return array


def cached_view(owner: Any, array: Any, shape: tuple[int, ...]) -> Any:
    """A view of one of ``owner``'s own arrays, built once while the array stays the same."""
    if array is None or tuple(array.shape) == shape:
        return array
    cache = _cache(owner)
    key = ("view", id(array), shape)
    hit = cache.get(key)
    if hit is None or hit[0] is not array:
        hit = cache[key] = (array, view(array, shape))
    return hit[1]


def device_output(out: Any, x: Any, rows: Any, dtype: Any, others: tuple[Any, ...]) -> Any:
    """Return (array to return, its rows view): a new array shaped like ``x``, or ``out`` checked."""
    if out is None:
        target = _empty(tuple(rows.shape), dtype)
        return view(target, tuple(x.shape)), target
    out = check_device_out(out, x, others)
    return out, view(out, tuple(rows.shape))


def check_device_out(out: Any, like: Any, others: tuple[Any, ...]) -> Any:
    """Return ``out`` as a C-contiguous device array shaped and typed like ``like``."""
    if not is_device_array(out):
        raise TypeError("out: the input is a CUDA array, so out must be one too")
    out = backend.as_device_array(out)
    if tuple(out.shape) != tuple(like.shape):
        raise ValueError(f"out: shape {tuple(out.shape)} does not match x {tuple(like.shape)}")
    if np.dtype(out.dtype) != np.dtype(like.dtype):
        raise TypeError(f"out: dtype {out.dtype} does not match x ({like.dtype})")
    if not out.is_c_contiguous():
        raise ValueError("out: on the GPU, out must be C-contiguous")
    others = [a for a in (like, *others) if a is not None and is_device_array(a)]
    if overlaps_any(out, others):
        raise ValueError("out overlaps another argument; pass a separate array")
    return out


def overlaps_any(out: Any, others: list[Any]) -> bool:
    """Whether the C-contiguous device array ``out`` overlaps any of ``others``.

    Contiguous numba arrays are compared by their pointers and sizes (the
    general ``backend.overlaps`` builds two ``__cuda_array_interface__``
    dicts per pair).
    """
    if backend.SIMULATOR:
        return any(backend.overlaps(out, other) for other in others)
    start = out.device_ctypes_pointer.value or 0
    end = start + out.size * out.dtype.itemsize
    for other in others:
        if getattr(type(other), "__cuda_ndarray__", False) is True and other.is_c_contiguous():
            other_start = other.device_ctypes_pointer.value or 0
            if other_start < end and start < other_start + other.size * other.dtype.itemsize:
                return True
        elif backend.overlaps(out, other):
            return True
    return False


# --- rows (LayerNorm, RMSNorm) ------------------------------------------------


def _spans(count: int, threads: int) -> int:
    # row spans of the column partials: COLUMN_ROWS_PER_THREAD rows per thread
    rows_per_span = (threads // backend.WARP_SIZE) * COLUMN_ROWS_PER_THREAD
    return -(-count // rows_per_span)


def rows_forward(
    owner: Any, rows: Any, y: Any, weight: Any, bias: Any, eps: float, centered: bool
) -> Any:
    """Normalize the rows (R, L) into ``y`` (R, L); one launch.

    Returns ``owner``'s workspace for this shape, which holds the rows'
    float64 (mean, invstd) for :func:`rows_backward` (and room for the
    column partials of ``grad_weight`` when there is a weight).
    """
    from bnsgd_numba.normalizations import _cuda as kernels

    count, length = rows.shape
    threads = _threads()
    spans = _spans(count, threads) if weight is not None else 0
    work = workspace(owner, ("rows", count, length, threads), 4 * count + 2 * spans * length)
    mode = (
        (kernels.CENTERED if centered else 0)
        | (kernels.AFFINE if weight is not None else 0)
        | (kernels.SHIFTED if bias is not None else 0)
    )
    if weight is None:
        weight = dummy(owner, rows.dtype) if bias is None else bias
    if count:
        kernels.rows_forward[count, threads](
            rows, y, weight, weight if bias is None else bias, work, eps, mode
        )
    return work


def rows_backward(
    dy: Any, rows: Any, dx: Any, weight: Any, work: Any, centered: bool, grad_weight: Any,
    grad_bias: Any, owner: Any,
) -> None:  # fmt: skip
    """Write dx of the rows and ``grad_weight``/``grad_bias`` (present with a weight).

    Two launches with a weight (the column partials, then dx and the column
    totals together), one without.
    """
    from bnsgd_numba.normalizations import _cuda as kernels

    count, length = rows.shape
    threads = _threads()
    blocks = count
    mode = kernels.CENTERED if centered else 0
    if weight is None:
        weight = grad_weight = grad_bias = dummy(owner, rows.dtype)
    else:
        mode |= kernels.AFFINE | (kernels.SHIFTED if grad_bias is not None else 0)
        grad_bias = grad_weight if grad_bias is None else grad_bias
        spans = _spans(count, threads)
        if spans:
            tall = threads // backend.WARP_SIZE
            kernels.rows_column_partials[
                (-(-length // backend.WARP_SIZE), spans), (backend.WARP_SIZE, tall)
            ](dy, rows, work)
        blocks += -(-length // threads)
    if blocks:
        kernels.rows_backward[blocks, threads](
            dy, rows, dx, weight, work, grad_weight, grad_bias, mode
        )


# --- groups (GroupNorm, InstanceNorm) -------------------------------------------


def _chunk(length: int, lines: int, threads: int) -> int:
    # values per block when each of ``lines`` lines of ``length`` values is split
    # until there are about GROUP_TARGET_BLOCKS blocks (a multiple of the warp)
    parts = max(1, min(-(-length // (threads * GROUP_ITEMS_PER_THREAD)),
                       -(-GROUP_TARGET_BLOCKS // max(1, lines))))  # fmt: skip
    chunk = -(-length // parts)
    return max(1, -(-chunk // backend.WARP_SIZE) * backend.WARP_SIZE)


def _group_work(owner: Any, rows: Any, spatial: int, threads: int) -> tuple[Any, int, int]:
    count, length = rows.shape
    planes = count * (length // max(1, spatial))
    forward_chunk = _chunk(length, count, threads)
    backward_chunk = _chunk(spatial, planes, threads)
    # per block: two partials and two broadcast values
    scratch = 2 * max(count * -(-length // forward_chunk), planes * -(-spatial // backward_chunk))
    work = workspace(owner, ("groups", count, length, spatial, threads), 3 * count + 2 * scratch)
    return work, forward_chunk, backward_chunk


def group_forward(
    owner: Any, rows: Any, y: Any, weight: Any, bias: Any, groups: int, spatial: int,
    eps: float, stats_only: bool = False, partials_done: bool = False,
) -> Any:  # fmt: skip
    """Normalize the N * G rows (R, L) of GroupNorm into ``y`` (two launches).

    Returns ``owner``'s workspace, whose first ``3 R`` values are the rows'
    float64 (mean, invstd, var). ``stats_only``: write those, not ``y``;
    ``partials_done``: the chunk partials are there already (from a
    ``stats_only`` call on the same rows).
    """
    from bnsgd_numba.normalizations import _cuda as kernels

    count, length = rows.shape
    threads = _threads()
    work, chunk, _ = _group_work(owner, rows, spatial, threads)
    if not rows.size:
        return work
    grid = (-(-length // chunk), count)
    if not partials_done:
        kernels.group_partials[grid, threads](rows, work, chunk)
    mode = (kernels.AFFINE if weight is not None else 0) | (kernels.STATS_ONLY if stats_only else 0)
    if weight is None:
        weight = bias = dummy(owner, rows.dtype)
    kernels.group_forward[grid, threads](
        rows, y, weight, bias, work, groups, spatial, chunk, eps, mode
    )
    return work


def group_statistics(owner: Any, rows: Any, groups: int, spatial: int, eps: float) -> Any:
    """Host float64 (mean, invstd, var) of the rows, shape (R, 3); the workspace keeps them."""
    work = group_forward(owner, rows, rows, None, None, groups, spatial, eps, stats_only=True)
    count = rows.shape[0]
    return work.copy_to_host()[: 3 * count].reshape(count, 3)


def group_backward(
    dy: Any, rows: Any, dx: Any, weight: Any, work: Any, groups: int, spatial: int,
    grad_weight: Any, grad_bias: Any, owner: Any,
) -> None:  # fmt: skip
    """Write dx of GroupNorm and ``grad_weight``/``grad_bias`` (with a weight); two launches."""
    from bnsgd_numba.normalizations import _cuda as kernels

    count, length = rows.shape
    if not rows.size:
        for grad in (grad_weight, grad_bias):
            if grad is not None:
                grad.copy_to_device(np.zeros(grad.shape, grad.dtype))
        return
    threads = _threads()
    planes = count * (length // spatial)
    chunk = _chunk(spatial, planes, threads)
    grid = (-(-spatial // chunk), planes)
    kernels.group_channel_sums[grid, threads](dy, rows, work, spatial, chunk)
    mode = kernels.AFFINE if weight is not None else 0
    if weight is None:
        weight = grad_weight = grad_bias = dummy(owner, rows.dtype)
    kernels.group_backward[grid, threads](
        dy, rows, dx, weight, work, grad_weight, grad_bias, groups, spatial, chunk, mode
    )


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
    from bnsgd_numba.normalizations import _cuda as kernels

    channels = x3.shape[1]
    mean, m2 = _empty(channels, np.float64), _empty(channels, np.float64)
    kernels.channel_moments[channels, _threads()](x3, mean, m2)
    return mean.copy_to_host(), m2.copy_to_host()


def channel_normalize(x3: Any, y3: Any, constants: tuple[np.ndarray, ...]) -> None:
    """y = ((x - hi) - lo) * scale + offset per channel; ``constants`` are host arrays."""
    from bnsgd_numba.normalizations import _cuda as kernels

    hi, lo, scale, offset = (backend.to_device(c) for c in constants)
    threads = _threads()
    kernels.channel_normalize[_elementwise_grid(x3.size, threads), threads](
        x3, y3, hi, lo, scale, offset
    )
