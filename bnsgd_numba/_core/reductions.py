"""Small reductions the CPU kernels share: Chan's merge and row sums.

The plain row sums are compiled with ``config.REDUCTION_FASTMATH``
(``reassoc``) so that they vectorize: their terms are loaded from memory, so
no algebra can move a shift or a rounding across them. The row sums of
deviations (:func:`shifted_sums`, :func:`gradient_row_sums`) subtract in
strict arithmetic and only their additions into the totals carry the flags
(:func:`reassociable_add`), so they vectorize without a scratch row and LLVM
still cannot move the shift across an addition. Everything sums in float64.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.core.extending import intrinsic

from bnsgd_numba import config
from bnsgd_numba._core.compile import cpu_kernel

SHIFT_SAMPLE_DIVISOR = 16
"""A float32 work item sums its deviations about the mean of its first values.

The first ceil(rows / 16) rows (or values): the sample is part of the item, so
M2 >= m (shift - mean)^2 for its m values, and the shifted sum of squares is
at most (1 + 16) M2; its rounding costs at most 17 float64 eps of M2 whatever
the data, far below a float32 ulp, and the pass that would find the item's
exact mean first is saved. A float64 item uses all its rows (the two-pass
algorithm). A constant item gives an exact shift (a sum of equal values
divided by their count) and exact zero deviations. In the float32
channels-last BatchNorm moments a task's whole row group is one item
(``batch_norm._cpu.MOMENT_GROUP_ITEMS``).
"""


@cpu_kernel()
def shift_sample_size(itemsize, size):
    """Leading rows (or values) of a work item whose mean is its shift.

    All of them for float64 data, ceil(size / SHIFT_SAMPLE_DIVISOR) otherwise.
    """
    if itemsize >= 8:
        return size
    return (size + SHIFT_SAMPLE_DIVISOR - 1) // SHIFT_SAMPLE_DIVISOR


@intrinsic
def reassociable_add(typingctx, total, term):
    """``total + term``, the one addition of a loop LLVM may reorder.

    The addition carries ``config.REDUCTION_FASTMATH`` (``reassoc``), so the
    loop that accumulates ``total`` vectorizes; everything else in that loop
    keeps the caller's flags. LLVM rewrites ``total + (x - shift)`` as
    ``(total + x) - shift`` only when the subtraction may be reassociated
    too, so a deviation computed in the caller stays a deviation.
    """
    if not (isinstance(total, types.Float) and total == term):
        return None

    def codegen(context, builder, signature, args):
        flags = tuple(sorted(config.REDUCTION_FASTMATH))
        return builder.fadd(args[0], args[1], flags=flags)

    return total(total, term), codegen


@cpu_kernel()
def merge_chan(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    """Combine (count, mean, M2) of two parts (Chan, Golub & LeVeque 1979)."""
    count = count_a + count_b
    if count_b == 0.0:
        return count_a, mean_a, m2_a
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / count)
    m2 = m2_a + m2_b + delta * delta * (count_a * count_b / count)
    return count, mean, m2


@cpu_kernel(reduction=True)
def sum_values(values):
    """sum(values) in float64."""
    total = 0.0
    for k in range(values.shape[0]):
        total += values[k]
    return total


@cpu_kernel(reduction=True)
def sum_of_squares(values):
    """sum(values**2) in float64."""
    total = 0.0
    for k in range(values.shape[0]):
        v = np.float64(values[k])
        total += v * v
    return total


@cpu_kernel()
def shifted_sums(values, shift):
    """(sum(d), sum(d**2)) in float64 with d = values - shift, for one row.

    ``d`` is computed in float64 without reassociation: a constant row equal
    to ``shift`` gives exactly (0, 0).
    """
    total = 0.0
    squares = 0.0
    for k in range(values.shape[0]):
        d = np.float64(values[k]) - shift
        total = reassociable_add(total, d)
        squares = reassociable_add(squares, d * d)
    return total, squares


@cpu_kernel()
def gradient_row_sums(dy, x, center):
    """(sum(dy), sum(dy * d), sum(d)) in float64 with d = x - center, for one row."""
    total_dy = 0.0
    total_dy_d = 0.0
    total_d = 0.0
    for k in range(x.shape[0]):
        g = np.float64(dy[k])
        d = np.float64(x[k]) - center
        total_dy = reassociable_add(total_dy, g)
        total_dy_d = reassociable_add(total_dy_d, g * d)
        total_d = reassociable_add(total_d, d)
    return total_dy, total_dy_d, total_d
