"""CUDA BatchNorm kernels (``@cuda.jit``) on the two canonical layouts.

The layouts are those of :mod:`bnsgd_numba.batch_norm._cpu`: ``ncs``, an
``(N, C, S)`` array, and ``rc``, an ``(R, C)`` array whose channel varies
fastest in memory; the kernels take them as flat 1-D views of the dense
memory plus the dimensions (a view per call costs host time with
numba-cuda). :mod:`bnsgd_numba.batch_norm._cuda_driver` validates the input and
launches these kernels in order. Per-channel intermediates travel packed:
``parts`` (3, C, B), ``stats`` (2, C), ``saved`` (2, C), ``constants`` (4, C).

Reductions (forward statistics and the backward sums) have two stages:

1. ``moments_*``/``gradient_sums_*``: each block reduces a fixed span of one
   channel (``ncs``: grid ``(C, B)``, one block per channel span; ``rc``: a
   2-D tiling, ``blockDim = (32, TY)``, 32 channels wide and a span of rows
   high). Each thread reads its strided elements several at a time and
   accumulates in float64 (moments: statistics about its first value, four
   values merged at a time, see :func:`_add_values`; sums: plain sums); the
   threads' partials are merged with Chan's formula (or added) through warp
   shuffles, then across warps through shared memory (``ncs``), or through
   a shared-memory tree over the rows of the tile (``rc``): the block and
   tile reductions of :mod:`bnsgd_numba._core.cuda_reductions`. One partial
   per (channel, span) is written, never accumulated with atomics.
2. ``finish_*``: one block per channel merges its partials, again per thread
   in a fixed order and then through the same block merge, and computes the
   per-channel constants.

Every merge happens in an order fixed by the shape and the launch
configuration, so results are bitwise identical from run to run (no float
atomics anywhere). Every thread of a block takes part in every block merge:
control flow around shuffles and barriers is uniform over the block.

The elementwise kernels compute, in the data's dtype,
``y = ((x - shift_hi) - shift_lo) * scale + offset`` (``shift_hi + shift_lo``
carries the float64 mean, so a constant channel gives exactly ``offset`` and
|mean| >> std keeps its accuracy) and
``dx = ((dy - shift) - ((x - saved_mean) - center_lo) * xmu_scale) * dy_scale``,
exactly as the CPU kernels do: one (n, c) plane per block for ``ncs`` with
long rows (``*_planes``), a fixed channel per thread for ``rc`` when the
grid's stride is a multiple of C (``*_columns``), a grid-stride loop that
steps the channel otherwise.

The two layouts' twins differ in their indexing only: what a thread does
with the values it reads (:func:`_add_four`, :func:`_add_gradients_two`,
:func:`_normalize_run`, :func:`_input_gradient_run`, ...) is written once.
"""

from __future__ import annotations

import math

from numba import float64, int32

from bnsgd_numba._core.cuda import MAX_THREADS_PER_BLOCK, cuda, gpu_device_function, gpu_kernel
from bnsgd_numba._core.cuda_reductions import (
    TILE_WIDTH,
    block_merge,
    block_sum3,
    merge_chan,
    tile_merge,
    tile_sum3,
)

TILE_CHANNELS = TILE_WIDTH
"""Channels per block of the channels-last (``rc``) tiling: one warp wide."""


# --- per-thread steps both layouts share ---------------------------------------


@gpu_device_function
def _ncs_span(size, channels, inner, span):
    # Thread tid of block (c, b) of an ncs reduction: its first value j of
    # channel c at (row, col), the (row, col) step of the block's stride,
    # and the end of the block's span
    m = (size // (channels * inner)) * inner
    start = cuda.blockIdx.y * span
    j = start + cuda.threadIdx.x
    row = j // inner
    step_row = cuda.blockDim.x // inner
    step_col = cuda.blockDim.x - step_row * inner
    return j, row, j - row * inner, step_row, step_col, min(start + span, m)


@gpu_device_function
def _rc_span(size, channels, span):
    # Thread (tx, ty) of block (t, b) of an rc reduction: its channel
    # 32 t + tx and the block's span [start, stop) of rows
    c = cuda.blockIdx.x * TILE_CHANNELS + cuda.threadIdx.x
    start = cuda.blockIdx.y * span
    return c, start, min(start + span, size // channels)


@gpu_device_function
def _ncs_take(row, col, c, channels, inner, step_row, step_col):
    # Flat index of value (row, col) of channel c of an (N, C, S) array, and
    # the position a block's stride further on: col advances by the
    # stride % S and carries into row.
    k = (row * channels + c) * inner + col
    row, col = _carry(row, col, step_row, step_col, inner)
    return k, row, col


@gpu_device_function
def _carry(outer, position, step_outer, step_position, size):
    # (outer, position) advanced by (step_outer, step_position), position < size carrying into outer
    outer += step_outer
    position += step_position
    if position >= size:
        position -= size
        outer += 1
    return outer, position


@gpu_device_function
def _add_values(n, shift, total, m2, v0, v1, v2, v3, count):
    # A thread's running statistics are (n, total, M2) about a fixed ``shift``
    # (its first value): mean = shift + total / n, so the mean never goes
    # through n rounded updates, only the small deviations are summed. The
    # first ``count`` (1 or 4) of v0..v3 are added: their own mean and M2 by
    # the corrected two-pass formula in registers (/4 is exact), then merged
    # with Chan's formula, one division per four values.
    if count == 1:
        local = v0 - shift
        local_m2 = 0.0
    else:
        local = (v0 + v1 + v2 + v3) * 0.25
        d0 = v0 - local
        d1 = v1 - local
        d2 = v2 - local
        d3 = v3 - local
        deviations = (d0 + d1) + (d2 + d3)
        local += deviations * 0.25 - shift
        local_m2 = max(
            0.0, (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3) - deviations * deviations * 0.25
        )
    k = float64(count)
    if n == 0.0:
        return k, local * k, local_m2
    delta = local - total / n
    merged = n + k
    return merged, total + local * k, m2 + local_m2 + delta * delta * (n * (k / merged))


@gpu_device_function
def _add_four(x, k0, k1, k2, k3, n, shift, total, m2):
    # x[k0..k3] into a thread's statistics (four loads in flight)
    v0 = float64(x[k0])
    v1 = float64(x[k1])
    v2 = float64(x[k2])
    v3 = float64(x[k3])
    return _add_values(n, shift, total, m2, v0, v1, v2, v3, 4)


@gpu_device_function
def _add_one(x, k, n, shift, total, m2):
    return _add_values(n, shift, total, m2, float64(x[k]), 0.0, 0.0, 0.0, 1)


@gpu_device_function
def _add_gradients(dy, x, k, mu, total_dy, total_dy_xmu, total_xmu):
    # dy[k], dy[k] * (x[k] - mu) and x[k] - mu into a thread's sums
    g = float64(dy[k])
    xmu = float64(x[k]) - mu
    return total_dy + g, total_dy_xmu + g * xmu, total_xmu + xmu


@gpu_device_function
def _add_gradients_two(dy, x, k0, k1, mu, total_dy, total_dy_xmu, total_xmu):
    # two elements per step: four loads in flight, the same order of sums
    g0 = float64(dy[k0])
    g1 = float64(dy[k1])
    x0 = float64(x[k0])
    x1 = float64(x[k1])
    xmu = x0 - mu
    total_dy += g0
    total_dy_xmu += g0 * xmu
    total_xmu += xmu
    xmu = x1 - mu
    total_dy += g1
    total_dy_xmu += g1 * xmu
    total_xmu += xmu
    return total_dy, total_dy_xmu, total_xmu


@gpu_device_function
def _store_partial(parts, c, b, a0, a1, a2):
    parts[0, c, b] = a0
    parts[1, c, b] = a1
    parts[2, c, b] = a2


# --- forward statistics -----------------------------------------------------


@gpu_kernel
def moments_ncs(x, channels, inner, span, parts):
    """Partials (count, mean, M2) of a flat (N, C, S) array: block (c, b) reduces span b of c.

    Channel c holds m = N * S values; value j is ``x[((j // S) * C + c) * S + j % S]``.
    Each thread reads its values four at a time (four loads in flight),
    takes their exact mean and M2 in float64 registers and merges them into
    its running statistics about its first value (:func:`_add_values`); the
    threads' partials are merged with Chan's formula through the block.
    ``parts`` is (3, C, B).
    """
    c = cuda.blockIdx.x
    b = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    j, row, col, step_row, step_col, stop = _ncs_span(x.shape[0], channels, inner, span)
    n = 0.0
    total = 0.0
    m2 = 0.0
    shift = float64(x[(row * channels + c) * inner + col]) if j < stop else 0.0
    while j + 3 * threads < stop:
        k0, row, col = _ncs_take(row, col, c, channels, inner, step_row, step_col)
        k1, row, col = _ncs_take(row, col, c, channels, inner, step_row, step_col)
        k2, row, col = _ncs_take(row, col, c, channels, inner, step_row, step_col)
        k3, row, col = _ncs_take(row, col, c, channels, inner, step_row, step_col)
        n, total, m2 = _add_four(x, k0, k1, k2, k3, n, shift, total, m2)
        j += 4 * threads
    while j < stop:
        k, row, col = _ncs_take(row, col, c, channels, inner, step_row, step_col)
        n, total, m2 = _add_one(x, k, n, shift, total, m2)
        j += threads
    mean = shift + total / n if n > 0.0 else 0.0
    n, mean, m2 = block_merge(tid, threads, n, mean, m2)
    if tid == 0:
        _store_partial(parts, c, b, n, mean, m2)


@gpu_kernel
def moments_rc(x, channels, span, parts):
    """Partials of a flat (R, C) array (channel fastest): a (32 channels) x (span rows) tile.

    ``blockDim = (32, TY)`` with TY a power of two; thread (tx, ty) reduces
    rows ty, ty + TY, ... of its span for channel 32 * blockIdx.x + tx, four
    at a time as :func:`moments_ncs` does, and the tile's rows are merged
    through shared memory.
    """
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    rows_step = cuda.blockDim.y
    b = cuda.blockIdx.y
    c, start, stop = _rc_span(x.shape[0], channels, span)
    n = 0.0
    total = 0.0
    m2 = 0.0
    mean = 0.0
    r = start + ty
    if c < channels and r < stop:
        shift = float64(x[r * channels + c])
        while r + 3 * rows_step < stop:
            k0 = r * channels + c
            k1 = (r + rows_step) * channels + c
            k2 = (r + 2 * rows_step) * channels + c
            k3 = (r + 3 * rows_step) * channels + c
            n, total, m2 = _add_four(x, k0, k1, k2, k3, n, shift, total, m2)
            r += 4 * rows_step
        while r < stop:
            n, total, m2 = _add_one(x, r * channels + c, n, shift, total, m2)
            r += rows_step
        mean = shift + total / n
    n, mean, m2 = tile_merge(tx, ty, rows_step, n, mean, m2)
    if ty == 0 and c < channels:
        _store_partial(parts, c, b, n, mean, m2)


@gpu_device_function
def _write_constants(saved, constants, c, mean, invstd, weight, bias, has_weight, has_bias):
    # saved: save_mean, save_invstd; constants: shift_hi, shift_lo, scale, offset
    saved[0, c] = mean
    saved[1, c] = invstd
    constants[0, c] = mean
    constants[1, c] = mean - float64(constants[0, c])
    w = float64(weight[c]) if has_weight else 1.0
    constants[2, c] = w * invstd
    constants[3, c] = bias[c] if has_bias else 0.0


@gpu_kernel
def finish_moments(
    parts, eps, weight, bias, has_weight, has_bias, stats, saved, constants, bad,
):  # fmt: skip
    """Block c merges channel c's partials; writes its statistics and constants.

    ``stats`` (2, C) float64: mean and M2; ``saved`` (2, C): save_mean and
    save_invstd; ``constants`` (4, C): shift_hi, shift_lo, scale, offset;
    ``bad[c]`` is 1 when the statistics are not finite.
    """
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    n = 0.0
    mean = 0.0
    m2 = 0.0
    for j in range(tid, parts.shape[2], threads):
        n, mean, m2 = merge_chan(n, mean, m2, parts[0, c, j], parts[1, c, j], parts[2, c, j])
    n, mean, m2 = block_merge(tid, threads, n, mean, m2)
    if tid == 0:
        variance = m2 / n
        invstd = 1.0 / math.sqrt(variance + eps)
        stats[0, c] = mean
        stats[1, c] = m2
        _write_constants(saved, constants, c, mean, invstd, weight, bias, has_weight, has_bias)
        bad[c] = 0 if (math.isfinite(mean) and math.isfinite(variance)) else 1


@gpu_kernel
def finish_running(
    bad, count, momentum, tracked, stop_on_nonfinite, stats, running_mean, running_var,
    overflow, status,
):  # fmt: skip
    """One block: count non-finite channels into status; update running statistics.

    With running statistics (``tracked``), a channel is non-finite when its
    running update is in the dtype: a float64 value whose magnitude is not
    below ``overflow`` (the least one that rounds to infinity in the dtype),
    or NaN; ``bad[c]`` is set to 1 for it (non-finite batch statistics make
    a non-finite update). ``status[0]``: non-finite channels; ``status[1]``:
    1 when the output is to be written. The running update happens only
    when every channel is finite.
    """
    counts = cuda.shared.array(MAX_THREADS_PER_BLOCK, int32)
    total = cuda.shared.array(1, int32)
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    channels = bad.shape[0]
    keep = 1.0 - momentum
    mine = 0
    for c in range(tid, channels, threads):
        if tracked:
            unbiased = stats[1, c] / (count - 1.0)
            new_mean = keep * float64(running_mean[c]) + momentum * stats[0, c]
            new_var = keep * float64(running_var[c]) + momentum * unbiased
            if not (abs(new_mean) < overflow and abs(new_var) < overflow):
                bad[c] = 1
        mine += bad[c]
    counts[tid] = mine
    cuda.syncthreads()
    if tid == 0:
        found = 0
        for t in range(threads):
            found += counts[t]
        total[0] = found
        status[0] = found
        status[1] = 0 if (found > 0 and stop_on_nonfinite) else 1
    cuda.syncthreads()
    if tracked and total[0] == 0:
        for c in range(tid, channels, threads):
            unbiased = stats[1, c] / (count - 1.0)
            running_mean[c] = keep * float64(running_mean[c]) + momentum * stats[0, c]
            running_var[c] = keep * float64(running_var[c]) + momentum * unbiased


@gpu_kernel
def eval_constants(
    running_mean, running_var, eps, weight, bias, has_weight, has_bias, saved, constants,
):  # fmt: skip
    """Per-channel constants of eval mode, from the running statistics (as :func:`finish_moments`)."""
    c = cuda.grid(1)
    if c < running_mean.shape[0]:
        mean = float64(running_mean[c])
        invstd = 1.0 / math.sqrt(float64(running_var[c]) + eps)
        _write_constants(saved, constants, c, mean, invstd, weight, bias, has_weight, has_bias)


# --- elementwise ------------------------------------------------------------


@gpu_device_function
def _normalized(v, hi, lo, scale, offset):
    return ((v - hi) - lo) * scale + offset


@gpu_device_function
def _input_gradient_of(v, hi, lo, g, shift, xmu_scale, dy_scale):
    return ((g - shift) - ((v - hi) - lo) * xmu_scale) * dy_scale


@gpu_device_function
def _first_channel(i, inner, channels):
    # (position in the row, channel) of flat element i: i = (q * C + c) * inner + s
    q = i // inner
    return i - q * inner, q % channels


@gpu_device_function
def _next_channel(s, c, step_s, step_c, inner, channels):
    c, s = _carry(c, s, step_c, step_s, inner)
    if c >= channels:
        c -= channels
    return s, c


@gpu_device_function
def _normalize_run(x, y, i, stop, step, hi, lo, scale, offset):
    # y at i, i + step, ... below stop, with one channel's constants; four
    # loads in flight per pass
    while i + 3 * step < stop:
        a0 = x[i]
        a1 = x[i + step]
        a2 = x[i + 2 * step]
        a3 = x[i + 3 * step]
        y[i] = _normalized(a0, hi, lo, scale, offset)
        y[i + step] = _normalized(a1, hi, lo, scale, offset)
        y[i + 2 * step] = _normalized(a2, hi, lo, scale, offset)
        y[i + 3 * step] = _normalized(a3, hi, lo, scale, offset)
        i += 4 * step
    while i < stop:
        y[i] = _normalized(x[i], hi, lo, scale, offset)
        i += step


@gpu_device_function
def _input_gradient_run(dy, x, dx, i, stop, step, hi, lo, dy_scale, shift, xmu_scale):
    # dx at i, i + step, ... below stop, with one channel's constants; four
    # loads in flight per pass
    while i + step < stop:
        x0 = x[i]
        x1 = x[i + step]
        g0 = dy[i]
        g1 = dy[i + step]
        dx[i] = _input_gradient_of(x0, hi, lo, g0, shift, xmu_scale, dy_scale)
        dx[i + step] = _input_gradient_of(x1, hi, lo, g1, shift, xmu_scale, dy_scale)
        i += 2 * step
    while i < stop:
        dx[i] = _input_gradient_of(x[i], hi, lo, dy[i], shift, xmu_scale, dy_scale)
        i += step


@gpu_kernel
def normalize(x, y, inner, channels, step_s, step_c, constants, status):
    """y = ((x - shift_hi) - shift_lo) * scale + offset over flat views (skipped if status[1] == 0).

    ``constants`` is (4, C): shift_hi, shift_lo, scale, offset. Element i is
    in channel (i // inner) % channels: ``inner`` is S for ``ncs`` and 1 for
    ``rc``. The channel is divided out once per thread and then advanced by
    the grid stride, ``step_s = stride % inner`` and
    ``step_c = (stride // inner) % channels`` (64-bit division per element
    would cost more than the arithmetic).
    """
    if status[1] == 0:
        return
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    size = x.shape[0]
    s, c = _first_channel(i, inner, channels)
    while i < size:
        y[i] = _normalized(x[i], constants[0, c], constants[1, c], constants[2, c], constants[3, c])
        i += stride
        s, c = _next_channel(s, c, step_s, step_c, inner, channels)


@gpu_kernel
def normalize_planes(x, y, inner, channels, constants, status):
    """:func:`normalize` for ``ncs`` with long rows: block p writes plane p = (n, c) of S values.

    The channel's constants are read once per thread, and each thread has
    four loads in flight per step; blocks stride over the planes when there
    are more planes than blocks.
    """
    if status[1] == 0:
        return
    planes = x.shape[0] // inner
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    plane = cuda.blockIdx.x
    while plane < planes:
        c = plane % channels
        hi = constants[0, c]
        lo = constants[1, c]
        scale = constants[2, c]
        offset = constants[3, c]
        start = plane * inner + tid
        stop = (plane + 1) * inner
        _normalize_run(x, y, start, stop, threads, hi, lo, scale, offset)
        plane += cuda.gridDim.x


@gpu_kernel
def normalize_columns(x, y, channels, constants, status):
    """:func:`normalize` for ``rc`` when the grid's stride is a multiple of C: a fixed channel per thread."""
    if status[1] == 0:
        return
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    size = x.shape[0]
    c = i % channels
    hi = constants[0, c]
    lo = constants[1, c]
    scale = constants[2, c]
    offset = constants[3, c]
    _normalize_run(x, y, i, size, stride, hi, lo, scale, offset)


@gpu_kernel
def input_gradient(dy, x, dx, inner, channels, step_s, step_c, center_hi, constants):
    """dx = ((dy - shift) - ((x - center_hi) - center_lo) * xmu_scale) * dy_scale, flat views.

    ``constants`` is (4, C): dy_scale, shift, xmu_scale, center_lo. Channels
    as in :func:`normalize`.
    """
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    size = x.shape[0]
    s, c = _first_channel(i, inner, channels)
    while i < size:
        dx[i] = _input_gradient_of(
            x[i], center_hi[c], constants[3, c], dy[i], constants[1, c], constants[2, c],
            constants[0, c],
        )  # fmt: skip
        i += stride
        s, c = _next_channel(s, c, step_s, step_c, inner, channels)


@gpu_kernel
def input_gradient_planes(dy, x, dx, inner, channels, center_hi, constants):
    """:func:`input_gradient` for ``ncs`` with long rows, one plane per block (as :func:`normalize_planes`)."""
    planes = x.shape[0] // inner
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    plane = cuda.blockIdx.x
    while plane < planes:
        c = plane % channels
        hi = center_hi[c]
        dy_scale = constants[0, c]
        shift = constants[1, c]
        xmu_scale = constants[2, c]
        lo = constants[3, c]
        start = plane * inner + tid
        stop = (plane + 1) * inner
        _input_gradient_run(dy, x, dx, start, stop, threads, hi, lo, dy_scale, shift, xmu_scale)
        plane += cuda.gridDim.x


@gpu_kernel
def input_gradient_columns(dy, x, dx, channels, center_hi, constants):
    """:func:`input_gradient` for ``rc`` when the grid's stride is a multiple of C (as :func:`normalize_columns`)."""
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    size = x.shape[0]
    c = i % channels
    hi = center_hi[c]
    dy_scale = constants[0, c]
    shift = constants[1, c]
    xmu_scale = constants[2, c]
    lo = constants[3, c]
    _input_gradient_run(dy, x, dx, i, size, stride, hi, lo, dy_scale, shift, xmu_scale)


# --- backward sums ----------------------------------------------------------


@gpu_kernel
def gradient_sums_ncs(dy, x, channels, inner, center, span, part):
    """Partials of sum(dy), sum(dy * (x - center)), sum(x - center), float64.

    Flat (N, C, S) arrays, indexed as in :func:`moments_ncs`. ``part`` is
    (3, C, B); block (c, b) reduces elements [b*span, ...) of c.
    """
    c = cuda.blockIdx.x
    b = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    j, row, col, step_row, step_col, stop = _ncs_span(x.shape[0], channels, inner, span)
    mu = float64(center[c])
    total_dy = 0.0
    total_dy_xmu = 0.0
    total_xmu = 0.0
    while j + threads < stop:
        k0, row, col = _ncs_take(row, col, c, channels, inner, step_row, step_col)
        k1, row, col = _ncs_take(row, col, c, channels, inner, step_row, step_col)
        total_dy, total_dy_xmu, total_xmu = _add_gradients_two(
            dy, x, k0, k1, mu, total_dy, total_dy_xmu, total_xmu
        )
        j += 2 * threads
    while j < stop:
        k, row, col = _ncs_take(row, col, c, channels, inner, step_row, step_col)
        total_dy, total_dy_xmu, total_xmu = _add_gradients(
            dy, x, k, mu, total_dy, total_dy_xmu, total_xmu
        )
        j += threads
    total_dy, total_dy_xmu, total_xmu = block_sum3(tid, threads, total_dy, total_dy_xmu, total_xmu)
    if tid == 0:
        _store_partial(part, c, b, total_dy, total_dy_xmu, total_xmu)


@gpu_kernel
def gradient_sums_rc(dy, x, channels, center, span, part):
    """As :func:`gradient_sums_ncs` for flat (R, C) arrays, tiled as :func:`moments_rc`."""
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    rows_step = cuda.blockDim.y
    b = cuda.blockIdx.y
    c, start, stop = _rc_span(x.shape[0], channels, span)
    total_dy = 0.0
    total_dy_xmu = 0.0
    total_xmu = 0.0
    if c < channels:
        mu = float64(center[c])
        r = start + ty
        while r + rows_step < stop:
            k0 = r * channels + c
            k1 = (r + rows_step) * channels + c
            total_dy, total_dy_xmu, total_xmu = _add_gradients_two(
                dy, x, k0, k1, mu, total_dy, total_dy_xmu, total_xmu
            )
            r += 2 * rows_step
        if r < stop:
            total_dy, total_dy_xmu, total_xmu = _add_gradients(
                dy, x, r * channels + c, mu, total_dy, total_dy_xmu, total_xmu
            )
    total_dy, total_dy_xmu, total_xmu = tile_sum3(
        tx, ty, rows_step, total_dy, total_dy_xmu, total_xmu
    )
    if ty == 0 and c < channels:
        _store_partial(part, c, b, total_dy, total_dy_xmu, total_xmu)


@gpu_kernel
def finish_gradient_sums(part, count, training, weight, has_weight, invstd, grads, constants):
    """Block c adds channel c's partials and writes its gradient constants.

    ``grads`` is (2, C): grad_weight, grad_bias; ``constants`` (4, C):
    dy_scale, shift, xmu_scale, center_lo (as :func:`input_gradient` reads them).

    As the CPU's ``gradient_constants``: the sums are about the saved mean;
    in training the batch's exact mean is saved + sum(x - saved)/m, and the
    sums and ``center_lo`` are corrected to it.
    """
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    sum_dy = 0.0
    sum_dy_xmu = 0.0
    sum_xmu = 0.0
    for j in range(tid, part.shape[2], threads):
        sum_dy += part[0, c, j]
        sum_dy_xmu += part[1, c, j]
        sum_xmu += part[2, c, j]
    sum_dy, sum_dy_xmu, sum_xmu = block_sum3(tid, threads, sum_dy, sum_dy_xmu, sum_xmu)
    if tid == 0:
        s = float64(invstd[c])
        w = float64(weight[c]) if has_weight else 1.0
        delta = sum_xmu / count if training else 0.0
        centered = sum_dy_xmu - delta * sum_dy
        grads[1, c] = sum_dy
        grads[0, c] = centered * s
        constants[0, c] = w * s
        constants[3, c] = delta
        if training:
            constants[1, c] = sum_dy / count
            constants[2, c] = centered * s * s / count
        else:
            constants[1, c] = 0.0
            constants[2, c] = 0.0
