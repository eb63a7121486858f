"""CPU BatchNorm kernels (``@njit``, parallel) on two canonical layouts.

Every input reaches these kernels as one of two C-contiguous views:

- ``ncs``: shape ``(N, C, S)``, the channel in the middle (NCHW and friends,
  ``S`` the product of the spatial sizes);
- ``rc``: shape ``(R, C)``, the channel last (channels-last, and ``(N, C)``).

Reductions are split into work items whose boundaries depend on the shape
only (``config.CPU_ITEM_ELEMENTS``); each item sums the deviations of its
values from the mean of its first rows (``_core.reductions.SHIFT_SAMPLE_DIVISOR``), and
the items of a channel are merged in a fixed order with Chan's formula. The
results therefore do not depend on the number of threads, and never come
from E[x^2] - E[x]^2. Parallel tasks read several channels' items at once
(:data:`CHANNELS_PER_TASK`), in memory order.

The loops over the data are :class:`KernelPair` builds (parallel, and serial
for tiny inputs); the per-channel arithmetic between them is serial.
:mod:`bnsgd_numba.batch_norm.functional` validates the input and calls them in order.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from bnsgd_numba._core.compile import KernelPair, cpu_kernel, specialized
from bnsgd_numba._core.layouts import NCS, RC, item_rows
from bnsgd_numba._core.reductions import (
    gradient_row_sums,
    merge_chan,
    shift_sample_size,
    shifted_sums,
    sum_values,
)
from bnsgd_numba._core.spans import byte_span, written_meets
from bnsgd_numba._core.streaming import (
    borrow,
    input_gradient_span,
    keep_alive,
    normalize_span,
    store_fence,
    streams,
)
from bnsgd_numba.batch_norm._common import BIAS_ABSENT, RUNNING_ABSENT, WEIGHT_ABSENT

RC_ROW_GROUPS = 8
"""Row groups of a channels-last reduction: its parallel tasks, with the strips.

Each group keeps one float64 partial result per channel, merged in group
order; the groups are whole row blocks, so the results depend on the shape
only, never on the number of threads.
"""

MOMENT_GROUP_ITEMS = 4
"""Work items per row group of a float32 channels-last moment reduction.

A float32 group is one task that sums its rows about a single shift, the
mean of its first rows (SHIFT_SAMPLE_DIVISOR), so it pays one shift pass,
one division per column and no merge. With a group per work item, the
(N, 784) forward pass spent 10-15% of its time on those; four items per
group ran it 1.07-1.19x faster at N = 64..4096 in two paired runs (Zen 4,
2 threads), eight items no faster. A float64 group keeps a shift per work item: its shift is
the item's exact mean, a pass of its own over the item, and over four items
that pass fell out of the cache ((4096, 784) 0.91x, (1024, 4096) 0.89x).
"""

FUSED_BACKWARD_BYTES = 512 * 1024
"""Bytes of ``dy`` and ``x`` a task of the fused NCS backward reads.

When one channel's ``dy`` and ``x`` take at most this, a backward task
takes whole channels: their sums, then their ``dx`` while the data is still
in cache (3 array passes through memory instead of 5). The sums are those of
the unfused path, bit for bit. Channels of up to twice this were fused
before; on a Zen 4 machine (1 MB L2 per core) the unfused passes ran them
faster (``bench_kernel_ab.py --before 1d94ff2 --rounds 21``, paired median
and quartiles): (32, 64, 56, 56) 1.25x (1.11-1.34), (32, 32, 56, 56) 1.16x
(1.10-1.33), (48, 64, 48, 48) 1.12x (1.05-1.30), (24, 128, 56, 56) 0.95x
(0.87-1.17). Unfusing smaller channels measured 0.91-1.07x ((4, 256, 56,
56) to (8, 256, 56, 56)), so they stay fused.
"""

FUSED_ROW_BYTES = 4096
"""Shortest row (i, c), in bytes, of an NCS backward that is fused (a page)."""

SHORT_ROW_BYTES = 256
SHORT_ROW_COLUMNS = 4096
"""An NCS input gradient whose rows (i, c) take at most SHORT_ROW_BYTES runs as RC.

A row of a 4x4 or 8x8 feature map is 16 to 64 values: a loop of its own per
row costs more than its arithmetic. The (N, C, S) arrays are then read as
(N, C * S) rows, each channel's constants repeated along its S columns (the
arithmetic of each element unchanged, so are its bits), when those C * S
columns are at most SHORT_ROW_COLUMNS: the five repeated constants then stay
in cache. Measured on 2 cores against the row-by-row pass: (64,128,4,4)
0.28 -> 0.14 ms, (64,16,8,8) 1.2-1.5x faster; (32,512,7,7) (25,088 columns)
and (16,64,14,14) (784-byte rows) were slower, so they keep it.
"""

PAGE_BYTES = 4096
ALIAS_BYTES = 256
"""The RC passes over rows take four rows at a time unless those rows alias.

Four rows per pass over the columns load each column's constants once for
four values (1.1-1.6x faster), but when a row written and a row read up to
three rows away start within ALIAS_BYTES of each other modulo a page
(PAGE_BYTES), each load waits on an earlier store with the same low address
bits (4K aliasing). Rows a multiple of 4 KB long in arrays from one
allocator (which start at the same offset in their pages) do that. The input
gradient then takes one row at a time (:func:`_rows_alias`); the
normalization, which was slower four at a time only for rows of exactly one
page, takes one for those. Same arithmetic per element either way: same
bits. Measured on 2 cores (AMD EPYC, Zen 3), serial, arrays 16 and 32 bytes
into their pages: the input gradient 1.8-4.1x faster than four rows at a
time at (97..1024, 1024) and (64, 4096) float32 and (128, 512) float64, the
normalization 1.2-1.9x at (97..1024, 1024) float32 and (128, 512) float64.
"""

NARROW_ROW_BYTES = 512
TILE_BYTES = 4096
TILE_MIN_RUNS = 8
"""RC rows of at most NARROW_ROW_BYTES are normalized in runs of TILE_BYTES.

A row of 64 float32 channels is a loop of 8 vectors: its bounds, overlap
tests and tail cost more than its arithmetic. The normalization and the
input gradient of such rows loop instead over runs of whole rows, about
TILE_BYTES long, with each channel's constants tiled along the run (the
same arithmetic per element, so the same bits). Measured on 2 cores (AMD
EPYC, Zen 3), against the row loops in one process, the parallel
normalization of (262144, 64) float32 went from 13.2 ms to 6.8 ms (a
same-size copy: 5.9 ms), of (32768, 32) from 0.19 to 0.12 ms, of (8192, 128)
from 0.15 to 0.12 ms, bit for bit the same. Passes over fewer than TILE_MIN_RUNS
runs keep the row loops: at the seed's (32, 64) tiling the constants made
the whole call 0.3-0.7 us slower.
"""

STREAM_TASK_BYTES = 256 * 1024
"""Bytes of output a task of a streaming pass writes (then fences: see _core.streaming)."""

CHANNELS_PER_TASK = 8
"""NCS channels one parallel task reads, a row block of each in memory order.

Consecutive channels of a row are adjacent in memory: a task reads runs of
CHANNELS_PER_TASK * S values instead of rows S apart. The results do not
depend on it (every item is summed in the same order).
"""


@cpu_kernel()
def channel_constants(mean, invstd, weight, bias, shift, scale, offset):
    """Per-channel constants of y = (x - shift) * scale + offset.

    The outputs have the data's dtype. ``shift`` is the float64 mean rounded
    to that dtype and ``offset`` carries what the rounding dropped
    (``bias - (mean - shift) * scale``), so a float32 channel with
    |mean| >> std keeps its accuracy (x - shift is exact for x near the
    mean), and a constant channel gives exactly ``bias``.
    """
    for c in range(mean.shape[0]):
        shift[c] = mean[c]
        rounding = mean[c] - np.float64(shift[c])
        w = np.float64(weight[c]) if weight.shape[0] > 0 else 1.0
        b = np.float64(bias[c]) if bias.shape[0] > 0 else 0.0
        scale[c] = w * invstd[c]
        offset[c] = b - rounding * (w * invstd[c])


@cpu_kernel()
def _rows_alias(written, read, stride):
    # whether row k of ``written`` and row k + lag of ``read``, 0 < |lag| < 4,
    # start within ALIAS_BYTES of each other modulo a page (rows ``stride``
    # bytes apart): a pass over four rows at a time would then 4K-alias
    offset = np.intp(read.ctypes.data) - np.intp(written.ctypes.data)
    for lag in range(-3, 4):
        distance = (offset + lag * np.intp(stride)) % PAGE_BYTES
        if lag != 0 and (distance < ALIAS_BYTES or distance > PAGE_BYTES - ALIAS_BYTES):
            return True
    return False


@cpu_kernel()
def _tile_rows(rows, channels, itemsize):
    # rows per run of an RC pass over narrow rows (NARROW_ROW_BYTES), else 0;
    # 0 too under TILE_MIN_RUNS runs, where tiling the constants costs more
    # stores than the pass saves
    if channels == 0 or channels * itemsize > NARROW_ROW_BYTES:
        return 0
    per_run = max(1, TILE_BYTES // (channels * itemsize))
    return per_run if rows >= TILE_MIN_RUNS * per_run else 0


@cpu_kernel()
def _tile(values, out):
    # out[k] = values[k % C]: per-channel constants along a run of whole rows
    channels = values.shape[0]
    for start in range(0, out.shape[0], channels):
        row = out[start : start + channels]
        for c in range(channels):
            row[c] = values[c]


@cpu_kernel()
def _stream_task_rows(row_elements, itemsize):
    # rows of row_elements values per task of a streaming pass (STREAM_TASK_BYTES)
    return max(1, STREAM_TASK_BYTES // max(1, row_elements * itemsize))


@cpu_kernel()
def _row_block(block, rows_per_item, rows):
    start = block * rows_per_item
    return start, min(start + rows_per_item, rows)


@cpu_kernel()
def _ncs_task(task, groups, channels, rows_per_item, rows):
    # (row block j, channels c0..c1, rows start..stop) of an NCS parallel task
    j = task // groups
    c0 = (task % groups) * CHANNELS_PER_TASK
    start, stop = _row_block(j, rows_per_item, rows)
    return j, c0, min(c0 + CHANNELS_PER_TASK, channels), start, stop


@cpu_kernel()
def _rc_groups(rows, rows_per_item):
    # (row groups, rows per group) of an RC reduction: at most RC_ROW_GROUPS
    # groups of whole row blocks, a function of the shape only
    row_blocks = (rows + rows_per_item - 1) // rows_per_item
    if row_blocks == 0:
        return 0, rows_per_item
    per_group = (row_blocks + RC_ROW_GROUPS - 1) // RC_ROW_GROUPS
    return (row_blocks + per_group - 1) // per_group, per_group * rows_per_item


@cpu_kernel()
def _moment_groups(rows, rows_per_item, itemsize):
    # (row groups, rows per group, rows per shift) of an RC moment reduction
    # (MOMENT_GROUP_ITEMS)
    if itemsize >= 8:
        groups, rows_per_group = _rc_groups(rows, rows_per_item)
        return groups, rows_per_group, rows_per_item
    groups, rows_per_group = _rc_groups(rows, rows_per_item * MOMENT_GROUP_ITEMS)
    return groups, rows_per_group, rows_per_group


@cpu_kernel()
def _rc_strips(channels, columns_per_item):
    # (strips, columns per strip) of an RC reduction: as few strips of at
    # most 2 * columns_per_item columns as there can be, of equal widths
    # rounded up to whole cache lines (narrow strips read memory slowly)
    strips = max(1, (channels + 2 * columns_per_item - 1) // (2 * columns_per_item))
    width = (channels + strips - 1) // strips
    width = (width + 15) // 16 * 16
    return (channels + width - 1) // width, width


@cpu_kernel()
def _rc_task(task, strips, width, channels, rows_per_group, rows):
    # (row group g, columns c0..c1, rows r0..r1) of an RC parallel task
    g = task // strips
    c0 = (task % strips) * width
    r0, r1 = _row_block(g, rows_per_group, rows)
    return g, c0, min(c0 + width, channels), r0, r1


@cpu_kernel()
def _merge_columns(count, size, mean, m2, part_mean, part_m2):
    # Chan's merge (merge_chan's arithmetic) of (size, part_mean[j],
    # part_m2[j]) into (count, mean[j], m2[j]) for every column j; returns
    # the merged count. The columns share their counts, so the divisions
    # happen once and the loop vectorizes.
    total = count + size
    ratio = size / total
    weight = count * size / total
    for j in range(mean.shape[0]):
        delta = part_mean[j] - mean[j]
        mean[j] = mean[j] + delta * ratio
        m2[j] = m2[j] + part_m2[j] + delta * delta * weight
    return total


@cpu_kernel()
def _merge_into_zeros(mean, m2):
    # _merge_columns(0, size, zeros, zeros, mean, m2) into mean and m2 in
    # place, the same bits without the zeros: with count 0 its ratio is
    # exactly 1 and its weight exactly 0, so the merged mean is 0.0 + mean
    # (-0.0 becomes 0.0) and the merged M2 is (0.0 + M2) + mean**2 * 0.0
    # (NaN where mean**2 overflows, as in the formula)
    for j in range(mean.shape[0]):
        delta = mean[j] - 0.0
        mean[j] = 0.0 + delta * 1.0
        m2[j] = 0.0 + m2[j] + delta * delta * 0.0


@cpu_kernel()
def _item_moments_rc(x, r0, r1, c0, c1, shift, squares, deviations):
    # Mean into ``shift`` and M2 into ``squares`` of each column c0..c1 of
    # rows r0..r1: deviations from the mean of the first rows (see
    # SHIFT_SAMPLE_DIVISOR), four rows at a time into per-column totals
    # (the loop over columns vectorizes without reassociation).
    width = c1 - c0
    sample = shift_sample_size(x.itemsize, r1 - r0)
    for j in range(width):
        shift[j] = 0.0
        squares[j] = 0.0
        deviations[j] = 0.0
    for r in range(r0, r0 + sample):
        row = x[r, c0:c1]
        for j in range(width):
            shift[j] += row[j]
    for j in range(width):
        shift[j] = shift[j] / np.float64(sample)
    quads = r0 + (r1 - r0) // 4 * 4
    for r in range(r0, quads, 4):
        x0, x1, x2, x3 = x[r, c0:c1], x[r + 1, c0:c1], x[r + 2, c0:c1], x[r + 3, c0:c1]
        for j in range(width):
            d0 = x0[j] - shift[j]
            d1 = x1[j] - shift[j]
            d2 = x2[j] - shift[j]
            d3 = x3[j] - shift[j]
            deviations[j] += (d0 + d1) + (d2 + d3)
            squares[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
    for r in range(quads, r1):
        row = x[r, c0:c1]
        for j in range(width):
            d = row[j] - shift[j]
            deviations[j] += d
            squares[j] += d * d
    count = np.float64(r1 - r0)
    for j in range(width):
        d = deviations[j]
        shift[j] = shift[j] + d / count
        squares[j] = max(squares[j] - d * d / count, 0.0)


@cpu_kernel()
def _add_groups(part, c0, c1, total):
    # total[c] = sum over row groups of part[g, c], in group order, for c0 <= c < c1
    out = total[c0:c1]
    for j in range(c1 - c0):
        out[j] = 0.0
    for g in range(part.shape[0]):
        group = part[g, c0:c1]
        for j in range(c1 - c0):
            out[j] += group[j]


def _moments_ncs(x, rows_per_item, mean, m2):
    # Per-channel mean and M2 of x (N, C, S) into float64 ``mean``/``m2``.
    # Work item (c, j): rows j*rows_per_item... of channel c, summed about the
    # mean of its first rows (see SHIFT_SAMPLE_DIVISOR): mean = shift + S1/m,
    # M2 = S2 - S1^2/m. Items merge per channel in a fixed order (Chan).
    n, channels, s = x.shape
    items_per_channel = (n + rows_per_item - 1) // rows_per_item
    groups = (channels + CHANNELS_PER_TASK - 1) // CHANNELS_PER_TASK
    part_mean = np.empty((channels, items_per_channel), dtype=np.float64)
    part_m2 = np.empty((channels, items_per_channel), dtype=np.float64)
    for task in prange(items_per_channel * groups):
        j, c0, c1, start, stop = _ncs_task(task, groups, channels, rows_per_item, n)
        sample = shift_sample_size(x.itemsize, stop - start)
        shift = np.empty(c1 - c0, dtype=np.float64)
        deviations = np.zeros(c1 - c0, dtype=np.float64)
        squares = np.zeros(c1 - c0, dtype=np.float64)
        for c in range(c0, c1):
            total = 0.0
            for i in range(start, start + sample):
                total += sum_values(x[i, c])
            shift[c - c0] = total / np.float64(sample * s)
        for i in range(start, stop):
            for c in range(c0, c1):
                row_deviation, row_squares = shifted_sums(x[i, c], shift[c - c0])
                deviations[c - c0] += row_deviation
                squares[c - c0] += row_squares
        count = np.float64((stop - start) * s)
        for c in range(c0, c1):
            d = deviations[c - c0]
            part_mean[c, j] = shift[c - c0] + d / count
            part_m2[c, j] = max(squares[c - c0] - d * d / count, 0.0)
    # the items merge per channel on the calling thread: one merge per
    # CPU_ITEM_ELEMENTS values, less than waking the pool again costs
    for c in range(channels):
        count, running_mean, running_m2 = 0.0, 0.0, 0.0
        for j in range(items_per_channel):
            start, stop = _row_block(j, rows_per_item, n)
            count, running_mean, running_m2 = merge_chan(
                count, running_mean, running_m2,
                np.float64((stop - start) * s), part_mean[c, j], part_m2[c, j],
            )  # fmt: skip
        mean[c] = running_mean
        m2[c] = running_m2


def _moments_rc(x, rows_per_item, columns_per_item, mean, m2):
    # Per-channel mean and M2 of x (R, C) into float64 ``mean``/``m2``. A
    # task takes one row group (_moment_groups) of a strip of columns: it
    # sums each block of rows about its own shift (_item_moments_rc; one
    # block per float32 group) and Chan-merges the blocks in order; the
    # groups then merge in order. A column's result does not depend on the
    # strips, and the partial results stay small (a large temporary costs
    # page faults on every call).
    rows, channels = x.shape
    groups, rows_per_group, rows_per_shift = _moment_groups(rows, rows_per_item, x.itemsize)
    strips, width = _rc_strips(channels, columns_per_item)
    if rows > 0 and groups * strips == 1 and rows <= rows_per_shift:
        # one block (the seed's (32, 784)): its moments, merged into zeroed
        # totals in place, without the partial arrays
        deviations = np.empty(channels, dtype=np.float64)
        _item_moments_rc(x, 0, rows, 0, channels, mean, m2, deviations)
        _merge_into_zeros(mean, m2)
        return
    part = np.empty((2, groups, channels), dtype=np.float64)
    for task in prange(groups * strips):
        g, c0, c1, start, stop = _rc_task(task, strips, width, channels, rows_per_group, rows)
        work = np.empty((3, c1 - c0), dtype=np.float64)
        group_mean = part[0, g, c0:c1]
        group_m2 = part[1, g, c0:c1]
        first = min(start + rows_per_shift, stop)
        _item_moments_rc(x, start, first, c0, c1, group_mean, group_m2, work[2])
        count = np.float64(first - start)
        for r0 in range(first, stop, rows_per_shift):
            r1 = min(r0 + rows_per_shift, stop)
            _item_moments_rc(x, r0, r1, c0, c1, work[0], work[1], work[2])
            count = _merge_columns(
                count, np.float64(r1 - r0), group_mean, group_m2, work[0], work[1]
            )
    # the groups merge in order on the calling thread: a few vector operations
    # per group, less than waking the pool for another parallel region costs
    mean[:] = 0.0
    m2[:] = 0.0
    count = 0.0
    for g in range(groups):
        r0, r1 = _row_block(g, rows_per_group, rows)
        count = _merge_columns(count, np.float64(r1 - r0), mean, m2, part[0, g], part[1, g])


def _normalize_ncs(x, y, shift, scale, offset):
    # a task per row (i, c); an output too large for the cache (streams):
    # a task per STREAM_TASK_BYTES of rows, each row's whole lines streamed
    n, channels, s = x.shape
    if streams(y):
        x_flat = borrow(x.reshape(n * channels * s))
        y_flat = borrow(y.reshape(n * channels * s))
        per_task = _stream_task_rows(s, y.itemsize)
        for task in prange((n * channels + per_task - 1) // per_task):
            for item in range(task * per_task, min((task + 1) * per_task, n * channels)):
                c = item % channels
                normalize_span(x_flat, y_flat, item * s, s, shift[c], scale[c], offset[c])
            store_fence()
        return
    for item in prange(n * channels):
        i = item // channels
        c = item % channels
        center, a, b = shift[c], scale[c], offset[c]
        source = x[i, c]
        target = y[i, c]
        for k in range(s):
            target[k] = (source[k] - center) * a + b


def _normalize_rc(x, y, rows_per_item, shift, scale, offset):
    # four rows at a time: each column's constants are loaded once for four
    # values (the loads, not the arithmetic, bound this loop; same bits),
    # one at a time for rows of one page (see ALIAS_BYTES); narrow rows in
    # runs of whole rows (see NARROW_ROW_BYTES)
    rows, channels = x.shape
    blocks = (rows + rows_per_item - 1) // rows_per_item
    per_run = _tile_rows(rows, channels, x.itemsize)
    if streams(y):
        # spans of a row, or of a run of narrow rows, their constants tiled
        # along the span, the whole cache lines streamed (_core.streaming)
        span = max(1, per_run) * channels
        constants = np.empty((3, span), dtype=x.dtype)
        _tile(shift, constants[0])
        _tile(scale, constants[1])
        _tile(offset, constants[2])
        center, a, b = borrow(constants[0]), borrow(constants[1]), borrow(constants[2])
        x_flat = borrow(x.reshape(rows * channels))
        y_flat = borrow(y.reshape(rows * channels))
        for block in prange(blocks):
            r0, r1 = _row_block(block, rows_per_item, rows)
            for start in range(r0 * channels, r1 * channels, span):
                normalize_span(
                    x_flat, y_flat, start, min(span, r1 * channels - start), center, a, b
                )
            store_fence()
        keep_alive(constants)
        return
    if per_run > 0:
        tiled = np.empty((3, per_run * channels), dtype=x.dtype)
        _tile(shift, tiled[0])
        _tile(scale, tiled[1])
        _tile(offset, tiled[2])
        center, a, b = tiled[0], tiled[1], tiled[2]
        flat_x = x.reshape(rows * channels)
        flat_y = y.reshape(rows * channels)
        for block in prange(blocks):
            r0, r1 = _row_block(block, rows_per_item, rows)
            for start in range(r0 * channels, r1 * channels, per_run * channels):
                source = flat_x[start : min(start + per_run * channels, r1 * channels)]
                target = flat_y[start : start + source.shape[0]]
                for k in range(source.shape[0]):
                    target[k] = (source[k] - center[k]) * a[k] + b[k]
    else:
        grouped = channels * x.itemsize != PAGE_BYTES
        for block in prange(blocks):
            r0, r1 = _row_block(block, rows_per_item, rows)
            quads = r0 + (r1 - r0) // 4 * 4 if grouped else r0
            for r in range(r0, quads, 4):
                x0, x1, x2, x3 = x[r], x[r + 1], x[r + 2], x[r + 3]
                y0, y1, y2, y3 = y[r], y[r + 1], y[r + 2], y[r + 3]
                for c in range(channels):
                    center_c, a_c, b_c = shift[c], scale[c], offset[c]
                    y0[c] = (x0[c] - center_c) * a_c + b_c
                    y1[c] = (x1[c] - center_c) * a_c + b_c
                    y2[c] = (x2[c] - center_c) * a_c + b_c
                    y3[c] = (x3[c] - center_c) * a_c + b_c
            for r in range(quads, r1):
                source = x[r]
                target = y[r]
                for c in range(channels):
                    target[c] = (source[c] - shift[c]) * scale[c] + offset[c]


@cpu_kernel()
def _add_gradient_rows(dy, x, mean, start, stop, c0, c1, part_dy, part_dy_xmu, part_xmu):
    # part_*[c - c0] += the sums of row (i, c) for rows start..stop of
    # channels c0..c1, in memory order
    for i in range(start, stop):
        for c in range(c0, c1):
            row_dy, row_dy_xmu, row_xmu = gradient_row_sums(dy[i, c], x[i, c], mean[c])
            part_dy[c - c0] += row_dy
            part_dy_xmu[c - c0] += row_dy_xmu
            part_xmu[c - c0] += row_xmu


@cpu_kernel()
def _add_gradient_quads(dy, x, mean, r0, r1, c0, c1, totals_dy, totals_dy_xmu, totals_xmu):
    # totals_*[c - c0] += the sums of column c of rows r0..r1, four rows at
    # a time (the loop over columns vectorizes without reassociation)
    mu = mean[c0:c1]
    quads = r0 + (r1 - r0) // 4 * 4
    for r in range(r0, quads, 4):
        g0, g1, g2, g3 = dy[r, c0:c1], dy[r + 1, c0:c1], dy[r + 2, c0:c1], dy[r + 3, c0:c1]
        x0, x1, x2, x3 = x[r, c0:c1], x[r + 1, c0:c1], x[r + 2, c0:c1], x[r + 3, c0:c1]
        for j in range(c1 - c0):
            e0, e1 = np.float64(g0[j]), np.float64(g1[j])
            e2, e3 = np.float64(g2[j]), np.float64(g3[j])
            d0, d1, d2, d3 = x0[j] - mu[j], x1[j] - mu[j], x2[j] - mu[j], x3[j] - mu[j]
            totals_dy[j] += (e0 + e1) + (e2 + e3)
            totals_dy_xmu[j] += (e0 * d0 + e1 * d1) + (e2 * d2 + e3 * d3)
            totals_xmu[j] += (d0 + d1) + (d2 + d3)
    for r in range(quads, r1):
        grad = dy[r, c0:c1]
        v = x[r, c0:c1]
        for j in range(c1 - c0):
            gj = np.float64(grad[j])
            xmu = v[j] - mu[j]
            totals_dy[j] += gj
            totals_dy_xmu[j] += gj * xmu
            totals_xmu[j] += xmu


def _gradient_sums_ncs(dy, x, mean, rows_per_item, sum_dy, sum_dy_xmu, sum_xmu):
    # Items and task order of _moments_ncs; the sums are about ``mean``.
    n, channels, s = x.shape
    items_per_channel = (n + rows_per_item - 1) // rows_per_item
    groups = (channels + CHANNELS_PER_TASK - 1) // CHANNELS_PER_TASK
    part = np.empty((3, items_per_channel, channels), dtype=np.float64)
    for task in prange(items_per_channel * groups):
        j, c0, c1, start, stop = _ncs_task(task, groups, channels, rows_per_item, n)
        # the task's own totals, stored once: tasks of neighbouring channels
        # adding into ``part`` row by row would share its cache lines
        totals = np.zeros((3, c1 - c0), dtype=np.float64)
        _add_gradient_rows(dy, x, mean, start, stop, c0, c1, totals[0], totals[1], totals[2])
        part[:, j, c0:c1] = totals
    # the items add up per channel on the calling thread (see _moments_ncs)
    for c in range(channels):
        total_dy = 0.0
        total_dy_xmu = 0.0
        total_xmu = 0.0
        for j in range(items_per_channel):
            total_dy += part[0, j, c]
            total_dy_xmu += part[1, j, c]
            total_xmu += part[2, j, c]
        sum_dy[c] = total_dy
        sum_dy_xmu[c] = total_dy_xmu
        sum_xmu[c] = total_xmu


def _gradient_sums_rc(
    dy, x, mean, rows_per_item, columns_per_item, sum_dy, sum_dy_xmu, sum_xmu
):  # fmt: skip
    # Tasks of _moments_rc: a task sums the rows of its row group into
    # per-column totals (_add_gradient_quads); the groups are added in order.
    rows, channels = x.shape
    groups, rows_per_group = _rc_groups(rows, rows_per_item)
    strips, width = _rc_strips(channels, columns_per_item)
    if groups * strips == 1:
        # one task: its totals are the sums (adding one group to zero gives
        # the same bits: totals that start at 0.0 are never -0.0)
        for c in range(channels):
            sum_dy[c] = 0.0
            sum_dy_xmu[c] = 0.0
            sum_xmu[c] = 0.0
        _add_gradient_quads(dy, x, mean, 0, rows, 0, channels, sum_dy, sum_dy_xmu, sum_xmu)
        return
    part = np.zeros((3, groups, channels), dtype=np.float64)
    for task in prange(groups * strips):
        g, c0, c1, r0, r1 = _rc_task(task, strips, width, channels, rows_per_group, rows)
        _add_gradient_quads(
            dy, x, mean, r0, r1, c0, c1, part[0, g, c0:c1], part[1, g, c0:c1], part[2, g, c0:c1]
        )
    # the groups add up in order on the calling thread (see _moments_rc)
    _add_groups(part[0], 0, channels, sum_dy)
    _add_groups(part[1], 0, channels, sum_dy_xmu)
    _add_groups(part[2], 0, channels, sum_xmu)


@cpu_kernel()
def _input_gradient_row(g, v, out, hi, lo, a, k1, k3):
    # dx = ((dy - shift) - ((x - center_hi) - center_lo) * xmu_scale) * dy_scale
    for k in range(v.shape[0]):
        out[k] = ((g[k] - k1) - ((v[k] - hi) - lo) * k3) * a


def _input_gradient_ncs(dy, x, dx, center_hi, center_lo, dy_scale, shift, xmu_scale):
    # a task per row (i, c); a dx too large for the cache: streamed, as in
    # _normalize_ncs (the same bits)
    n, channels, s = x.shape
    if streams(dx):
        dy_flat = borrow(dy.reshape(n * channels * s))
        x_flat = borrow(x.reshape(n * channels * s))
        dx_flat = borrow(dx.reshape(n * channels * s))
        per_task = _stream_task_rows(s, dx.itemsize)
        for task in prange((n * channels + per_task - 1) // per_task):
            for item in range(task * per_task, min((task + 1) * per_task, n * channels)):
                c = item % channels
                input_gradient_span(
                    dy_flat, x_flat, dx_flat, item * s, s, center_hi[c], center_lo[c],
                    shift[c], xmu_scale[c], dy_scale[c],
                )  # fmt: skip
            store_fence()
        return
    for item in prange(n * channels):
        i = item // channels
        c = item % channels
        _input_gradient_row(
            dy[i, c], x[i, c], dx[i, c], center_hi[c], center_lo[c], dy_scale[c], shift[c],
            xmu_scale[c],
        )  # fmt: skip


def _input_gradient_rc(
    dy, x, dx, rows_per_item, center_hi, center_lo, dy_scale, shift, xmu_scale
):  # fmt: skip
    # as _normalize_rc (same bits): narrow rows in runs of whole rows, other
    # rows four at a time unless the rows of dx alias those of dy or x. Plain
    # stores: streaming ran (262144, 64) 0.95-0.97x and (8200, 1024)
    # 0.92-0.97x as fast (paired rounds, the same dx) on a Zen 4 machine.
    rows, channels = x.shape
    blocks = (rows + rows_per_item - 1) // rows_per_item
    per_run = _tile_rows(rows, channels, x.itemsize)
    if per_run > 0:
        tiled = np.empty((5, per_run * channels), dtype=x.dtype)
        _tile(center_hi, tiled[0])
        _tile(center_lo, tiled[1])
        _tile(shift, tiled[2])
        _tile(xmu_scale, tiled[3])
        _tile(dy_scale, tiled[4])
        hi, lo, k1, k3, a = tiled[0], tiled[1], tiled[2], tiled[3], tiled[4]
        flat_dy = dy.reshape(rows * channels)
        flat_x = x.reshape(rows * channels)
        flat_dx = dx.reshape(rows * channels)
        for block in prange(blocks):
            r0, r1 = _row_block(block, rows_per_item, rows)
            for start in range(r0 * channels, r1 * channels, per_run * channels):
                v = flat_x[start : min(start + per_run * channels, r1 * channels)]
                g = flat_dy[start : start + v.shape[0]]
                out = flat_dx[start : start + v.shape[0]]
                for k in range(v.shape[0]):
                    out[k] = ((g[k] - k1[k]) - ((v[k] - hi[k]) - lo[k]) * k3[k]) * a[k]
    else:
        stride = channels * x.itemsize
        grouped = not (_rows_alias(dx, dy, stride) or _rows_alias(dx, x, stride))
        for block in prange(blocks):
            r0, r1 = _row_block(block, rows_per_item, rows)
            quads = r0 + (r1 - r0) // 4 * 4 if grouped else r0
            for r in range(r0, quads, 4):
                g0, g1, g2, g3 = dy[r], dy[r + 1], dy[r + 2], dy[r + 3]
                v0, v1, v2, v3 = x[r], x[r + 1], x[r + 2], x[r + 3]
                o0, o1, o2, o3 = dx[r], dx[r + 1], dx[r + 2], dx[r + 3]
                for c in range(channels):
                    h, m, s1, s3 = center_hi[c], center_lo[c], shift[c], xmu_scale[c]
                    scale = dy_scale[c]
                    o0[c] = ((g0[c] - s1) - ((v0[c] - h) - m) * s3) * scale
                    o1[c] = ((g1[c] - s1) - ((v1[c] - h) - m) * s3) * scale
                    o2[c] = ((g2[c] - s1) - ((v2[c] - h) - m) * s3) * scale
                    o3[c] = ((g3[c] - s1) - ((v3[c] - h) - m) * s3) * scale
            for r in range(quads, r1):
                g = dy[r]
                v = x[r]
                out = dx[r]
                for c in range(channels):
                    xmu = (v[c] - center_hi[c]) - center_lo[c]
                    out[c] = ((g[c] - shift[c]) - xmu * xmu_scale[c]) * dy_scale[c]


@cpu_kernel()
def _short_rows(channels, s, itemsize):
    # whether an NCS input gradient runs as RC (SHORT_ROW_BYTES, SHORT_ROW_COLUMNS)
    return s * itemsize <= SHORT_ROW_BYTES and channels * s <= SHORT_ROW_COLUMNS


@cpu_kernel()
def _repeat_columns(values, s, out):
    # out[c * s + k] = values[c]: a per-channel constant for each (c, k) column
    for c in range(values.shape[0]):
        column = out[c * s : (c + 1) * s]
        value = values[c]
        for k in range(s):
            column[k] = value


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
def running_update(running_mean, running_var, mean, m2, count, momentum, updated, flags):
    """The running update in the running statistics' dtype; returns its non-finite channels.

    ``updated`` (2, C) receives (1 - momentum) * running + momentum * batch
    (unbiased variance), rounded to the dtype, where a float32 value can
    overflow although the float64 statistics are finite; ``flags[c]`` is
    set to 1 where channel c's new mean or variance is not finite, else 0.
    """
    keep = 1.0 - momentum
    bad = 0
    for c in range(mean.shape[0]):
        unbiased = m2[c] / (count - 1.0)
        updated[0, c] = keep * np.float64(running_mean[c]) + momentum * mean[c]
        updated[1, c] = keep * np.float64(running_var[c]) + momentum * unbiased
        finite = math.isfinite(updated[0, c]) and math.isfinite(updated[1, c])
        flags[c] = 0 if finite else 1
        bad += 0 if finite else 1
    return bad


@cpu_kernel()
def _store_update(updated, running_mean, running_var):
    # element by element: a slice assignment from an array compiles numba's
    # shape-mismatch error, string formatting and all (seconds per build)
    for c in range(running_mean.shape[0]):
        running_mean[c] = updated[0, c]
        running_var[c] = updated[1, c]


@cpu_kernel()
def update_running_statistics(running_mean, running_var, mean, m2, count, momentum):
    """running = (1 - momentum) * running + momentum * batch (unbiased variance).

    Writes nothing, and returns the number of channels, when a new value
    would not be finite in the dtype (see :func:`running_update`).
    """
    channels = mean.shape[0]
    updated = np.empty((2, channels), dtype=running_mean.dtype)
    flags = np.empty(channels, dtype=np.uint8)
    bad = running_update(running_mean, running_var, mean, m2, count, momentum, updated, flags)
    if bad == 0:
        _store_update(updated, running_mean, running_var)
    return bad


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


@cpu_kernel()
def _fused_channels(n, channels, s, itemsize):
    # Channels per task of _backward_fused_ncs for this shape, 0 to not fuse.
    # Rows under a page (an 8x8 feature map: 256 bytes every C * 256) are
    # not fused: a task of one channel would read a few lines of every page,
    # which the hardware prefetcher and the TLB serve badly (2.6x slower at
    # (1600, 16, 8, 8)); the unfused passes read runs of CHANNELS_PER_TASK rows.
    per_channel = 2 * n * s * itemsize
    if per_channel == 0 or per_channel > FUSED_BACKWARD_BYTES or s * itemsize < FUSED_ROW_BYTES:
        return 0
    return max(1, min(FUSED_BACKWARD_BYTES // per_channel, channels // 8))


def _backward_fused_ncs(
    dy, x, dx, save_mean, mean, rows_per_item, channels_per_task, weight, save_invstd, count,
    training, sums, constants, grad_weight, grad_bias,
):  # fmt: skip
    # The backward pass, a task per group of channels: their sums (the items
    # and order of _gradient_sums_ncs, so the same bits), their constants,
    # then their dx while their dy and x are still in cache.
    n, channels, s = x.shape
    items = (n + rows_per_item - 1) // rows_per_item
    for task in prange((channels + channels_per_task - 1) // channels_per_task):
        c0 = task * channels_per_task
        c1 = min(c0 + channels_per_task, channels)
        part = np.empty((3, c1 - c0), dtype=np.float64)
        totals = sums[1:, c0:c1]
        totals[:] = 0.0
        for j in range(items):
            start, stop = _row_block(j, rows_per_item, n)
            part[:] = 0.0
            _add_gradient_rows(dy, x, mean, start, stop, c0, c1, part[0], part[1], part[2])
            for k in range(3):
                for c in range(c1 - c0):
                    totals[k, c] += part[k, c]
        w = weight[c0:c1] if weight.shape[0] > 0 else weight
        gradient_constants(
            totals[0], totals[1], totals[2], w, save_invstd[c0:c1], count, training,
            grad_weight[c0:c1], grad_bias[c0:c1], constants[0, c0:c1], constants[1, c0:c1],
            constants[2, c0:c1], constants[3, c0:c1],
        )  # fmt: skip
        for i in range(n):
            for c in range(c0, c1):
                _input_gradient_row(
                    dy[i, c], x[i, c], dx[i, c], save_mean[c], constants[3, c], constants[0, c],
                    constants[1, c], constants[2, c],
                )  # fmt: skip


_item_rows = cpu_kernel()(item_rows)
moments_ncs = KernelPair(_moments_ncs)
moments_rc = KernelPair(_moments_rc)
normalize_ncs = KernelPair(_normalize_ncs)
normalize_rc = KernelPair(_normalize_rc)
gradient_sums_ncs = KernelPair(_gradient_sums_ncs)
gradient_sums_rc = KernelPair(_gradient_sums_rc)
input_gradient_ncs = KernelPair(_input_gradient_ncs)
input_gradient_rc = KernelPair(_input_gradient_rc)
backward_fused_ncs = KernelPair(_backward_fused_ncs)

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
_fused_ncs_parallel, _fused_ncs_serial = backward_fused_ncs.parallel, backward_fused_ncs.serial


CHANNELS_LAST = False
"""The layout a build of the fused passes below handles (``rc`` when True).

A global, not an argument: :func:`~bnsgd_numba._core.compile.specialized`
fixes it per build, and numba then compiles only that layout's loops (half
the compilation of a first call).
"""


def _normalize(x, y, parallel, rows_per_item, mean, invstd, weight, bias):
    channels = x.shape[1]
    constants = np.empty((3, channels), dtype=x.dtype)
    shift, scale, offset = constants[0], constants[1], constants[2]
    channel_constants(mean, invstd, weight, bias, shift, scale, offset)
    if CHANNELS_LAST:
        x2 = x.reshape((x.shape[0], channels))
        y2 = y.reshape((y.shape[0], channels))
        if parallel:
            _normalize_rc_parallel(x2, y2, rows_per_item, shift, scale, offset)
        else:
            _normalize_rc_serial(x2, y2, rows_per_item, shift, scale, offset)
    elif parallel:
        _normalize_ncs_parallel(x, y, shift, scale, offset)
    else:
        _normalize_ncs_serial(x, y, shift, scale, offset)


@cpu_kernel()
def _writes_meet(written, read, first, second, third, fourth, fifth, sixth):
    # whether one of the first ``written`` of the six arrays meets another
    # of them (written_meets: exact for contiguous arrays)
    spans = np.empty((6, 2), dtype=np.intp)
    spans[0, 0], spans[0, 1] = byte_span(first)
    spans[1, 0], spans[1, 1] = byte_span(second)
    spans[2, 0], spans[2, 1] = byte_span(third)
    spans[3, 0], spans[3, 1] = byte_span(fourth)
    spans[4, 0], spans[4, 1] = byte_span(fifth)
    spans[5, 0], spans[5, 1] = byte_span(sixth)
    return written_meets(spans[:written], spans[written : written + read])


def forward_train(
    x, y, weight, bias, running_mean, running_var, save_mean, save_invstd,
    momentum, eps, stop_on_nonfinite, parallel, item_elements, columns_per_item, check_overlap,
):  # fmt: skip
    """Training forward pass; returns the number of non-finite channels.

    ``x``/``y`` are ``(N, C, S)`` views, ``(R, C, 1)`` in the ``rc`` build;
    work items have about ``item_elements`` values (:func:`item_rows`).
    Empty ``weight``/``bias``/running arrays mean "not given". With running
    statistics, a channel is non-finite when its running update is not
    finite in their dtype (:func:`running_update`; the update of non-finite
    batch statistics is not finite either). When a channel is not finite and ``stop_on_nonfinite`` is
    set, only ``save_mean`` and ``save_invstd`` are written; otherwise ``y``
    is written, and the running statistics are updated only if every
    channel is finite. With ``check_overlap``, returns -1 without writing
    anything when ``y`` or a running statistic may meet another array
    (:func:`~bnsgd_numba._core.spans.written_meets`).
    """
    if check_overlap and _writes_meet(3, 3, y, running_mean, running_var, x, weight, bias):
        return -1
    channels = x.shape[1]
    rows_per_item = _item_rows(channels, x.shape[2], CHANNELS_LAST, item_elements, columns_per_item)
    statistics = np.empty((3, channels), dtype=np.float64)
    mean, m2, invstd = statistics[0], statistics[1], statistics[2]
    if CHANNELS_LAST:
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
    tracked = running_mean.shape[0] > 0
    updated = np.empty((2, channels if tracked else 0), dtype=running_mean.dtype)
    if tracked:
        # non-finite statistics make a non-finite update (0 * inf is NaN too)
        flags = np.empty(channels, dtype=np.uint8)
        bad = running_update(running_mean, running_var, mean, m2, count, momentum, updated, flags)
    if bad > 0 and stop_on_nonfinite:
        return bad
    _normalize(x, y, parallel, rows_per_item, mean, invstd, weight, bias)
    if tracked and bad == 0:
        _store_update(updated, running_mean, running_var)
    return bad


def forward_eval(
    x, y, weight, bias, running_mean, running_var, save_mean, save_invstd,
    eps, parallel, item_elements, columns_per_item, check_overlap,
):  # fmt: skip
    """Eval forward pass: normalize with the running statistics.

    Returns 0, or -1 without writing anything when ``check_overlap`` is set
    and ``y`` may meet another array.
    """
    if check_overlap and _writes_meet(1, 5, y, x, weight, bias, running_mean, running_var):
        return -1
    channels = x.shape[1]
    rows_per_item = _item_rows(channels, x.shape[2], CHANNELS_LAST, item_elements, columns_per_item)
    statistics = np.empty((2, channels), dtype=np.float64)
    mean, invstd = statistics[0], statistics[1]
    running_invstd(running_var, eps, invstd)
    for c in range(channels):
        mean[c] = running_mean[c]
        save_mean[c] = running_mean[c]
        save_invstd[c] = invstd[c]
    _normalize(x, y, parallel, rows_per_item, mean, invstd, weight, bias)
    return 0


def backward(
    dy, x, dx, weight, save_mean, save_invstd, grad_weight, grad_bias,
    training, parallel, item_elements, columns_per_item, check_overlap,
):  # fmt: skip
    """Backward pass: fills ``dx``, ``grad_weight`` and ``grad_bias``; returns 0.

    Views and work items as in :func:`forward_train`. See
    :func:`gradient_constants`. With ``check_overlap``, returns -1 without
    writing anything when ``dx`` may meet another array.
    """
    if check_overlap and _writes_meet(1, 5, dx, dy, x, weight, save_mean, save_invstd):
        return -1
    channels = x.shape[1]
    rows_per_item = _item_rows(channels, x.shape[2], CHANNELS_LAST, item_elements, columns_per_item)
    sums = np.empty((4, channels), dtype=np.float64)
    mean, sum_dy, sum_dy_xmu, sum_xmu = sums[0], sums[1], sums[2], sums[3]
    for c in range(channels):
        mean[c] = save_mean[c]
    rows = x.shape[0]
    fused = 0 if CHANNELS_LAST else _fused_channels(rows, channels, x.shape[2], x.itemsize)
    if fused > 0:
        constants = np.empty((4, channels), dtype=x.dtype)
        count = np.float64(rows * x.shape[2])
        if parallel:
            _fused_ncs_parallel(
                dy, x, dx, save_mean, mean, rows_per_item, fused, weight, save_invstd, count,
                training, sums, constants, grad_weight, grad_bias,
            )  # fmt: skip
        else:
            _fused_ncs_serial(
                dy, x, dx, save_mean, mean, rows_per_item, fused, weight, save_invstd, count,
                training, sums, constants, grad_weight, grad_bias,
            )  # fmt: skip
        return 0
    if CHANNELS_LAST:
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
    constants = np.empty((4, channels), dtype=x.dtype)
    dy_scale, shift, xmu_scale, center_lo = constants[0], constants[1], constants[2], constants[3]
    gradient_constants(
        sum_dy, sum_dy_xmu, sum_xmu, weight, save_invstd, count, training,
        grad_weight, grad_bias, dy_scale, shift, xmu_scale, center_lo,
    )  # fmt: skip
    if CHANNELS_LAST:
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
    elif _short_rows(channels, x.shape[2], x.itemsize):
        # short rows (i, c): each channel's constants repeated along its
        # positions, and the rows of the RC pass, whose loops are long;
        # the arithmetic of every element is the same, so are its bits
        s = x.shape[2]
        columns = np.empty((5, channels * s), dtype=x.dtype)
        _repeat_columns(save_mean, s, columns[0])
        _repeat_columns(center_lo, s, columns[1])
        _repeat_columns(dy_scale, s, columns[2])
        _repeat_columns(shift, s, columns[3])
        _repeat_columns(xmu_scale, s, columns[4])
        dy2 = dy.reshape((rows, channels * s))
        x2 = x.reshape((rows, channels * s))
        dx2 = dx.reshape((rows, channels * s))
        rows_rc = _item_rows(channels * s, 1, True, item_elements, columns_per_item)
        if parallel:
            _input_rc_parallel(
                dy2, x2, dx2, rows_rc, columns[0], columns[1], columns[2], columns[3], columns[4]
            )
        else:
            _input_rc_serial(
                dy2, x2, dx2, rows_rc, columns[0], columns[1], columns[2], columns[3], columns[4]
            )
    elif parallel:
        _input_ncs_parallel(dy, x, dx, save_mean, center_lo, dy_scale, shift, xmu_scale)
    else:
        _input_ncs_serial(dy, x, dx, save_mean, center_lo, dy_scale, shift, xmu_scale)
    return 0


NOT_COMMON = -2
"""What :func:`forward_entry` and :func:`backward_entry` return, having
written nothing, when a shape is not that of a common call."""


@cpu_kernel()
def _kernel_shape(shape, axis):
    # (N, C, S) of the C-contiguous kernel view of an array of ``shape`` with
    # its channels on ``axis`` (0 <= axis < len(shape)): (R, C, 1) when last
    rows = 1
    inner = 1
    for k in range(len(shape)):
        if k < axis:
            rows *= shape[k]
        elif k > axis:
            inner *= shape[k]
    return rows, shape[axis], inner


@cpu_kernel()
def _vector_fits(vector, given, channels):
    # a per-channel vector of the call: ``channels`` long when given, the
    # empty stand-in otherwise
    return vector.shape[0] == (channels if given else 0)


def forward_entry(
    x, y, weight, bias, running_mean, running_var, save_mean, save_invstd, absent,
    training, momentum, eps, stop_on_nonfinite, axis, parallel, item_elements,
    columns_per_item,
):  # fmt: skip
    """A whole forward call of the fast lane; returns a status.

    ``x`` and ``y`` are the caller's C-contiguous arrays, of any number of
    dimensions, the channels on ``axis`` (-ndim <= axis < ndim). Their
    kernel views and the call of :func:`forward_train` or
    :func:`forward_eval` (with the memory test) happen here, so that a call
    costs one dispatch. The caller has checked every type, dtype, flag and
    scalar; the shapes are checked here. ``absent`` holds the bits of the
    vectors not given (``_common.WEIGHT_ABSENT``, ``BIAS_ABSENT``,
    ``RUNNING_ABSENT``; empty arrays stand in for them). The status is what
    the pass returned, or :data:`NOT_COMMON` with nothing written when a
    shape is not that of a common call. (The caller allocates ``save_mean`` and ``save_invstd``:
    arrays made here would come back with a copy of their dtype, which the
    fast lane's ``dtype is`` tests would not recognize.)
    """
    ndim = x.ndim
    if ndim < 2 or not -ndim <= axis < ndim or y.shape != x.shape:
        return NOT_COMMON
    axis = axis % ndim
    if CHANNELS_LAST != (axis == ndim - 1):
        return NOT_COMMON
    rows, channels, inner = _kernel_shape(x.shape, axis)
    tracked = (absent & RUNNING_ABSENT) == 0
    if (
        rows * inner == 0
        or channels == 0
        or (training and rows * inner < 2)
        or not _vector_fits(weight, (absent & WEIGHT_ABSENT) == 0, channels)
        or not _vector_fits(bias, (absent & BIAS_ABSENT) == 0, channels)
        or not _vector_fits(running_mean, tracked, channels)
        or not _vector_fits(running_var, tracked, channels)
        or not _vector_fits(save_mean, True, channels)
        or not _vector_fits(save_invstd, True, channels)
    ):
        return NOT_COMMON
    x3 = x.reshape((rows, channels, inner))
    y3 = y.reshape((rows, channels, inner))
    if training:
        return forward_train(
            x3, y3, weight, bias, running_mean, running_var, save_mean, save_invstd,
            momentum, eps, stop_on_nonfinite, parallel, item_elements, columns_per_item, True,
        )  # fmt: skip
    return forward_eval(
        x3, y3, weight, bias, running_mean, running_var, save_mean, save_invstd,
        eps, parallel, item_elements, columns_per_item, True,
    )  # fmt: skip


def backward_entry(
    dy, x, dx, weight, save_mean, save_invstd, grad_weight, grad_bias, absent, training,
    axis, parallel, item_elements, columns_per_item,
):  # fmt: skip
    """A whole backward call of the fast lane; returns a status.

    As :func:`forward_entry`, around :func:`backward`: ``dy``, ``x`` and
    ``dx`` are the caller's C-contiguous arrays; ``absent`` may hold
    ``WEIGHT_ABSENT``. The status is :func:`backward`'s, or :data:`NOT_COMMON`.
    """
    ndim = x.ndim
    if ndim < 2 or not -ndim <= axis < ndim or dy.shape != x.shape or dx.shape != x.shape:
        return NOT_COMMON
    axis = axis % ndim
    if CHANNELS_LAST != (axis == ndim - 1):
        return NOT_COMMON
    rows, channels, inner = _kernel_shape(x.shape, axis)
    if (
        rows * inner == 0
        or channels == 0
        or not _vector_fits(weight, (absent & WEIGHT_ABSENT) == 0, channels)
        or not _vector_fits(save_mean, True, channels)
        or not _vector_fits(save_invstd, True, channels)
        or not _vector_fits(grad_weight, True, channels)
        or not _vector_fits(grad_bias, True, channels)
    ):
        return NOT_COMMON
    return backward(
        dy.reshape((rows, channels, inner)), x.reshape((rows, channels, inner)),
        dx.reshape((rows, channels, inner)), weight, save_mean, save_invstd, grad_weight,
        grad_bias, training, parallel, item_elements, columns_per_item, True,
    )  # fmt: skip


FUSED_PASSES = {
    layout: specialized(
        (_normalize, forward_train, forward_eval, backward, forward_entry, backward_entry),
        f"_{layout}",
        CHANNELS_LAST=layout == RC,
    )
    for layout in (NCS, RC)
}
"""Layout (``ncs``, ``rc``) -> name -> the fused pass for that layout.

Names: ``_normalize`` (the affine normalization with given statistics),
``forward_train``, ``forward_eval``, ``backward``, and the whole calls of
the fast lane, ``forward_entry`` and ``backward_entry``.
"""
