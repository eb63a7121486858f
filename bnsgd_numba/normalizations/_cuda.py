"""CUDA kernels (``@cuda.jit``) of the per-sample normalizations.

The GPU twins of :mod:`bnsgd_numba.normalizations._cpu`, on C-contiguous row
views ``(R, L)``: LayerNorm and RMSNorm rows, and GroupNorm / InstanceNorm,
whose ``(N, C, S)`` input is read as ``N * G`` rows of ``C / G * S`` values
(channel ``c`` of a row is the span ``[c * S, (c + 1) * S)`` of it).

Each layer owns one float64 workspace ``work`` per input shape
(:mod:`bnsgd_numba.normalizations._cuda_driver`); the kernels find their parts in it
from the shapes, so that a launch passes one array instead of several:

- rows: ``work[4 r : 4 r + 4]`` = (mean, invstd) of row r (kept for
  backward) and backward's two row constants, then the column partials of
  ``grad_weight`` / ``grad_bias``: ``work[4 R + (2 p + j) L + k]`` for row
  span p (j = 0: weight, 1: bias);
- groups: ``work[3 r : 3 r + 3]`` = (mean, invstd, var) of row r, then
  scratch from ``3 R`` for the B blocks of a launch: two partials per block
  (forward: (mean, M2) of a chunk of a row; backward: (sum(dy),
  sum(dy * (x - mean))) of a chunk of a channel plane), then two values per
  block that thread 0 hands to the block's other threads.

Reductions accumulate in float64 and merge in an order fixed by the shape
and the block size: a block reduces its values by the shifted two-pass
algorithm (first pass: the sum of ``x - x0``, ``x0`` the block's first
value, so a constant block gives its value exactly; second pass, re-reading
the values from cache: the sum of squared deviations from that mean; no
division per element), then blocks are merged with Chan's formula (or
added) in index order. Column sums (``grad_weight`` / ``grad_bias`` of
LayerNorm and RMSNorm) are two-stage: coalesced 32-column tiles write one
partial per (row span, column), and a second pass adds the spans in order.
No atomics anywhere: results are bitwise identical from run to run.

The per-row and per-channel constants are rounded to the data's dtype, and
the elementwise parts compute in the data's dtype
``((x - hi) - lo) * scale + offset`` exactly as the CPU kernels do: a
constant row gives exactly ``bias``.
"""

from __future__ import annotations

import math

from numba import float64

from bnsgd_numba._core.cuda import (
    MAX_THREADS_PER_BLOCK,
    WARP_SIZE,
    cuda,
    gpu_device_function,
    gpu_kernel,
)
from bnsgd_numba._core.cuda_reductions import block_merge, block_sum3, merge_chan

CENTERED = 1
"""``mode`` bit: subtract the mean (LayerNorm; not RMSNorm)."""
AFFINE = 2
"""``mode`` bit: multiply by ``weight`` (and write ``grad_weight``)."""
SHIFTED = 4
"""``mode`` bit: add ``bias`` (and write ``grad_bias``)."""
STATS_ONLY = 8
"""``mode`` bit of :func:`group_forward`: write the row statistics, not ``y``."""


# --- helpers ------------------------------------------------------------------


@gpu_device_function
def _as_dtype(like, value):
    # ``value`` rounded to the dtype of the array ``like`` (a one-element local
    # array, which the compiler keeps in a register)
    box = cuda.local.array(1, like.dtype)
    box[0] = value
    return box[0]


@gpu_device_function
def _share(work, i, tid, a):
    # thread 0's ``a`` for every thread of the block, through work[i] (global
    # memory: __syncthreads makes it visible to the block; the simulator's
    # shared arrays are allocated racily on first use). All threads call it.
    if tid == 0:
        work[i] = a
    cuda.syncthreads()
    return work[i]


@gpu_device_function
def _share2(work, i, tid, a, b):
    # thread 0's (a, b) for every thread of the block, through work[i : i + 2]
    if tid == 0:
        work[i] = a
        work[i + 1] = b
    cuda.syncthreads()
    return work[i], work[i + 1]


@gpu_device_function
def _split(like, mean):
    # float64 mean as hi + lo in the dtype of ``like``: (x - hi) - lo keeps its accuracy
    hi = _as_dtype(like, mean)
    return hi, _as_dtype(like, mean - hi)


@gpu_device_function
def _shifted_sum(rows, r, k, stop, step, shift):
    # A thread's sum of rows[r, k] - shift over k, k + step, ... below stop
    total = 0.0
    while k < stop:
        total += rows[r, k] - shift
        k += step
    return total


@gpu_device_function
def _squared_deviations(rows, r, k, stop, step, mean):
    # A thread's sum of (rows[r, k] - mean)**2 over k, k + step, ... below stop
    squares = 0.0
    while k < stop:
        d = rows[r, k] - mean
        squares += d * d
        k += step
    return squares


@gpu_device_function
def _weighted_dy(dy, weight, r, k, mode):
    g = float64(dy[r, k])
    if mode & AFFINE:
        g = g * weight[k]
    return g


@gpu_device_function
def _channel_plane(plane, length, spatial):
    # Channel plane n * C + c: (channels per group, its row, its index in the row)
    per_group = length // spatial
    r = plane // per_group
    return per_group, r, plane - r * per_group


# --- rows (LayerNorm, RMSNorm) ------------------------------------------------


@gpu_kernel
def rows_forward(rows, y, weight, bias, work, eps, mode):
    """Block r: the statistics of row r, then y[r] = ((x - hi) - lo) * scale * weight + bias.

    Centered (LayerNorm): mean by the shifted first pass, var = mean((x - mean)**2)
    (biased); otherwise (RMSNorm) mean = 0 and var = mean(x**2). invstd =
    1/sqrt(var + eps). Writes (mean, invstd) to ``work[4 r : 4 r + 2]``.
    """
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    length = rows.shape[1]
    mean = 0.0
    if mode & CENTERED:
        shift = float64(rows[r, 0])
        total = _shifted_sum(rows, r, tid, length, threads, shift)
        total, _, _ = block_sum3(tid, threads, total, 0.0, 0.0)
        mean = _share(work, 4 * r, tid, shift + total / length)
    elif tid == 0:
        work[4 * r] = 0.0
    squares = _squared_deviations(rows, r, tid, length, threads, mean)
    squares, _, _ = block_sum3(tid, threads, squares, 0.0, 0.0)
    invstd = _share(work, 4 * r + 1, tid, 1.0 / math.sqrt(squares / length + eps))
    hi, lo = _split(rows, mean)
    scale = _as_dtype(rows, invstd)
    k = tid
    while k < length:
        t = ((rows[r, k] - hi) - lo) * scale
        if mode & AFFINE:
            t = t * weight[k]
        if mode & SHIFTED:
            t = t + bias[k]
        y[r, k] = t
        k += threads


@gpu_kernel
def rows_column_partials(dy, rows, work):
    """Tile (32 columns, span p of rows): sum(dy * x_hat) and sum(dy) per column, float64.

    Block ``(32, TY)``: lane = column (coalesced), threadIdx.y steps through
    the span's rows; the TY partials of a column are added in a fixed tree.
    The grid's y is the number of spans; writes ``work[4 R + (2 p + j) L + k]``.
    """
    sum_w = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
    sum_b = cuda.shared.array(MAX_THREADS_PER_BLOCK, float64)
    count, length = rows.shape
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tall = cuda.blockDim.y
    k = cuda.blockIdx.x * WARP_SIZE + tx
    p = cuda.blockIdx.y
    span = (count + cuda.gridDim.y - 1) // cuda.gridDim.y
    stop = min(p * span + span, count)
    total_w = 0.0
    total_b = 0.0
    if k < length:
        r = p * span + ty
        while r < stop:
            d = float64(dy[r, k])
            total_w += d * ((rows[r, k] - work[4 * r]) * work[4 * r + 1])
            total_b += d
            r += tall
    i = ty * WARP_SIZE + tx
    sum_w[i] = total_w
    sum_b[i] = total_b
    cuda.syncthreads()
    half = tall // 2
    while half > 0:
        if ty < half:
            sum_w[i] += sum_w[i + half * WARP_SIZE]
            sum_b[i] += sum_b[i + half * WARP_SIZE]
        cuda.syncthreads()
        half //= 2
    if ty == 0 and k < length:
        base = 4 * count + 2 * p * length
        work[base + k] = sum_w[tx]
        work[base + length + k] = sum_b[tx]


@gpu_kernel
def rows_backward(dy, rows, dx, weight, work, grad_weight, grad_bias, mode):
    """Blocks r < R: dx of row r; blocks past R: ``grad_weight``/``grad_bias`` of a column range.

    Row r: with g = dy * weight, c1 = sum(g)/L (centered; else 0) and
    c2 = invstd**2 sum(g (x - mean))/L, dx = ((g - c1) - (x - mean) c2) invstd
    in float64. Column k: the span partials of :func:`rows_column_partials`
    added in span order.
    """
    count, length = rows.shape
    b = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    if b >= count:
        k = (b - count) * threads + tid
        if k < length:
            spans = (work.shape[0] - 4 * count) // (2 * length)
            total_w = 0.0
            total_b = 0.0
            for p in range(spans):
                total_w += work[4 * count + 2 * p * length + k]
                total_b += work[4 * count + (2 * p + 1) * length + k]
            grad_weight[k] = total_w
            if mode & SHIFTED:
                grad_bias[k] = total_b
        return
    mean = work[4 * b]
    s = work[4 * b + 1]
    total_g = 0.0
    total_gx = 0.0
    k = tid
    while k < length:
        g = _weighted_dy(dy, weight, b, k, mode)
        total_g += g
        total_gx += g * (rows[b, k] - mean)
        k += threads
    total_g, total_gx, _ = block_sum3(tid, threads, total_g, total_gx, 0.0)
    c1 = total_g / length if mode & CENTERED else 0.0
    c1, c2 = _share2(work, 4 * b + 2, tid, c1, s * s * total_gx / length)
    k = tid
    while k < length:
        g = _weighted_dy(dy, weight, b, k, mode)
        dx[b, k] = ((g - c1) - (rows[b, k] - mean) * c2) * s
        k += threads


# --- groups (GroupNorm, InstanceNorm) -------------------------------------------


@gpu_kernel
def group_partials(rows, work, chunk):
    """Block (p, r): (mean, M2) of values [p chunk, (p + 1) chunk) of row r, float64.

    Shifted two-pass over the chunk; writes ``work[3 R + 2 (r P + p) :][:2]``,
    P = gridDim.x = ceil(L / chunk).
    """
    p = cuda.blockIdx.x
    r = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    count, length = rows.shape
    start = p * chunk
    stop = min(start + chunk, length)
    shift = float64(rows[r, start])
    total = _shifted_sum(rows, r, start + tid, stop, threads, shift)
    total, _, _ = block_sum3(tid, threads, total, 0.0, 0.0)
    base = 3 * count + 2 * (r * cuda.gridDim.x + p)
    mean = _share(work, base, tid, shift + total / (stop - start))
    squares = _squared_deviations(rows, r, start + tid, stop, threads, mean)
    squares, _, _ = block_sum3(tid, threads, squares, 0.0, 0.0)
    if tid == 0:
        work[base + 1] = squares


@gpu_kernel
def group_forward(rows, y, weight, bias, work, groups, spatial, chunk, eps, mode):
    """Block (p, r): merge row r's chunk partials, then normalize chunk p of the row.

    Every block of a row merges the same partials in the same order (one per
    thread, then the block's Chan tree). Block (0, r) writes (mean, invstd,
    var) to ``work[3 r :][:3]``; with ``STATS_ONLY`` nothing else is written.
    y = ((x - hi) - lo) * (weight[c] * invstd) + bias[c] in the data's dtype.
    """
    p = cuda.blockIdx.x
    r = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    count, length = rows.shape
    parts = cuda.gridDim.x
    n = 0.0
    mean = 0.0
    m2 = 0.0
    j = tid
    while j < parts:
        base = 3 * count + 2 * (r * parts + j)
        size = float64(min(j * chunk + chunk, length) - j * chunk)
        n, mean, m2 = merge_chan(n, mean, m2, size, work[base], work[base + 1])
        j += threads
    n, mean, m2 = block_merge(tid, threads, n, mean, m2)
    var = m2 / length
    slot = 3 * count + 2 * parts * count + 2 * (r * parts + p)
    mean, invstd = _share2(work, slot, tid, mean, 1.0 / math.sqrt(var + eps))
    if p == 0 and tid == 0:
        work[3 * r] = mean
        work[3 * r + 1] = invstd
        work[3 * r + 2] = var
    if mode & STATS_ONLY:
        return
    hi, lo = _split(rows, mean)
    scale = _as_dtype(rows, invstd)
    first = (r % groups) * (length // spatial)
    k = p * chunk + tid
    stop = min(p * chunk + chunk, length)
    while k < stop:
        t = (rows[r, k] - hi) - lo
        if mode & AFFINE:
            c = first + k // spatial
            t = t * _as_dtype(rows, weight[c] * invstd) + bias[c]
        else:
            t = t * scale
        y[r, k] = t
        k += threads


@gpu_kernel
def group_channel_sums(dy, rows, work, spatial, chunk):
    """Block (q, plane): sum(dy) and sum(dy * (x - mean)) over chunk q of a channel plane.

    Plane n * C + c is the span of row n * G + c // (C/G) holding channel c;
    writes ``work[3 R + 2 (plane Q + q) :][:2]``, Q = gridDim.x.
    """
    q = cuda.blockIdx.x
    plane = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    count, length = rows.shape
    _, r, within = _channel_plane(plane, length, spatial)
    first = within * spatial
    stop = min(first + q * chunk + chunk, first + spatial)
    mean = work[3 * r]
    a = 0.0
    b = 0.0
    k = first + q * chunk + tid
    while k < stop:
        d = float64(dy[r, k])
        a += d
        b += d * (rows[r, k] - mean)
        k += threads
    a, b, _ = block_sum3(tid, threads, a, b, 0.0)
    if tid == 0:
        base = 3 * count + 2 * (plane * cuda.gridDim.x + q)
        work[base] = a
        work[base + 1] = b


@gpu_kernel
def group_backward(dy, rows, dx, weight, work, grad_weight, grad_bias, groups, spatial, chunk, mode):  # fmt: skip
    """Block (q, plane): dx over chunk q of a plane; blocks (0, c < C) also write the grads of c.

    With s = invstd of the row, g = weight * dy and the row's sums of
    :func:`group_channel_sums` (every block of the row adds the same partials
    in the same order): dx = (dy * (weight[c] s) - shift) - ((x - hi) - lo) * xmu_scale,
    shift = s sum(g)/L, xmu_scale = s**3 sum(g (x - mean))/L, in the data's dtype.
    grad_weight[c] = sum_n s sum(dy (x - mean)), grad_bias[c] = sum_n sum(dy).
    """
    q = cuda.blockIdx.x
    plane = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    parts = cuda.gridDim.x
    count, length = rows.shape
    per_group, r, within = _channel_plane(plane, length, spatial)
    first = (r % groups) * per_group
    mean = work[3 * r]
    s = work[3 * r + 1]
    total_g = 0.0
    total_gx = 0.0
    i = tid
    while i < per_group * parts:
        j = i // parts
        w = float64(weight[first + j]) if mode & AFFINE else 1.0
        base = 3 * count + 2 * ((r * per_group + j) * parts + i - j * parts)
        total_g += w * work[base]
        total_gx += w * work[base + 1]
        i += threads
    total_g, total_gx, _ = block_sum3(tid, threads, total_g, total_gx, 0.0)
    slot = 3 * count + 2 * parts * cuda.gridDim.y + 2 * (plane * parts + q)
    shift, xmu_scale = _share2(work, slot, tid, total_g * s / length, s * s * s * total_gx / length)
    w = float64(weight[first + within]) if mode & AFFINE else 1.0
    dy_scale = _as_dtype(rows, w * s)
    shift_t = _as_dtype(rows, shift)
    xmu_scale_t = _as_dtype(rows, xmu_scale)
    hi, lo = _split(rows, mean)
    start = within * spatial + q * chunk
    stop = min(start + chunk, within * spatial + spatial)
    k = start + tid
    while k < stop:
        xmu = (rows[r, k] - hi) - lo
        dx[r, k] = (dy[r, k] * dy_scale - shift_t) - xmu * xmu_scale_t
        k += threads
    channels = per_group * groups
    if mode & AFFINE and q == 0 and plane < channels:
        grad_w = 0.0
        grad_b = 0.0
        n = tid
        while n < count // groups:
            base = 3 * count + 2 * (n * channels + plane) * parts
            sum_dy = 0.0
            sum_dy_xmu = 0.0
            for j in range(parts):
                sum_dy += work[base + 2 * j]
                sum_dy_xmu += work[base + 2 * j + 1]
            grad_w += work[3 * (n * groups + plane // per_group) + 1] * sum_dy_xmu
            grad_b += sum_dy
            n += threads
        grad_w, grad_b, _ = block_sum3(tid, threads, grad_w, grad_b, 0.0)
        if tid == 0:
            grad_weight[plane] = grad_w
            grad_bias[plane] = grad_b


# --- per-channel statistics over (N, S) (batch_renorm) -----------------------


@gpu_kernel
def channel_moments(x, mean, m2):
    """Block c: mean and M2 of channel c of x (N, C, S) over its N * S values, float64."""
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    s = x.shape[2]
    size = x.shape[0] * s
    count = 0.0
    mu = 0.0
    squares = 0.0
    i = tid
    while i < size:
        sample = i // s
        v = float(x[sample, c, i - sample * s])
        count += 1.0
        delta = v - mu
        mu += delta / count
        squares += delta * (v - mu)
        i += threads
    count, mu, squares = block_merge(tid, threads, count, mu, squares)
    if tid == 0:
        mean[c] = mu
        m2[c] = squares


@gpu_kernel
def channel_normalize(x, y, hi, lo, scale, offset):
    """y = ((x - hi[c]) - lo[c]) * scale[c] + offset[c] over x (N, C, S), grid-stride."""
    n, channels, s = x.shape
    size = n * channels * s
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < size:
        q = i // s
        k = i - q * s
        sample = q // channels
        c = q - sample * channels
        y[sample, c, k] = ((x[sample, c, k] - hi[c]) - lo[c]) * scale[c] + offset[c]
        i += stride
