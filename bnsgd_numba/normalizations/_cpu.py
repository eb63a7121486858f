"""CPU kernels (``@njit``) of the per-sample normalizations.

Two families, each on C-contiguous views prepared by the layers:

- rows ``(R, D)``: LayerNorm and RMSNorm normalize each row over its ``D``
  values, with a per-column (elementwise) ``weight`` and ``bias``;
- groups ``(N, C, S)`` read as rows ``(N * G, (C / G) * S)``: GroupNorm and
  InstanceNorm (``G == C``) normalize each row, with a per-channel affine.

Statistics are float64, sums of deviations from the mean of a sample of
each cache-sized block (``block`` elements; see
``_core.reductions.SHIFT_SAMPLE_DIVISOR``), and the blocks of a row are
merged with Chan's formula in a fixed order; each row is one
work item, so results do not depend on the number of threads. The column
sums of the backward passes (``grad_weight``/``grad_bias`` of LayerNorm and
RMSNorm) go into one partial row per block of rows, added in block order.

Normalization is ((x - mean_hi) - mean_lo) * scale + offset in the data's
dtype, as in :mod:`bnsgd_numba.batch_norm._cpu`: a constant row gives
exactly ``bias``. Every loop over data runs over a slice indexed from 0.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from bnsgd_numba._core.compile import KernelPair, cpu_kernel
from bnsgd_numba._core.reductions import (
    gradient_row_sums,
    merge_chan,
    reassociable_add,
    shift_sample_size,
    shifted_sums,
    sum_of_squares,
    sum_values,
)
from bnsgd_numba._core.streaming import borrow, centered_normalize_span, store_fence, streams


@cpu_kernel()
def _block_moments(part):
    # (mean, M2) of one block in float64: the sums of its deviations from
    # the mean of its first values (a 1/16 sample for float32, the whole
    # block for float64; see _core.reductions.SHIFT_SAMPLE_DIVISOR)
    size = part.shape[0]
    sample = shift_sample_size(part.itemsize, size)
    shift = sum_values(part[:sample]) / np.float64(sample)
    deviation, squares = shifted_sums(part, shift)
    return shift + deviation / size, max(squares - deviation * deviation / size, 0.0)


@cpu_kernel()
def _row_moments(row, block):
    # (mean, M2) of one row in float64: its blocks of ``block`` values
    # (_block_moments), Chan-merged in block order into zeros
    n = row.shape[0]
    if 0 < n <= block:
        # one block: merge_chan's arithmetic for a first part (a ratio of
        # exactly 1, a weight of exactly 0) without its two divisions
        mean, m2 = _block_moments(row)
        return 0.0 + mean * 1.0, 0.0 + m2 + mean * mean * 0.0
    count, mean, m2 = 0.0, 0.0, 0.0
    for b in range((n + block - 1) // block):
        part = row[b * block : min(n, (b + 1) * block)]
        part_mean, part_m2 = _block_moments(part)
        count, mean, m2 = merge_chan(
            count, mean, m2, np.float64(part.shape[0]), part_mean, part_m2
        )  # fmt: skip
    return mean, m2


def _row_statistics(x, block, eps, mean, var, invstd):
    # mean[r], biased var[r] and invstd[r] = 1/sqrt(var + eps) of each row of x (R, L).
    rows, length = x.shape
    for r in prange(rows):
        mu, m2 = _row_moments(x[r], block)
        mean[r] = mu
        var[r] = m2 / length
        invstd[r] = 1.0 / math.sqrt(var[r] + eps)


def _layer_forward(x, y, rows_per_item, block, eps, weight, bias, mean, invstd):
    # Per row, while it is in cache: statistics, then
    # y = (((x - hi) - lo) * invstd) * weight + bias in the data's dtype.
    rows, length = x.shape
    affine = weight.shape[0] > 0
    shifted = bias.shape[0] > 0
    for item in prange((rows + rows_per_item - 1) // rows_per_item):
        r0 = item * rows_per_item
        constants = np.empty(3, dtype=x.dtype)
        for r in range(r0, min(r0 + rows_per_item, rows)):
            source = x[r]
            target = y[r]
            mu, m2 = _row_moments(source, block)
            s64 = 1.0 / math.sqrt(m2 / length + eps)
            mean[r] = mu
            invstd[r] = s64
            constants[0] = mu
            constants[1] = mu - np.float64(constants[0])
            constants[2] = s64
            hi, lo, s = constants[0], constants[1], constants[2]
            if affine and shifted:
                for k in range(length):
                    target[k] = (((source[k] - hi) - lo) * s) * weight[k] + bias[k]
            elif affine:
                for k in range(length):
                    target[k] = (((source[k] - hi) - lo) * s) * weight[k]
            else:
                for k in range(length):
                    target[k] = ((source[k] - hi) - lo) * s


def _rms_forward(x, y, rows_per_item, eps, weight, invrms):
    # Per row: invrms = 1/sqrt(mean(x**2) + eps) in float64, y = (x * invrms) * weight.
    rows, length = x.shape
    affine = weight.shape[0] > 0
    for item in prange((rows + rows_per_item - 1) // rows_per_item):
        r0 = item * rows_per_item
        constants = np.empty(1, dtype=x.dtype)
        for r in range(r0, min(r0 + rows_per_item, rows)):
            source = x[r]
            target = y[r]
            s64 = 1.0 / math.sqrt(sum_of_squares(source) / length + eps)
            invrms[r] = s64
            constants[0] = s64
            s = constants[0]
            if affine:
                for k in range(length):
                    target[k] = (source[k] * s) * weight[k]
            else:
                for k in range(length):
                    target[k] = source[k] * s


@cpu_kernel()
def _row_gradient_sums(dy, x, weight, center, scale, part_gw, part_gb):
    # (sum(g), sum(g * (x - center))) in float64 over one row, g = dy * weight
    # (``weight`` float64, empty: 1), the additions into them reassociable and
    # the subtraction strict; and, column by column, part_gw += dy * (x -
    # center) * scale and part_gb += dy.
    total_g = 0.0
    total_gx = 0.0
    if weight.shape[0] > 0:
        for k in range(x.shape[0]):
            d = np.float64(dy[k])
            xmu = np.float64(x[k]) - center
            g = d * weight[k]
            total_g = reassociable_add(total_g, g)
            total_gx = reassociable_add(total_gx, g * xmu)
            part_gw[k] += d * (xmu * scale)
            part_gb[k] += d
    else:
        for k in range(x.shape[0]):
            d = np.float64(dy[k])
            xmu = np.float64(x[k]) - center
            total_g = reassociable_add(total_g, d)
            total_gx = reassociable_add(total_gx, d * xmu)
            part_gw[k] += d * (xmu * scale)
            part_gb[k] += d
    return total_g, total_gx


@cpu_kernel()
def _quad_gradient_sums(dy, x, r, weight, mean, invstd, centered, part_gw, part_gb, totals):
    # _row_gradient_sums of rows r..r+3 in one loop: the rows' float64 sums
    # into totals[0, j] (sum(g)) and totals[1, j] (sum(g * xmu)), and the
    # column sums added row after row as four calls would add them (the same
    # bits), loaded and stored once per four rows instead of once per row.
    d0, d1, d2, d3 = dy[r], dy[r + 1], dy[r + 2], dy[r + 3]
    v0, v1, v2, v3 = x[r], x[r + 1], x[r + 2], x[r + 3]
    m0 = mean[r] if centered else 0.0
    m1 = mean[r + 1] if centered else 0.0
    m2 = mean[r + 2] if centered else 0.0
    m3 = mean[r + 3] if centered else 0.0
    s0, s1, s2, s3 = invstd[r], invstd[r + 1], invstd[r + 2], invstd[r + 3]
    affine = weight.shape[0] > 0
    g0 = g1 = g2 = g3 = 0.0
    h0 = h1 = h2 = h3 = 0.0
    for k in range(x.shape[1]):
        e0, e1 = np.float64(d0[k]), np.float64(d1[k])
        e2, e3 = np.float64(d2[k]), np.float64(d3[k])
        u0, u1 = np.float64(v0[k]) - m0, np.float64(v1[k]) - m1
        u2, u3 = np.float64(v2[k]) - m2, np.float64(v3[k]) - m3
        w = weight[k] if affine else 1.0
        a0, a1, a2, a3 = e0 * w, e1 * w, e2 * w, e3 * w
        g0, g1 = reassociable_add(g0, a0), reassociable_add(g1, a1)
        g2, g3 = reassociable_add(g2, a2), reassociable_add(g3, a3)
        h0, h1 = reassociable_add(h0, a0 * u0), reassociable_add(h1, a1 * u1)
        h2, h3 = reassociable_add(h2, a2 * u2), reassociable_add(h3, a3 * u3)
        column_gw = part_gw[k]
        column_gw += e0 * (u0 * s0)
        column_gw += e1 * (u1 * s1)
        column_gw += e2 * (u2 * s2)
        column_gw += e3 * (u3 * s3)
        part_gw[k] = column_gw
        column_gb = part_gb[k]
        column_gb += e0
        column_gb += e1
        column_gb += e2
        column_gb += e3
        part_gb[k] = column_gb
    totals[0, 0], totals[0, 1], totals[0, 2], totals[0, 3] = g0, g1, g2, g3
    totals[1, 0], totals[1, 1], totals[1, 2], totals[1, 3] = h0, h1, h2, h3


@cpu_kernel()
def _row_input_gradient(d, v, out, weight, mu, s, total_g, total_gx, centered, constants):
    # dx of one row from its sums: ((g - c1) - ((x - hi) - lo) * c2) * invstd
    # in the data's dtype (``weight`` the data's, empty: 1)
    length = v.shape[0]
    constants[0] = mu
    constants[1] = mu - np.float64(constants[0])
    constants[2] = total_g / length if centered else 0.0
    constants[3] = s * s * total_gx / length
    constants[4] = s
    hi, lo, c1, c2, scale = (
        constants[0], constants[1], constants[2], constants[3], constants[4]
    )  # fmt: skip
    if weight.shape[0] > 0:
        for k in range(length):
            out[k] = ((d[k] * weight[k] - c1) - ((v[k] - hi) - lo) * c2) * scale
    else:
        for k in range(length):
            out[k] = ((d[k] - c1) - ((v[k] - hi) - lo) * c2) * scale


def _layer_backward(
    dy, x, dx, rows_per_item, mean, invstd, weight, centered, part_gw, part_gb
):  # fmt: skip
    # Per row of (dy, x): the float64 sums, with the block's column sums of
    # dy * xmu * invstd and dy into part_gw/part_gb, in one pass; then, in
    # the data's dtype while the row is in cache, with g = dy * weight and
    # xmu = x - mean,
    #   dx = invstd * (g - sum(g)/D - xmu * invstd**2 * sum(g * xmu)/D)
    #      = ((g - c1) - ((x - hi) - lo) * c2) * invstd.
    # ``centered`` False is RMSNorm: mean is 0 and the sum(g)/D term drops.
    # Rows go four at a time (_quad_gradient_sums: the kernel 1.3x faster
    # at (4096, 1024) float32, the same bits), an item's last rows one by one.
    rows, length = x.shape
    affine = weight.shape[0] > 0
    for item in prange((rows + rows_per_item - 1) // rows_per_item):
        r0 = item * rows_per_item
        r1 = min(r0 + rows_per_item, rows)
        gw = part_gw[item]
        gb = part_gb[item]
        gw[:] = 0.0
        gb[:] = 0.0
        weight64 = np.empty(length if affine else 0, dtype=np.float64)
        for k in range(weight64.shape[0]):
            weight64[k] = weight[k]
        constants = np.empty(5, dtype=x.dtype)
        totals = np.empty((2, 4), dtype=np.float64)
        quads = r0 + (r1 - r0) // 4 * 4
        for r in range(r0, quads, 4):
            _quad_gradient_sums(dy, x, r, weight64, mean, invstd, centered, gw, gb, totals)
            for j in range(4):
                mu = mean[r + j] if centered else 0.0
                _row_input_gradient(
                    dy[r + j], x[r + j], dx[r + j], weight, mu, invstd[r + j], totals[0, j],
                    totals[1, j], centered, constants,
                )  # fmt: skip
        for r in range(quads, r1):
            mu = mean[r] if centered else 0.0
            s = invstd[r]
            total_g, total_gx = _row_gradient_sums(dy[r], x[r], weight64, mu, s, gw, gb)
            _row_input_gradient(
                dy[r], x[r], dx[r], weight, mu, s, total_g, total_gx, centered, constants
            )


def _column_sums(part, total, columns_per_item):
    # total[k] = sum over blocks of part[b, k], in block order; each work item
    # adds whole rows of a slice of columns (contiguous, vectorized).
    blocks, length = part.shape
    for item in prange((length + columns_per_item - 1) // columns_per_item):
        c0 = item * columns_per_item
        acc = total[c0 : min(c0 + columns_per_item, length)]
        for k in range(acc.shape[0]):
            acc[k] = 0.0
        for b in range(blocks):
            source = part[b, c0 : c0 + acc.shape[0]]
            for k in range(acc.shape[0]):
                acc[k] += source[k]


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
        # constants rounded to the data's dtype through an array of it
        constants = np.empty(4, dtype=x.dtype)
        constants[0] = mean[row]
        constants[1] = mean[row] - np.float64(constants[0])
        constants[2] = (np.float64(weight[c]) if affine else 1.0) * invstd[row]
        constants[3] = bias[c] if affine else 0.0
        hi, lo, scale, offset = constants[0], constants[1], constants[2], constants[3]
        for k in range(s):
            target[k] = ((source[k] - hi) - lo) * scale + offset


def _group_forward(x, y, groups, block, eps, weight, bias, mean, var, invstd):
    # Per row (sample, group), while it is in cache: statistics, then the
    # normalization of its channels, as in _group_normalize.
    n, channels, s = x.shape
    per_group = channels // groups
    length = per_group * s
    rows = x.reshape((n * groups, length))
    affine = weight.shape[0] > 0
    # an output too large for the cache: each channel's whole lines streamed
    # (bnsgd_numba._core.streaming), from arrays that take no references
    stream = streams(y)
    x_flat = borrow(x.reshape(n * channels * s))
    y_flat = borrow(y.reshape(n * channels * s))
    for row in prange(n * groups):
        mu, m2 = _row_moments(rows[row], block)
        mean[row] = mu
        var[row] = m2 / length
        invstd[row] = 1.0 / math.sqrt(var[row] + eps)
        i = row // groups
        constants = np.empty(4, dtype=x.dtype)
        for j in range(per_group):
            c = (row % groups) * per_group + j
            constants[0] = mu
            constants[1] = mu - np.float64(constants[0])
            constants[2] = (np.float64(weight[c]) if affine else 1.0) * invstd[row]
            constants[3] = bias[c] if affine else 0.0
            hi, lo, scale, offset = constants[0], constants[1], constants[2], constants[3]
            if stream:
                start = (i * channels + c) * s
                centered_normalize_span(x_flat, y_flat, start, s, hi, lo, scale, offset)
                continue
            source = x[i, c]
            target = y[i, c]
            for k in range(s):
                target[k] = ((source[k] - hi) - lo) * scale + offset
        if stream:
            store_fence()


def _group_backward(dy, x, dx, groups, mean, invstd, weight, sum_dy, sum_dy_xmu):
    # Per row (sample, group), while its dy and x are in cache: the per-channel
    # sums(dy) and sum(dy * (x - mean)) in float64, then, with g = weight * dy,
    # L values per row and s = invstd,
    #   dx = s * (g - sum(g)/L - (x - mean) * s**2 * sum(g * (x - mean))/L)
    #      = dy * (weight * s) - shift - ((x - hi) - lo) * xmu_scale.
    n, channels, s = x.shape
    per_group = channels // groups
    length = np.float64(per_group * s)
    affine = weight.shape[0] > 0
    for row in prange(n * groups):
        i = row // groups
        first = (row % groups) * per_group
        mu = mean[row]
        inv = invstd[row]
        total_g = 0.0
        total_gx = 0.0
        for j in range(per_group):
            c = first + j
            a, b, _ = gradient_row_sums(dy[i, c], x[i, c], mu)
            sum_dy[i, c] = a
            sum_dy_xmu[i, c] = b
            w = np.float64(weight[c]) if affine else 1.0
            total_g += w * a
            total_gx += w * b
        constants = np.empty(5, dtype=x.dtype)
        constants[0] = mu
        constants[1] = mu - np.float64(constants[0])
        constants[2] = total_g * inv / length
        constants[3] = inv * inv * inv * total_gx / length
        hi, lo, shift, xmu_scale = constants[0], constants[1], constants[2], constants[3]
        for j in range(per_group):
            c = first + j
            constants[4] = (np.float64(weight[c]) if affine else 1.0) * inv
            scale = constants[4]
            g = dy[i, c]
            v = x[i, c]
            out = dx[i, c]
            for k in range(s):
                out[k] = (g[k] * scale - shift) - ((v[k] - hi) - lo) * xmu_scale


@cpu_kernel()
def group_parameter_gradients(sum_dy, sum_dy_xmu, groups, invstd, grad_weight, grad_bias):
    """grad_weight[c] = sum over n of invstd * sum(dy * (x - mean)); grad_bias[c] = sum(dy).

    Float64, summed in the order of n.
    """
    n, channels = sum_dy.shape
    per_group = channels // groups
    for c in range(channels):
        grad_weight[c] = 0.0
        grad_bias[c] = 0.0
    for i in range(n):
        for c in range(channels):
            grad_weight[c] += invstd[i * groups + c // per_group] * sum_dy_xmu[i, c]
            grad_bias[c] += sum_dy[i, c]


row_statistics = KernelPair(_row_statistics)
layer_forward = KernelPair(_layer_forward)
rms_forward = KernelPair(_rms_forward)
layer_backward = KernelPair(_layer_backward)
column_sums = KernelPair(_column_sums)
group_normalize = KernelPair(_group_normalize)
group_forward = KernelPair(_group_forward)
group_backward = KernelPair(_group_backward)
