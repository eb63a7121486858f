"""Small reductions the CPU kernels share: Chan's merge and row sums.

The row sums are compiled with ``config.REDUCTION_FASTMATH`` (``reassoc``) so
that they vectorize: their terms are loaded from memory, so no algebra can
move a shift or a rounding across them. Everything sums in float64.
"""

from __future__ import annotations

import numpy as np

from bnsgd_numba._compile import cpu_kernel


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


@cpu_kernel(reduction=True)
def sum_and_sum_of_squares(values):
    """(sum(values), sum(values**2)) in float64, in one pass."""
    total = 0.0
    squares = 0.0
    for k in range(values.shape[0]):
        v = np.float64(values[k])
        total += v
        squares += v * v
    return total, squares


@cpu_kernel(reduction=True)
def sum_of_products(a, b):
    """sum(a * b) in float64."""
    total = 0.0
    for k in range(a.shape[0]):
        total += np.float64(a[k]) * np.float64(b[k])
    return total
