"""CPU kernels (``@njit``) of the per-sample normalizations.

Two families, each on C-contiguous views prepared by the layers:

- rows ``(R, D)``: LayerNorm and RMSNorm normalize each row over its ``D``
  values, with a per-column (elementwise) ``weight`` and ``bias``;
- groups ``(N, C, S)`` read as rows ``(N * G, (C / G) * S)``: GroupNorm and
  InstanceNorm (``G == C``) normalize each row, with a per-channel affine.

Statistics are float64, the row's two passes (shifted sum, then squared
deviations) run per cache-sized block (``block`` elements) and the blocks
of a row are merged with Chan's formula in a fixed order; each row is one
work item, so results do not depend on the number of threads. The column
sums of the backward passes (``grad_weight``/``grad_bias`` of LayerNorm and
RMSNorm) go into one partial row per block of rows, added in block order.

Normalization is ((x - mean_hi) - mean_lo) * scale + offset in the data's
dtype, as in :mod:`bnsgd_numba._batch_norm_cpu`: a constant row gives
exactly ``bias``. Every loop over data runs over a slice indexed from 0.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from bnsgd_numba._compile import KernelPair, cpu_kernel


@cpu_kernel()
def _merge_chan(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    # Chan, Golub & LeVeque (1979): combine (count, mean, M2) of two parts.
    count = count_a + count_b
    if count_b == 0.0:
        return count_a, mean_a, m2_a
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    m2 = m2_a + m2_b + delta * delta * (count_a * count_b / count)
    return count, mean, m2


@cpu_kernel()
def _shifted_sum(row, shift, scratch):
    # sum(row - shift) in float64; the differences go through memory so that
    # the reassociating sum cannot fold the shift back in.
    for k in range(row.shape[0]):
        scratch[k] = row[k] - shift
    return _sum(scratch)


@cpu_kernel(reduction=True)
def _sum(values):
    total = 0.0
    for k in range(values.shape[0]):
        total += values[k]
    return total


@cpu_kernel(reduction=True)
def _sum_of_squares(values):
    total = 0.0
    for k in range(values.shape[0]):
        total += values[k] * values[k]
    return total


@cpu_kernel(reduction=True)
def _sum_of_products64(a, b):
    total = 0.0
    for k in range(a.shape[0]):
        total += a[k] * b[k]
    return total


@cpu_kernel()
def _row_moments(row, block, scratch):
    # (mean, M2) of one row in float64: two passes per block, Chan-merged.
    n = row.shape[0]
    count, mean, m2 = 0.0, 0.0, 0.0
    for b in range((n + block - 1) // block):
        part = row[b * block : min(n, (b + 1) * block)]
        size = part.shape[0]
        shift = np.float64(part[0])
        work = scratch[:size]
        part_mean = shift + _shifted_sum(part, shift, work) / size
        for k in range(size):
            work[k] = part[k] - part_mean
        count, mean, m2 = _merge_chan(
            count, mean, m2, np.float64(size), part_mean, _sum_of_squares(work)
        )
    return mean, m2


def _row_statistics(x, block, eps, mean, var, invstd):
    # mean[r], biased var[r] and invstd[r] = 1/sqrt(var + eps) of each row of x (R, L).
    rows, length = x.shape
    for r in prange(rows):
        scratch = np.empty(min(block, length), dtype=np.float64)
        mu, m2 = _row_moments(x[r], block, scratch)
        mean[r] = mu
        var[r] = m2 / length
        invstd[r] = 1.0 / math.sqrt(var[r] + eps)


def _row_mean_squares(x, eps, invrms):
    # invrms[r] = 1/sqrt(mean(x[r]**2) + eps), summed in float64.
    rows, length = x.shape
    for r in prange(rows):
        scratch = np.empty(length, dtype=np.float64)
        row = x[r]
        for k in range(length):
            scratch[k] = row[k]
        invrms[r] = 1.0 / math.sqrt(_sum_of_squares(scratch) / length + eps)


def _layer_normalize(x, y, rows_per_item, mean, invstd, weight, bias):
    # y = ((x - hi) - lo) * invstd * weight + bias, per element of the row.
    rows, length = x.shape
    affine = weight.shape[0] > 0
    shifted = bias.shape[0] > 0
    for item in prange((rows + rows_per_item - 1) // rows_per_item):
        r0 = item * rows_per_item
        for r in range(r0, min(r0 + rows_per_item, rows)):
            source = x[r]
            target = y[r]
            hi = source.dtype.type(mean[r])
            lo = source.dtype.type(mean[r] - np.float64(hi))
            s = source.dtype.type(invstd[r])
            if affine and shifted:
                for k in range(length):
                    target[k] = (((source[k] - hi) - lo) * s) * weight[k] + bias[k]
            elif affine:
                for k in range(length):
                    target[k] = (((source[k] - hi) - lo) * s) * weight[k]
            else:
                for k in range(length):
                    target[k] = ((source[k] - hi) - lo) * s


def _rms_normalize(x, y, rows_per_item, invrms, weight):
    rows, length = x.shape
    affine = weight.shape[0] > 0
    for item in prange((rows + rows_per_item - 1) // rows_per_item):
        r0 = item * rows_per_item
        for r in range(r0, min(r0 + rows_per_item, rows)):
            source = x[r]
            target = y[r]
            s = source.dtype.type(invrms[r])
            if affine:
                for k in range(length):
                    target[k] = (source[k] * s) * weight[k]
            else:
                for k in range(length):
                    target[k] = source[k] * s


def _layer_backward(
    dy, x, dx, rows_per_item, mean, invstd, weight, centered, part_gw, part_gb
):  # fmt: skip
    # One pass per row of (dy, x): with g = dy * weight and xmu = x - mean,
    # dx = invstd * (g - sum(g)/D - xmu * invstd**2 * sum(g * xmu)/D); the
    # block's column sums of dy * xmu * invstd and dy go to part_gw/part_gb.
    # ``centered`` False is RMSNorm: mean is 0 and the sum(g)/D term drops.
    rows, length = x.shape
    affine = weight.shape[0] > 0
    for item in prange((rows + rows_per_item - 1) // rows_per_item):
        r0 = item * rows_per_item
        g = np.empty(length, dtype=np.float64)
        xmu = np.empty(length, dtype=np.float64)
        gw = part_gw[item]
        gb = part_gb[item]
        for k in range(length):
            gw[k] = 0.0
            gb[k] = 0.0
        for r in range(r0, min(r0 + rows_per_item, rows)):
            d = dy[r]
            v = x[r]
            out = dx[r]
            mu = mean[r] if centered else 0.0
            s = invstd[r]
            for k in range(length):
                xmu[k] = v[k] - mu
            if affine:
                for k in range(length):
                    g[k] = np.float64(d[k]) * weight[k]
            else:
                for k in range(length):
                    g[k] = d[k]
            c1 = _sum(g) / length if centered else 0.0
            c2 = s * s * _sum_of_products64(g, xmu) / length
            for k in range(length):
                out[k] = ((g[k] - c1) - xmu[k] * c2) * s
            for k in range(length):
                gw[k] += np.float64(d[k]) * xmu[k] * s
                gb[k] += d[k]


def _column_sums(part, total):
    # total[k] = sum over blocks of part[b, k], in block order.
    blocks, length = part.shape
    for k in prange(length):
        acc = 0.0
        for b in range(blocks):
            acc += part[b, k]
        total[k] = acc


def _group_normalize(x, y, groups, mean, invstd, weight, bias):
    # x (N, C, S); row n * groups + c // (C / groups) holds the statistics.
    n, channels, s = x.shape
    per_group = channels // groups
    affine = weight.shape[0] > 0
    for item in prange(n * channels):
        i = item // channels
        c = item % channels
        row = i * groups + c // per_group
        source = x[i, c]
        target = y[i, c]
        hi = source.dtype.type(mean[row])
        lo = source.dtype.type(mean[row] - np.float64(hi))
        w = np.float64(weight[c]) if affine else 1.0
        scale = source.dtype.type(w * invstd[row])
        offset = bias[c] if affine else source.dtype.type(0.0)
        for k in range(s):
            target[k] = ((source[k] - hi) - lo) * scale + offset


def _group_gradient_sums(dy, x, groups, mean, sum_dy, sum_dy_xmu):
    # Per (n, c): sum(dy) and sum(dy * (x - mean_row)), in float64.
    n, channels, s = x.shape
    per_group = channels // groups
    for item in prange(n * channels):
        i = item // channels
        c = item % channels
        mu = mean[i * groups + c // per_group]
        g = dy[i, c]
        v = x[i, c]
        xmu = np.empty(s, dtype=np.float64)
        for k in range(s):
            xmu[k] = v[k] - mu
        sum_dy[i, c] = _sum(g)
        sum_dy_xmu[i, c] = _sum_of_products64(xmu, g)


def _group_input_gradient(dy, x, dx, groups, mean, dy_scale, shift, xmu_scale):
    # dx = (dy * dy_scale[n, c] - shift[row]) - ((x - hi) - lo) * xmu_scale[row]
    n, channels, s = x.shape
    per_group = channels // groups
    for item in prange(n * channels):
        i = item // channels
        c = item % channels
        row = i * groups + c // per_group
        g = dy[i, c]
        v = x[i, c]
        out = dx[i, c]
        hi = v.dtype.type(mean[row])
        lo = v.dtype.type(mean[row] - np.float64(hi))
        a = dy_scale[i, c]
        b = shift[row]
        k3 = xmu_scale[row]
        for k in range(s):
            out[k] = (g[k] * a - b) - ((v[k] - hi) - lo) * k3


@cpu_kernel()
def group_gradient_constants(
    sum_dy, sum_dy_xmu, groups, length, invstd, weight, training,
    grad_weight, grad_bias, dy_scale, shift, xmu_scale,
):  # fmt: skip
    """Per-row and per-(n, c) constants of the GroupNorm input gradient.

    With g = weight * dy, ``length`` values per row and s = invstd of the row::

        dx = s * (g - sum(g)/L - (x - mean) * s**2 * sum(g * (x - mean))/L)
           = dy * (weight * s) - shift[row] - (x - mean) * xmu_scale[row]

    (with fixed statistics, in eval: dx = dy * weight * s). Fills float64
    ``grad_weight[c]`` = sum over n of s * sum(dy * (x - mean)) and
    ``grad_bias[c]`` = sum(dy), in the order of n.
    """
    n, channels = sum_dy.shape
    per_group = channels // groups
    affine = weight.shape[0] > 0
    for c in range(channels):
        grad_weight[c] = 0.0
        grad_bias[c] = 0.0
    for i in range(n):
        for grp in range(groups):
            row = i * groups + grp
            s = invstd[row]
            total_g = 0.0
            total_gx = 0.0
            for j in range(per_group):
                c = grp * per_group + j
                w = np.float64(weight[c]) if affine else 1.0
                total_g += w * sum_dy[i, c]
                total_gx += w * sum_dy_xmu[i, c]
                grad_weight[c] += s * sum_dy_xmu[i, c]
                grad_bias[c] += sum_dy[i, c]
                dy_scale[i, c] = w * s
            if training:
                shift[row] = total_g * s / length
                xmu_scale[row] = s * s * s * total_gx / length
            else:
                shift[row] = 0.0
                xmu_scale[row] = 0.0


row_statistics = KernelPair(_row_statistics)
row_mean_squares = KernelPair(_row_mean_squares)
layer_normalize = KernelPair(_layer_normalize)
rms_normalize = KernelPair(_rms_normalize)
layer_backward = KernelPair(_layer_backward)
column_sums = KernelPair(_column_sums)
group_normalize = KernelPair(_group_normalize)
group_gradient_sums = KernelPair(_group_gradient_sums)
group_input_gradient = KernelPair(_group_input_gradient)
