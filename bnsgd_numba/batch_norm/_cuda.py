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
   shuffles (``ncs``) or a shared-memory tree over the rows of the tile
   (``rc``), then across warps through shared memory. One partial per
   (channel, span) is written, never accumulated with atomics.
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
"""

from __future__ import annotations

import math

from numba import float64, int32

from bnsgd_numba._core.cuda import (
    MAX_THREADS_PER_BLOCK,
    WARP_SIZE,
    cuda,
    gpu_device_function,
    gpu_kernel,
    shfl_down3,
)

MAX_WARPS = MAX_THREADS_PER_BLOCK // WARP_SIZE
TILE_CHANNELS = WARP_SIZE
"""Channels per block of the channels-last (``rc``) tiling: one warp wide."""


# --- merges -----------------------------------------------------------------


@gpu_device_function
def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    # Chan, Golub & LeVeque (1979): combine (count, mean, M2) of two parts.
    if n_b == 0.0:
        return n_a, mean_a, m2_a
    if n_a == 0.0:
        return n_b, mean_b, m2_b
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * (n_b / n))
    return n, mean, m2


@gpu_device_function
def _warp_merge(n, mean, m2):
    # Tree over the warp's lanes (offsets 16, 8, 4, 2, 1); lane 0 gets the result.
    offset = WARP_SIZE // 2
    while offset > 0:
        n_b, mean_b, m2_b = shfl_down3(n, mean, m2, offset)
        n, mean, m2 = _chan(n, mean, m2, n_b, mean_b, m2_b)
        offset //= 2
    return n, mean, m2


@gpu_device_function
def _block_merge(tid, threads, n, mean, m2):
    # Every thread of the block calls this; thread 0 gets the block's merge.
    warp_n = cuda.shared.array(MAX_WARPS, float64)
    warp_mean = cuda.shared.array(MAX_WARPS, float64)
    warp_m2 = cuda.shared.array(MAX_WARPS, float64)
    n, mean, m2 = _warp_merge(n, mean, m2)
    lane = tid % WARP_SIZE
    if lane == 0:
        warp = tid // WARP_SIZE
        warp_n[warp] = n
        warp_mean[warp] = mean
        warp_m2[warp] = m2
    cuda.syncthreads()
    if lane < threads // WARP_SIZE:
        n = warp_n[lane]
        mean = warp_mean[lane]
        m2 = warp_m2[lane]
    else:
        n = 0.0
        mean = 0.0
        m2 = 0.0
    n, mean, m2 = _warp_merge(n, mean, m2)
    cuda.syncthreads()
    return n, mean, m2


@gpu_device_function
def _warp_sum3(a, b, c):
    offset = WARP_SIZE // 2
    while offset > 0:
        a_b, b_b, c_b = shfl_down3(a, b, c, offset)
        a += a_b
        b += b_b
        c += c_b
        offset //= 2
    return a, b, c


@gpu_device_function
def _block_sum3(tid, threads, a, b, c):
    # Every thread of the block calls this; thread 0 gets the block's sums.
    warp_a = cuda.shared.array(MAX_WARPS, float64)
    warp_b = cuda.shared.array(MAX_WARPS, float64)
    warp_c = cuda.shared.array(MAX_WARPS, float64)
    a, b, c = _warp_sum3(a, b, c)
    lane = tid % WARP_SIZE
    if lane == 0:
        warp = tid // WARP_SIZE
        warp_a[warp] = a
        warp_b[warp] = b
        warp_c[warp] = c
    cuda.syncthreads()
    if lane < threads // WARP_SIZE:
        a = warp_a[lane]
        b = warp_b[lane]
        c = warp_c[lane]
    else:
        a = 0.0
        b = 0.0
        c = 0.0
    a, b, c = _warp_sum3(a, b, c)
    cuda.syncthreads()
    return a, b, c


# --- forward statistics -----------------------------------------------------


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
    m = (x.shape[0] // (channels * inner)) * inner
    start = b * span
    stop = min(start + span, m)
    step_row = threads // inner
    step_col = threads - step_row * inner
    n = 0.0
    total = 0.0
    m2 = 0.0
    j = start + tid
    row = j // inner
    col = j - row * inner
    shift = float64(x[(row * channels + c) * inner + col]) if j < stop else 0.0
    while j + 3 * threads < stop:
        k0 = (row * channels + c) * inner + col
        row += step_row
        col += step_col
        if col >= inner:
            col -= inner
            row += 1
        k1 = (row * channels + c) * inner + col
        row += step_row
        col += step_col
        if col >= inner:
            col -= inner
            row += 1
        k2 = (row * channels + c) * inner + col
        row += step_row
        col += step_col
        if col >= inner:
            col -= inner
            row += 1
        k3 = (row * channels + c) * inner + col
        row += step_row
        col += step_col
        if col >= inner:
            col -= inner
            row += 1
        v0 = float64(x[k0])
        v1 = float64(x[k1])
        v2 = float64(x[k2])
        v3 = float64(x[k3])
        n, total, m2 = _add_values(n, shift, total, m2, v0, v1, v2, v3, 4)
        j += 4 * threads
    while j < stop:
        v0 = float64(x[(row * channels + c) * inner + col])
        n, total, m2 = _add_values(n, shift, total, m2, v0, 0.0, 0.0, 0.0, 1)
        j += threads
        row += step_row
        col += step_col
        if col >= inner:
            col -= inner
            row += 1
    mean = shift + total / n if n > 0.0 else 0.0
    n, mean, m2 = _block_merge(tid, threads, n, mean, m2)
    if tid == 0:
        parts[0, c, b] = n
        parts[1, c, b] = mean
        parts[2, c, b] = m2


@gpu_kernel
def moments_rc(x, channels, span, parts):
    """Partials of a flat (R, C) array (channel fastest): a (32 channels) x (span rows) tile.

    ``blockDim = (32, TY)`` with TY a power of two; thread (tx, ty) reduces
    rows ty, ty + TY, ... of its span for channel 32 * blockIdx.x + tx, four
    at a time as :func:`moments_ncs` does, and the tile's rows are merged
    through shared memory.
    """
    tile_n = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
    tile_mean = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
    tile_m2 = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    rows_step = cuda.blockDim.y
    c = cuda.blockIdx.x * TILE_CHANNELS + tx
    b = cuda.blockIdx.y
    rows = x.shape[0] // channels
    start = b * span
    stop = min(start + span, rows)
    n = 0.0
    total = 0.0
    m2 = 0.0
    mean = 0.0
    r = start + ty
    if c < channels and r < stop:
        shift = float64(x[r * channels + c])
        while r + 3 * rows_step < stop:
            v0 = float64(x[r * channels + c])
            v1 = float64(x[(r + rows_step) * channels + c])
            v2 = float64(x[(r + 2 * rows_step) * channels + c])
            v3 = float64(x[(r + 3 * rows_step) * channels + c])
            n, total, m2 = _add_values(n, shift, total, m2, v0, v1, v2, v3, 4)
            r += 4 * rows_step
        while r < stop:
            v0 = float64(x[r * channels + c])
            n, total, m2 = _add_values(n, shift, total, m2, v0, 0.0, 0.0, 0.0, 1)
            r += rows_step
        mean = shift + total / n
    k = ty * TILE_CHANNELS + tx
    tile_n[k] = n
    tile_mean[k] = mean
    tile_m2[k] = m2
    cuda.syncthreads()
    half = rows_step // 2
    while half > 0:
        if ty < half:
            other = k + half * TILE_CHANNELS
            n, mean, m2 = _chan(
                n, mean, m2, tile_n[other], tile_mean[other], tile_m2[other]
            )  # fmt: skip
            tile_n[k] = n
            tile_mean[k] = mean
            tile_m2[k] = m2
        cuda.syncthreads()
        half //= 2
    if ty == 0 and c < channels:
        parts[0, c, b] = n
        parts[1, c, b] = mean
        parts[2, c, b] = m2


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
        n, mean, m2 = _chan(n, mean, m2, parts[0, c, j], parts[1, c, j], parts[2, c, j])
    n, mean, m2 = _block_merge(tid, threads, n, mean, m2)
    if tid == 0:
        variance = m2 / n
        invstd = 1.0 / math.sqrt(variance + eps)
        stats[0, c] = mean
        stats[1, c] = m2
        saved[0, c] = mean
        saved[1, c] = invstd
        constants[0, c] = mean
        constants[1, c] = mean - float64(constants[0, c])
        w = float64(weight[c]) if has_weight else 1.0
        constants[2, c] = w * invstd
        constants[3, c] = bias[c] if has_bias else 0.0
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
        saved[0, c] = running_mean[c]
        saved[1, c] = invstd
        constants[0, c] = mean
        constants[1, c] = mean - float64(constants[0, c])
        w = float64(weight[c]) if has_weight else 1.0
        constants[2, c] = w * invstd
        constants[3, c] = bias[c] if has_bias else 0.0


# --- elementwise ------------------------------------------------------------


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
    q = i // inner
    s = i - q * inner
    c = q % channels
    while i < size:
        y[i] = ((x[i] - constants[0, c]) - constants[1, c]) * constants[2, c] + constants[3, c]
        i += stride
        s += step_s
        c += step_c
        if s >= inner:
            s -= inner
            c += 1
        if c >= channels:
            c -= channels


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
        i = plane * inner + tid
        stop = (plane + 1) * inner
        while i + 3 * threads < stop:
            a0 = x[i]
            a1 = x[i + threads]
            a2 = x[i + 2 * threads]
            a3 = x[i + 3 * threads]
            y[i] = ((a0 - hi) - lo) * scale + offset
            y[i + threads] = ((a1 - hi) - lo) * scale + offset
            y[i + 2 * threads] = ((a2 - hi) - lo) * scale + offset
            y[i + 3 * threads] = ((a3 - hi) - lo) * scale + offset
            i += 4 * threads
        while i < stop:
            y[i] = ((x[i] - hi) - lo) * scale + offset
            i += threads
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
    while i + 3 * stride < size:
        a0 = x[i]
        a1 = x[i + stride]
        a2 = x[i + 2 * stride]
        a3 = x[i + 3 * stride]
        y[i] = ((a0 - hi) - lo) * scale + offset
        y[i + stride] = ((a1 - hi) - lo) * scale + offset
        y[i + 2 * stride] = ((a2 - hi) - lo) * scale + offset
        y[i + 3 * stride] = ((a3 - hi) - lo) * scale + offset
        i += 4 * stride
    while i < size:
        y[i] = ((x[i] - hi) - lo) * scale + offset
        i += stride


@gpu_kernel
def input_gradient(dy, x, dx, inner, channels, step_s, step_c, center_hi, constants):
    """dx = ((dy - shift) - ((x - center_hi) - center_lo) * xmu_scale) * dy_scale, flat views.

    ``constants`` is (4, C): dy_scale, shift, xmu_scale, center_lo. Channels
    as in :func:`normalize`.
    """
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    size = x.shape[0]
    q = i // inner
    s = i - q * inner
    c = q % channels
    while i < size:
        xmu = (x[i] - center_hi[c]) - constants[3, c]
        dx[i] = ((dy[i] - constants[1, c]) - xmu * constants[2, c]) * constants[0, c]
        i += stride
        s += step_s
        c += step_c
        if s >= inner:
            s -= inner
            c += 1
        if c >= channels:
            c -= channels


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
        i = plane * inner + tid
        stop = (plane + 1) * inner
        while i + threads < stop:
            x0 = x[i]
            x1 = x[i + threads]
            g0 = dy[i]
            g1 = dy[i + threads]
            dx[i] = ((g0 - shift) - ((x0 - hi) - lo) * xmu_scale) * dy_scale
            dx[i + threads] = ((g1 - shift) - ((x1 - hi) - lo) * xmu_scale) * dy_scale
            i += 2 * threads
        while i < stop:
            dx[i] = ((dy[i] - shift) - ((x[i] - hi) - lo) * xmu_scale) * dy_scale
            i += threads
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
    while i + stride < size:
        x0 = x[i]
        x1 = x[i + stride]
        g0 = dy[i]
        g1 = dy[i + stride]
        dx[i] = ((g0 - shift) - ((x0 - hi) - lo) * xmu_scale) * dy_scale
        dx[i + stride] = ((g1 - shift) - ((x1 - hi) - lo) * xmu_scale) * dy_scale
        i += 2 * stride
    while i < size:
        dx[i] = ((dy[i] - shift) - ((x[i] - hi) - lo) * xmu_scale) * dy_scale
        i += stride


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
    s_size = inner
    m = (x.shape[0] // (channels * inner)) * inner
    mu = float64(center[c])
    start = b * span
    stop = min(start + span, m)
    total_dy = 0.0
    total_dy_xmu = 0.0
    total_xmu = 0.0
    j = start + tid
    row = j // s_size
    col = j - row * s_size
    step_row = threads // s_size
    step_col = threads - step_row * s_size
    while j + threads < stop:
        # two elements per step: four loads in flight, the same order of sums
        k0 = (row * channels + c) * s_size + col
        row += step_row
        col += step_col
        if col >= s_size:
            col -= s_size
            row += 1
        k1 = (row * channels + c) * s_size + col
        row += step_row
        col += step_col
        if col >= s_size:
            col -= s_size
            row += 1
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
        j += 2 * threads
    while j < stop:
        k = (row * channels + c) * s_size + col
        g = float64(dy[k])
        xmu = float64(x[k]) - mu
        total_dy += g
        total_dy_xmu += g * xmu
        total_xmu += xmu
        j += threads
        row += step_row
        col += step_col
        if col >= s_size:
            col -= s_size
            row += 1
    total_dy, total_dy_xmu, total_xmu = _block_sum3(tid, threads, total_dy, total_dy_xmu, total_xmu)
    if tid == 0:
        part[0, c, b] = total_dy
        part[1, c, b] = total_dy_xmu
        part[2, c, b] = total_xmu


@gpu_kernel
def gradient_sums_rc(dy, x, channels, center, span, part):
    """As :func:`gradient_sums_ncs` for flat (R, C) arrays, tiled as :func:`moments_rc`."""
    tile_a = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
    tile_b = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
    tile_c = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    rows_step = cuda.blockDim.y
    c = cuda.blockIdx.x * TILE_CHANNELS + tx
    b = cuda.blockIdx.y
    rows = x.shape[0] // channels
    start = b * span
    stop = min(start + span, rows)
    total_dy = 0.0
    total_dy_xmu = 0.0
    total_xmu = 0.0
    if c < channels:
        mu = float64(center[c])
        r = start + ty
        while r + rows_step < stop:
            # two rows per step: four loads in flight, the same order of sums
            g0 = float64(dy[r * channels + c])
            g1 = float64(dy[(r + rows_step) * channels + c])
            x0 = float64(x[r * channels + c])
            x1 = float64(x[(r + rows_step) * channels + c])
            xmu = x0 - mu
            total_dy += g0
            total_dy_xmu += g0 * xmu
            total_xmu += xmu
            xmu = x1 - mu
            total_dy += g1
            total_dy_xmu += g1 * xmu
            total_xmu += xmu
            r += 2 * rows_step
        if r < stop:
            g = float64(dy[r * channels + c])
            xmu = float64(x[r * channels + c]) - mu
            total_dy += g
            total_dy_xmu += g * xmu
            total_xmu += xmu
    k = ty * TILE_CHANNELS + tx
    tile_a[k] = total_dy
    tile_b[k] = total_dy_xmu
    tile_c[k] = total_xmu
    cuda.syncthreads()
    half = rows_step // 2
    while half > 0:
        if ty < half:
            other = k + half * TILE_CHANNELS
            tile_a[k] += tile_a[other]
            tile_b[k] += tile_b[other]
            tile_c[k] += tile_c[other]
        cuda.syncthreads()
        half //= 2
    if ty == 0 and c < channels:
        part[0, c, b] = tile_a[k]
        part[1, c, b] = tile_b[k]
        part[2, c, b] = tile_c[k]


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
    sum_dy, sum_dy_xmu, sum_xmu = _block_sum3(tid, threads, sum_dy, sum_dy_xmu, sum_xmu)
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
