"""CPU BatchNorm kernels (``@njit``, parallel) on two canonical layouts.

Every input reaches these kernels as one of two C-contiguous views:

- ``ncs``: shape ``(N, C, S)``, the channel in the middle (NCHW and friends,
  ``S`` the product of the spatial sizes);
- ``rc``: shape ``(R, C)``, the channel last (channels-last, and ``(N, C)``).

Reductions are split into work items whose boundaries depend on the shape
only (``config.CPU_ITEM_ELEMENTS``), each item computes its statistics with
two passes over data that is still in cache, and the items of a channel are
merged in a fixed order with Chan's formula. The results therefore do not
depend on the number of threads, and never come from E[x^2] - E[x]^2.

The loops over the data are :class:`KernelPair` builds (parallel, and serial
for tiny inputs); the per-channel arithmetic between them is serial.
:mod:`bnsgd_numba.batch_norm` validates the input and calls them in order.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from bnsgd_numba._compile import KernelPair, cpu_kernel
from bnsgd_numba._reductions import (
    merge_chan,
    sum_and_sum_of_squares,
    sum_of_products,
    sum_values,
)


@cpu_kernel()
def channel_constants(mean, invstd, weight, bias, shift_hi, shift_lo, scale, offset):
    """Per-channel constants of y = ((x - shift_hi) - shift_lo) * scale + offset.

    The outputs have the data's dtype. shift_hi + shift_lo carries the
    float64 mean, so a float32 channel with |mean| >> std keeps its accuracy
    (the subtraction rounds relative to the deviation, not to the mean), and
    a constant channel gives exactly ``offset``.
    """
    for c in range(mean.shape[0]):
        shift_hi[c] = mean[c]
        shift_lo[c] = mean[c] - np.float64(shift_hi[c])
        w = np.float64(weight[c]) if weight.shape[0] > 0 else 1.0
        scale[c] = w * invstd[c]
        offset[c] = bias[c] if bias.shape[0] > 0 else 0.0


@cpu_kernel()
def _item_span(item, items_per_channel, rows_per_item, rows):
    channel = item // items_per_channel
    start = (item % items_per_channel) * rows_per_item
    return channel, start, min(start + rows_per_item, rows)


def _moments_ncs(x, rows_per_item, mean, m2):
    # Per-channel mean and M2 of x (N, C, S) into float64 ``mean``/``m2``.
    n, channels, s = x.shape
    items_per_channel = (n + rows_per_item - 1) // rows_per_item
    items = channels * items_per_channel
    part_mean = np.empty(items, dtype=np.float64)
    part_m2 = np.empty(items, dtype=np.float64)
    part_count = np.empty(items, dtype=np.float64)
    for item in prange(items):
        c, start, stop = _item_span(item, items_per_channel, rows_per_item, n)
        # Corrected two-pass (Chan, Golub & LeVeque 1983): a rough mean from a
        # plain sum, then the deviations d = x - rough, stored before they are
        # summed, give mean = rough + sum(d)/n and M2 = sum(d^2) - sum(d)^2/n.
        # A constant channel comes out exact: d is the same exact difference
        # everywhere, so rough + sum(d)/n is x itself and M2 is 0.
        scratch = np.empty(s, dtype=np.float64)
        total = 0.0
        for i in range(start, stop):
            total += sum_values(x[i, c])
        count = np.float64((stop - start) * s)
        rough = total / count
        deviation = 0.0
        squares = 0.0
        for i in range(start, stop):
            row = x[i, c]
            for k in range(s):
                scratch[k] = row[k] - rough
            row_sum, row_squares = sum_and_sum_of_squares(scratch)
            deviation += row_sum
            squares += row_squares
        item_mean = rough + deviation / count
        squares = max(squares - deviation * deviation / count, 0.0)
        part_mean[item] = item_mean
        part_m2[item] = squares
        part_count[item] = count
    for c in prange(channels):
        count, running_mean, running_m2 = 0.0, 0.0, 0.0
        for j in range(items_per_channel):
            item = c * items_per_channel + j
            count, running_mean, running_m2 = merge_chan(
                count, running_mean, running_m2, part_count[item], part_mean[item], part_m2[item]
            )
        mean[c] = running_mean
        m2[c] = running_m2


def _moments_rc(x, rows_per_item, columns_per_item, mean, m2):
    # Per-channel mean and M2 of x (R, C) into float64 ``mean``/``m2``.
    rows, channels = x.shape
    row_blocks = (rows + rows_per_item - 1) // rows_per_item
    column_blocks = (channels + columns_per_item - 1) // columns_per_item
    part_mean = np.zeros((row_blocks, channels), dtype=np.float64)
    part_m2 = np.zeros((row_blocks, channels), dtype=np.float64)
    for item in prange(row_blocks * column_blocks):
        rb = item // column_blocks
        c0 = (item % column_blocks) * columns_per_item
        c1 = min(c0 + columns_per_item, channels)
        r0 = rb * rows_per_item
        r1 = min(r0 + rows_per_item, rows)
        sums = part_mean[rb, c0:c1]
        # sums shifted by the block's first row: a constant channel gives
        # exactly 0 (the loop over channels vectorizes without reassoc)
        shift = x[r0, c0:c1]
        for r in range(r0, r1):
            row = x[r, c0:c1]
            for j in range(c1 - c0):
                sums[j] += row[j] - np.float64(shift[j])
        inverse_count = 1.0 / (r1 - r0)
        for j in range(c1 - c0):
            sums[j] = shift[j] + sums[j] * inverse_count
        squares = part_m2[rb, c0:c1]
        for r in range(r0, r1):
            row = x[r, c0:c1]
            for j in range(c1 - c0):
                d = row[j] - sums[j]
                squares[j] += d * d
    for c in prange(channels):
        count, running_mean, running_m2 = 0.0, 0.0, 0.0
        for rb in range(row_blocks):
            block_count = np.float64(min(rows_per_item, rows - rb * rows_per_item))
            count, running_mean, running_m2 = merge_chan(
                count, running_mean, running_m2, block_count, part_mean[rb, c], part_m2[rb, c]
            )
        mean[c] = running_mean
        m2[c] = running_m2


def _normalize_ncs(x, y, shift_hi, shift_lo, scale, offset):
    n, channels, s = x.shape
    for item in prange(n * channels):
        i = item // channels
        c = item % channels
        hi, lo, a, b = shift_hi[c], shift_lo[c], scale[c], offset[c]
        source = x[i, c]
        target = y[i, c]
        for k in range(s):
            target[k] = ((source[k] - hi) - lo) * a + b


def _normalize_rc(x, y, rows_per_item, shift_hi, shift_lo, scale, offset):
    rows, channels = x.shape
    for block in prange((rows + rows_per_item - 1) // rows_per_item):
        r0 = block * rows_per_item
        for r in range(r0, min(r0 + rows_per_item, rows)):
            source = x[r]
            target = y[r]
            for c in range(channels):
                target[c] = ((source[c] - shift_hi[c]) - shift_lo[c]) * scale[c] + offset[c]


def _gradient_sums_ncs(dy, x, mean, rows_per_item, sum_dy, sum_dy_xmu, sum_xmu):
    n, channels, s = x.shape
    items_per_channel = (n + rows_per_item - 1) // rows_per_item
    items = channels * items_per_channel
    part_dy = np.empty(items, dtype=np.float64)
    part_dy_xmu = np.empty(items, dtype=np.float64)
    part_xmu = np.empty(items, dtype=np.float64)
    for item in prange(items):
        c, start, stop = _item_span(item, items_per_channel, rows_per_item, n)
        mu = mean[c]
        total_dy = 0.0
        total_dy_xmu = 0.0
        total_xmu = 0.0
        xmu = np.empty(s, dtype=np.float64)
        for i in range(start, stop):
            g = dy[i, c]
            v = x[i, c]
            for k in range(s):
                xmu[k] = v[k] - mu
            total_dy += sum_values(g)
            total_dy_xmu += sum_of_products(g, xmu)
            total_xmu += sum_values(xmu)
        part_dy[item] = total_dy
        part_dy_xmu[item] = total_dy_xmu
        part_xmu[item] = total_xmu
    for c in prange(channels):
        total_dy = 0.0
        total_dy_xmu = 0.0
        total_xmu = 0.0
        for j in range(items_per_channel):
            total_dy += part_dy[c * items_per_channel + j]
            total_dy_xmu += part_dy_xmu[c * items_per_channel + j]
            total_xmu += part_xmu[c * items_per_channel + j]
        sum_dy[c] = total_dy
        sum_dy_xmu[c] = total_dy_xmu
        sum_xmu[c] = total_xmu


def _gradient_sums_rc(
    dy, x, mean, rows_per_item, columns_per_item, sum_dy, sum_dy_xmu, sum_xmu
):  # fmt: skip
    rows, channels = x.shape
    row_blocks = (rows + rows_per_item - 1) // rows_per_item
    column_blocks = (channels + columns_per_item - 1) // columns_per_item
    part_dy = np.zeros((row_blocks, channels), dtype=np.float64)
    part_dy_xmu = np.zeros((row_blocks, channels), dtype=np.float64)
    part_xmu = np.zeros((row_blocks, channels), dtype=np.float64)
    for item in prange(row_blocks * column_blocks):
        rb = item // column_blocks
        c0 = (item % column_blocks) * columns_per_item
        c1 = min(c0 + columns_per_item, channels)
        r0 = rb * rows_per_item
        totals_dy = part_dy[rb, c0:c1]
        totals_dy_xmu = part_dy_xmu[rb, c0:c1]
        totals_xmu = part_xmu[rb, c0:c1]
        mu = mean[c0:c1]
        for r in range(r0, min(r0 + rows_per_item, rows)):
            g = dy[r, c0:c1]
            v = x[r, c0:c1]
            for j in range(c1 - c0):
                gj = np.float64(g[j])
                xmu = v[j] - mu[j]
                totals_dy[j] += gj
                totals_dy_xmu[j] += gj * xmu
                totals_xmu[j] += xmu
    for c in prange(channels):
        total_dy = 0.0
        total_dy_xmu = 0.0
        total_xmu = 0.0
        for rb in range(row_blocks):
            total_dy += part_dy[rb, c]
            total_dy_xmu += part_dy_xmu[rb, c]
            total_xmu += part_xmu[rb, c]
        sum_dy[c] = total_dy
        sum_dy_xmu[c] = total_dy_xmu
        sum_xmu[c] = total_xmu


def _input_gradient_ncs(dy, x, dx, center_hi, center_lo, dy_scale, shift, xmu_scale):
    # dx = ((dy - shift) - ((x - center_hi) - center_lo) * xmu_scale) * dy_scale
    n, channels, s = x.shape
    for item in prange(n * channels):
        i = item // channels
        c = item % channels
        hi, lo, a, k1, k3 = center_hi[c], center_lo[c], dy_scale[c], shift[c], xmu_scale[c]
        g = dy[i, c]
        v = x[i, c]
        out = dx[i, c]
        for k in range(s):
            out[k] = ((g[k] - k1) - ((v[k] - hi) - lo) * k3) * a


def _input_gradient_rc(
    dy, x, dx, rows_per_item, center_hi, center_lo, dy_scale, shift, xmu_scale
):  # fmt: skip
    rows, channels = x.shape
    for block in prange((rows + rows_per_item - 1) // rows_per_item):
        r0 = block * rows_per_item
        for r in range(r0, min(r0 + rows_per_item, rows)):
            g = dy[r]
            v = x[r]
            out = dx[r]
            for c in range(channels):
                xmu = (v[c] - center_hi[c]) - center_lo[c]
                out[c] = ((g[c] - shift[c]) - xmu * xmu_scale[c]) * dy_scale[c]


@cpu_kernel()
def finish_statistics(mean, m2, count, eps, invstd):
    """Fill ``invstd`` = 1/sqrt(M2/count + eps); return the number of non-finite channels."""
    bad = 0
    for c in range(mean.shape[0]):
        variance = m2[c] / count
        invstd[c] = 1.0 / math.sqrt(variance + eps)
        if not (math.isfinite(mean[c]) and math.isfinite(variance)):
            bad += 1
    return bad


@cpu_kernel()
def running_invstd(running_var, eps, invstd):
    """Fill ``invstd`` = 1/sqrt(running_var + eps), computed in float64."""
    for c in range(running_var.shape[0]):
        invstd[c] = 1.0 / math.sqrt(np.float64(running_var[c]) + eps)


@cpu_kernel()
def update_running_statistics(running_mean, running_var, mean, m2, count, momentum):
    """running = (1 - momentum) * running + momentum * batch (unbiased variance)."""
    keep = 1.0 - momentum
    for c in range(mean.shape[0]):
        unbiased = m2[c] / (count - 1.0)
        running_mean[c] = keep * np.float64(running_mean[c]) + momentum * mean[c]
        running_var[c] = keep * np.float64(running_var[c]) + momentum * unbiased


@cpu_kernel()
def gradient_constants(
    sum_dy, sum_dy_xmu, sum_xmu, weight, invstd, count, training,
    grad_weight, grad_bias, dy_scale, shift, xmu_scale, center_lo,
):  # fmt: skip
    """Per-channel constants of the input gradient.

    dx = ((dy - shift) - ((x - saved_mean) - center_lo) * xmu_scale) * dy_scale.

    With g = weight * invstd and m = count: dbias = sum(dy),
    dweight = invstd * sum(dy * (x - mean)); in training
    dx = g * (dy - dbias/m - x_hat * dweight/m), in eval dx = g * dy.

    The sums are taken about the saved mean, which the dtype has rounded; in
    training the batch's exact mean is saved + sum(x - saved)/m, and the
    sums and ``center_lo`` are corrected to it, so a float32 channel with
    |mean| >> std keeps sum(dx) = 0 to rounding of the deviations.
    """
    for c in range(sum_dy.shape[0]):
        s = np.float64(invstd[c])
        w = np.float64(weight[c]) if weight.shape[0] > 0 else 1.0
        delta = sum_xmu[c] / count if training else 0.0
        centered = sum_dy_xmu[c] - delta * sum_dy[c]
        grad_bias[c] = sum_dy[c]
        grad_weight[c] = centered * s
        dy_scale[c] = w * s
        center_lo[c] = delta
        if training:
            shift[c] = sum_dy[c] / count
            xmu_scale[c] = centered * s * s / count
        else:
            shift[c] = 0.0
            xmu_scale[c] = 0.0


moments_ncs = KernelPair(_moments_ncs)
moments_rc = KernelPair(_moments_rc)
normalize_ncs = KernelPair(_normalize_ncs)
normalize_rc = KernelPair(_normalize_rc)
gradient_sums_ncs = KernelPair(_gradient_sums_ncs)
gradient_sums_rc = KernelPair(_gradient_sums_rc)
input_gradient_ncs = KernelPair(_input_gradient_ncs)
input_gradient_rc = KernelPair(_input_gradient_rc)

# The fused entry points below run a whole forward or backward pass in one
# dispatch (a Python call costs microseconds, a tiny BatchNorm less). They are
# serial functions that call the parallel or the serial build of each loop.
_moments_ncs_parallel, _moments_ncs_serial = moments_ncs.parallel, moments_ncs.serial
_moments_rc_parallel, _moments_rc_serial = moments_rc.parallel, moments_rc.serial
_normalize_ncs_parallel, _normalize_ncs_serial = normalize_ncs.parallel, normalize_ncs.serial
_normalize_rc_parallel, _normalize_rc_serial = normalize_rc.parallel, normalize_rc.serial
_sums_ncs_parallel, _sums_ncs_serial = gradient_sums_ncs.parallel, gradient_sums_ncs.serial
_sums_rc_parallel, _sums_rc_serial = gradient_sums_rc.parallel, gradient_sums_rc.serial
_input_ncs_parallel, _input_ncs_serial = input_gradient_ncs.parallel, input_gradient_ncs.serial
_input_rc_parallel, _input_rc_serial = input_gradient_rc.parallel, input_gradient_rc.serial


@cpu_kernel()
def _normalize(x, y, channels_last, parallel, rows_per_item, mean, invstd, weight, bias):
    channels = x.shape[1]
    shift_hi = np.empty(channels, dtype=x.dtype)
    shift_lo = np.empty(channels, dtype=x.dtype)
    scale = np.empty(channels, dtype=x.dtype)
    offset = np.empty(channels, dtype=x.dtype)
    channel_constants(mean, invstd, weight, bias, shift_hi, shift_lo, scale, offset)
    if channels_last:
        x2 = x.reshape((x.shape[0], channels))
        y2 = y.reshape((y.shape[0], channels))
        if parallel:
            _normalize_rc_parallel(x2, y2, rows_per_item, shift_hi, shift_lo, scale, offset)
        else:
            _normalize_rc_serial(x2, y2, rows_per_item, shift_hi, shift_lo, scale, offset)
    elif parallel:
        _normalize_ncs_parallel(x, y, shift_hi, shift_lo, scale, offset)
    else:
        _normalize_ncs_serial(x, y, shift_hi, shift_lo, scale, offset)


@cpu_kernel()
def forward_train(
    x, y, weight, bias, running_mean, running_var, save_mean, save_invstd,
    momentum, eps, stop_on_nonfinite, channels_last, parallel, rows_per_item, columns_per_item,
):  # fmt: skip
    """Training forward pass; returns the number of non-finite channels.

    ``x``/``y`` are ``(N, C, S)`` views, ``(R, C, 1)`` when ``channels_last``.
    Empty ``weight``/``bias``/running arrays mean "not given". When a channel
    is not finite and ``stop_on_nonfinite`` is set, only ``save_mean`` and
    ``save_invstd`` are written; otherwise ``y`` is written, and the running
    statistics are updated only if every channel is finite.
    """
    channels = x.shape[1]
    mean = np.empty(channels, dtype=np.float64)
    m2 = np.empty(channels, dtype=np.float64)
    invstd = np.empty(channels, dtype=np.float64)
    if channels_last:
        x2 = x.reshape((x.shape[0], channels))
        count = np.float64(x.shape[0])
        if parallel:
            _moments_rc_parallel(x2, rows_per_item, columns_per_item, mean, m2)
        else:
            _moments_rc_serial(x2, rows_per_item, columns_per_item, mean, m2)
    else:
        count = np.float64(x.shape[0] * x.shape[2])
        if parallel:
            _moments_ncs_parallel(x, rows_per_item, mean, m2)
        else:
            _moments_ncs_serial(x, rows_per_item, mean, m2)
    bad = finish_statistics(mean, m2, count, eps, invstd)
    for c in range(channels):
        save_mean[c] = mean[c]
        save_invstd[c] = invstd[c]
    if bad > 0 and stop_on_nonfinite:
        return bad
    _normalize(x, y, channels_last, parallel, rows_per_item, mean, invstd, weight, bias)
    if running_mean.shape[0] > 0 and bad == 0:
        update_running_statistics(running_mean, running_var, mean, m2, count, momentum)
    return bad


@cpu_kernel()
def forward_eval(
    x, y, weight, bias, running_mean, running_var, save_mean, save_invstd,
    eps, channels_last, parallel, rows_per_item,
):  # fmt: skip
    """Eval forward pass: normalize with the running statistics."""
    channels = x.shape[1]
    mean = np.empty(channels, dtype=np.float64)
    invstd = np.empty(channels, dtype=np.float64)
    running_invstd(running_var, eps, invstd)
    for c in range(channels):
        mean[c] = running_mean[c]
        save_mean[c] = running_mean[c]
        save_invstd[c] = invstd[c]
    _normalize(x, y, channels_last, parallel, rows_per_item, mean, invstd, weight, bias)


@cpu_kernel()
def backward(
    dy, x, dx, weight, save_mean, save_invstd, grad_weight, grad_bias,
    training, channels_last, parallel, rows_per_item, columns_per_item,
):  # fmt: skip
    """Backward pass: fills ``dx``, ``grad_weight`` and ``grad_bias``.

    Views as in :func:`forward_train`. See :func:`gradient_constants`.
    """
    channels = x.shape[1]
    mean = np.empty(channels, dtype=np.float64)
    for c in range(channels):
        mean[c] = save_mean[c]
    sum_dy = np.empty(channels, dtype=np.float64)
    sum_dy_xmu = np.empty(channels, dtype=np.float64)
    sum_xmu = np.empty(channels, dtype=np.float64)
    rows = x.shape[0]
    if channels_last:
        count = np.float64(rows)
        dy2 = dy.reshape((rows, channels))
        x2 = x.reshape((rows, channels))
        if parallel:
            _sums_rc_parallel(
                dy2, x2, mean, rows_per_item, columns_per_item, sum_dy, sum_dy_xmu, sum_xmu
            )
        else:
            _sums_rc_serial(
                dy2, x2, mean, rows_per_item, columns_per_item, sum_dy, sum_dy_xmu, sum_xmu
            )
    else:
        count = np.float64(rows * x.shape[2])
        if parallel:
            _sums_ncs_parallel(dy, x, mean, rows_per_item, sum_dy, sum_dy_xmu, sum_xmu)
        else:
            _sums_ncs_serial(dy, x, mean, rows_per_item, sum_dy, sum_dy_xmu, sum_xmu)
    dy_scale = np.empty(channels, dtype=x.dtype)
    shift = np.empty(channels, dtype=x.dtype)
    xmu_scale = np.empty(channels, dtype=x.dtype)
    center_lo = np.empty(channels, dtype=x.dtype)
    gradient_constants(
        sum_dy, sum_dy_xmu, sum_xmu, weight, save_invstd, count, training,
        grad_weight, grad_bias, dy_scale, shift, xmu_scale, center_lo,
    )  # fmt: skip
    if channels_last:
        dy2 = dy.reshape((rows, channels))
        x2 = x.reshape((rows, channels))
        dx2 = dx.reshape((rows, channels))
        if parallel:
            _input_rc_parallel(
                dy2, x2, dx2, rows_per_item, save_mean, center_lo, dy_scale, shift, xmu_scale
            )
        else:
            _input_rc_serial(
                dy2, x2, dx2, rows_per_item, save_mean, center_lo, dy_scale, shift, xmu_scale
            )
    elif parallel:
        _input_ncs_parallel(dy, x, dx, save_mean, center_lo, dy_scale, shift, xmu_scale)
    else:
        _input_ncs_serial(dy, x, dx, save_mean, center_lo, dy_scale, shift, xmu_scale)
