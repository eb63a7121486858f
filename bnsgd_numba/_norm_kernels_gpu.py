"""CUDA kernels (``@cuda.jit``) of the per-sample normalizations.

The GPU twins of :mod:`bnsgd_numba._norm_kernels_cpu`, on the same
C-contiguous views: rows ``(R, L)`` (LayerNorm, RMSNorm; and GroupNorm /
InstanceNorm, whose ``(N, C, S)`` input is read as ``(N * G, C / G * S)``
rows for the statistics).

Reductions: one block per row (or per (sample, channel) for the backward
sums of GroupNorm). Each thread runs Welford's update (or plain float64
sums) over its strided elements; the block merges them with Chan's formula
(or adds them) through the warp-shuffle and shared-memory trees of
:mod:`bnsgd_numba._batch_norm_gpu`. Column sums (the ``grad_weight`` /
``grad_bias`` of LayerNorm and RMSNorm, the per-channel sums over the batch
of GroupNorm) are one thread per column adding the rows in order. No float
atomics anywhere: results are bitwise identical from run to run.

Per-row and per-channel constants are written to arrays of the data's dtype
(that is where they are rounded), and the elementwise kernels compute in the
data's dtype ``((x - hi) - lo) * scale + offset`` exactly as the CPU kernels
do: a constant row gives exactly ``bias``.
"""

from __future__ import annotations

import math

from bnsgd_numba._batch_norm_gpu import _block_merge, _block_sum3
from bnsgd_numba._cuda_backend import cuda, gpu_kernel

# --- row statistics -----------------------------------------------------------


@gpu_kernel
def row_statistics(rows, eps, centered, mean, var, invstd, hi, lo, scale):
    """Block r: mean and 1/sqrt(var + eps) of row r (centered) or 1/sqrt(mean(x**2) + eps).

    Writes float64 ``mean``/``var`` (biased)/``invstd`` and, in the data's dtype, the row's
    ``hi`` = mean, ``lo`` = mean - hi and ``scale`` = invstd.
    """
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    length = rows.shape[1]
    count = 0.0
    mu = 0.0
    m2 = 0.0
    k = tid
    while k < length:
        v = float(rows[r, k])
        if centered:
            count += 1.0
            delta = v - mu
            mu += delta / count
            m2 += delta * (v - mu)
        else:
            m2 += v * v
        k += threads
    if centered:
        count, mu, m2 = _block_merge(tid, threads, count, mu, m2)
    else:
        m2, count, mu = _block_sum3(tid, threads, m2, 0.0, 0.0)
        mu = 0.0
    if tid == 0:
        s = 1.0 / math.sqrt(m2 / length + eps)
        mean[r] = mu
        var[r] = m2 / length
        invstd[r] = s
        hi[r] = mu
        lo[r] = mu - hi[r]
        scale[r] = s


@gpu_kernel
def rows_normalize(rows, y, hi, lo, scale, weight, bias, affine, shifted):
    """y[r, k] = (((x - hi[r]) - lo[r]) * scale[r]) * weight[k] + bias[k], grid-stride."""
    length = rows.shape[1]
    size = rows.shape[0] * length
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < size:
        r = i // length
        k = i - r * length
        t = ((rows[r, k] - hi[r]) - lo[r]) * scale[r]
        if affine:
            t = t * weight[k]
        if shifted:
            t = t + bias[k]
        y[r, k] = t
        i += stride


# --- row gradients ------------------------------------------------------------


@gpu_kernel
def rows_gradient_sums(dy, rows, weight, mean, invstd, centered, affine, c1, c2):
    """Block r: with g = dy * weight and xmu = x - mean, c1 = sum(g)/L, c2 = s**2 sum(g xmu)/L."""
    r = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    length = rows.shape[1]
    mu = mean[r]
    total_g = 0.0
    total_gx = 0.0
    k = tid
    while k < length:
        g = float(dy[r, k])
        if affine:
            g = g * weight[k]
        total_g += g
        total_gx += g * (rows[r, k] - mu)
        k += threads
    total_g, total_gx, _ = _block_sum3(tid, threads, total_g, total_gx, 0.0)
    if tid == 0:
        s = invstd[r]
        c1[r] = total_g / length if centered else 0.0
        c2[r] = s * s * total_gx / length


@gpu_kernel
def rows_input_gradient(dy, rows, dx, weight, mean, invstd, affine, c1, c2):
    """dx = ((g - c1) - (x - mean) * c2) * invstd, g = dy * weight, in float64, grid-stride."""
    length = rows.shape[1]
    size = rows.shape[0] * length
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < size:
        r = i // length
        k = i - r * length
        g = float(dy[r, k])
        if affine:
            g = g * weight[k]
        dx[r, k] = ((g - c1[r]) - (rows[r, k] - mean[r]) * c2[r]) * invstd[r]
        i += stride


@gpu_kernel
def rows_parameter_gradients(dy, rows, mean, invstd, grad_weight, grad_bias):
    """Thread k: grad_weight[k] = sum_r dy * (x - mean) * invstd, grad_bias[k] = sum_r dy."""
    k = cuda.grid(1)
    length = rows.shape[1]
    if k >= length:
        return
    total_w = 0.0
    total_b = 0.0
    for r in range(rows.shape[0]):
        d = float(dy[r, k])
        total_w += d * ((rows[r, k] - mean[r]) * invstd[r])
        total_b += d
    grad_weight[k] = total_w
    grad_bias[k] = total_b


# --- groups -------------------------------------------------------------------


@gpu_kernel
def group_constants(invstd, weight, bias, groups, affine, scale, offset):
    """Thread (n, c): scale[n, c] = weight[c] * invstd[row]; offset[c] = bias[c] (n == 0)."""
    i = cuda.grid(1)
    n, channels = scale.shape
    if i >= n * channels:
        return
    sample = i // channels
    c = i - sample * channels
    row = sample * groups + c // (channels // groups)
    w = float(weight[c]) if affine else 1.0
    scale[sample, c] = w * invstd[row]
    if sample == 0:
        offset[c] = bias[c] if affine else 0.0


@gpu_kernel
def group_normalize(x, y, groups, hi, lo, scale, offset):
    """y = ((x - hi[row]) - lo[row]) * scale[n, c] + offset[c] over x (N, C, S), grid-stride."""
    n, channels, s = x.shape
    per_group = channels // groups
    size = n * channels * s
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < size:
        q = i // s
        k = i - q * s
        sample = q // channels
        c = q - sample * channels
        row = sample * groups + c // per_group
        y[sample, c, k] = ((x[sample, c, k] - hi[row]) - lo[row]) * scale[sample, c] + offset[c]
        i += stride


@gpu_kernel
def group_channel_sums(dy, x, groups, mean, sum_dy, sum_dy_xmu):
    """Block (n, c): sum(dy) and sum(dy * (x - mean_row)) over the S values, float64."""
    sample = cuda.blockIdx.x
    c = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    channels = x.shape[1]
    s = x.shape[2]
    mu = mean[sample * groups + c // (channels // groups)]
    a = 0.0
    b = 0.0
    k = tid
    while k < s:
        d = float(dy[sample, c, k])
        a += d
        b += d * (x[sample, c, k] - mu)
        k += threads
    a, b, _ = _block_sum3(tid, threads, a, b, 0.0)
    if tid == 0:
        sum_dy[sample, c] = a
        sum_dy_xmu[sample, c] = b


@gpu_kernel
def group_gradient_constants(
    sum_dy, sum_dy_xmu, weight, invstd, groups, length, affine, dy_scale, shift, xmu_scale
):  # fmt: skip
    """Thread row (n, g): dx = dy * dy_scale[n, c] - shift[row] - (x - mean) * xmu_scale[row].

    With s = invstd[row]: dy_scale = weight * s, shift = s * sum(g) / L,
    xmu_scale = s**3 * sum(g * (x - mean)) / L (g = weight * dy), as on the CPU.
    """
    row = cuda.grid(1)
    n, channels = sum_dy.shape
    if row >= n * groups:
        return
    sample = row // groups
    per_group = channels // groups
    first = (row - sample * groups) * per_group
    s = invstd[row]
    total_g = 0.0
    total_gx = 0.0
    for j in range(per_group):
        c = first + j
        w = float(weight[c]) if affine else 1.0
        total_g += w * sum_dy[sample, c]
        total_gx += w * sum_dy_xmu[sample, c]
        dy_scale[sample, c] = w * s
    shift[row] = total_g * s / length
    xmu_scale[row] = s * s * s * total_gx / length


@gpu_kernel
def group_parameter_gradients(sum_dy, sum_dy_xmu, invstd, groups, grad_weight, grad_bias):
    """Thread c: grad_weight[c] = sum_n invstd * sum(dy (x - mean)), grad_bias[c] = sum_n sum(dy)."""
    c = cuda.grid(1)
    n, channels = sum_dy.shape
    if c >= channels:
        return
    row_in_sample = c // (channels // groups)
    total_w = 0.0
    total_b = 0.0
    for sample in range(n):
        total_w += invstd[sample * groups + row_in_sample] * sum_dy_xmu[sample, c]
        total_b += sum_dy[sample, c]
    grad_weight[c] = total_w
    grad_bias[c] = total_b


@gpu_kernel
def group_input_gradient(dy, x, dx, groups, hi, lo, dy_scale, shift, xmu_scale):
    """dx = (dy * dy_scale[n, c] - shift[row]) - ((x - hi) - lo) * xmu_scale[row], grid-stride."""
    n, channels, s = x.shape
    per_group = channels // groups
    size = n * channels * s
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < size:
        q = i // s
        k = i - q * s
        sample = q // channels
        c = q - sample * channels
        row = sample * groups + c // per_group
        xmu = (x[sample, c, k] - hi[row]) - lo[row]
        dx[sample, c, k] = (dy[sample, c, k] * dy_scale[sample, c] - shift[row]) - (
            xmu * xmu_scale[row]
        )
        i += stride


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
    count, mu, squares = _block_merge(tid, threads, count, mu, squares)
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
