"""Whether two arrays' memory can meet, tested inside a kernel.

A fused kernel receives every array of its call; testing there whether an
array it writes meets another one costs nanoseconds, where the same test in
Python costs a tiny call a good share of its time. The test reads byte
extents, so it is exact for contiguous arrays and may report a meeting for
strided arrays that interleave without sharing an element: a caller that
gets True runs the exact test (:func:`bnsgd_numba._core.arrays.check_apart`),
which names the arrays or clears them.
"""

from __future__ import annotations

import numpy as np

from bnsgd_numba._core.compile import cpu_kernel


@cpu_kernel()
def byte_span(a):
    """Return ``(first, end)``: the bytes ``a``'s elements lie in; ``(0, 0)`` when empty."""
    if a.size == 0:
        return 0, 0
    first = np.intp(a.ctypes.data)
    end = first + np.intp(a.itemsize)
    for k in range(a.ndim):
        reach = np.intp(a.shape[k] - 1) * np.intp(a.strides[k])
        if reach < 0:
            first += reach
        else:
            end += reach
    return first, end


@cpu_kernel()
def spans_meet(a_first, a_end, b_first, b_end):
    """Whether two byte spans of :func:`byte_span` share a byte (empty spans never do)."""
    return a_first < b_end and b_first < a_end and a_first < a_end and b_first < b_end


@cpu_kernel()
def written_meets(written, others):
    """Whether a span of ``written`` meets another span of ``written`` or one of ``others``.

    Both are ``(k, 2)`` integer arrays of :func:`byte_span` pairs.
    """
    for i in range(written.shape[0]):
        for j in range(i + 1, written.shape[0]):
            if spans_meet(written[i, 0], written[i, 1], written[j, 0], written[j, 1]):
                return True
        for j in range(others.shape[0]):
            if spans_meet(written[i, 0], written[i, 1], others[j, 0], others[j, 1]):
                return True
    return False
