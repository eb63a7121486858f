"""CUDA kernels of the SGD family: the fused update, the finiteness check, clipping.

Every kernel runs over 1-D C-contiguous device arrays (a tensor's flat view,
or the flat buffer of a device :class:`~bnsgd_numba.sgd._cuda_driver.DeviceParameterArena`)
with a grid-stride loop, so one launch serves one tensor or a whole arena.
The update's arithmetic is that of :mod:`bnsgd_numba.sgd._cpu`, element by
element, in the array's dtype: the scalars arrive already rounded to it.

Reductions (norm partials) give one float64 partial per block, merged inside
the block in a fixed order (warp shuffles, then shared memory); the host adds
the partials exactly. No float atomics: results are bitwise reproducible.
"""

from __future__ import annotations

import math

from numba import float64

from bnsgd_numba._core.cuda import cuda, gpu_kernel
from bnsgd_numba._core.cuda_reductions import block_max_sum, block_sum3


@gpu_kernel
def sgd_update(
    param, grad, buf, lr, mom, damp1, wd, decay, sign, mode, nesterov, coupled, decoupled
):
    """One SGD step over flat arrays, in place (``buf`` unused in mode 0).

    The scalars are of the arrays' dtype: ``damp1 = 1 - dampening``,
    ``decay = 1 - lr * weight_decay``, ``sign = -1`` to maximize.
    """
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = param.shape[0]
    while i < n:
        p = param[i]
        g = sign * grad[i]
        if coupled:
            g = g + wd * p
        if mode == 1:
            buf[i] = g
            if nesterov:
                g = g + mom * g
        elif mode == 2:
            b = mom * buf[i] + damp1 * g
            buf[i] = b
            if nesterov:
                g = g + mom * b
            else:
                g = b
        if decoupled:
            p = p * decay
        param[i] = p - lr * g
        i += stride


@gpu_kernel
def flag_nonfinite(x, flag):
    """Set ``flag[0] = 1`` when ``x`` holds a NaN or an infinity (an int store, no atomics)."""
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = x.shape[0]
    while i < n:
        if not math.isfinite(x[i]):
            flag[0] = 1
        i += stride


@gpu_kernel
def norm_partials(x, kind, order, partials):
    """One float64 partial per block of sum(|x|**order) (kind 0: L2, 1: L1, 3: p), or of max|x| (2).

    A NaN anywhere makes the block's partial NaN (also for the max).
    """
    tid = cuda.threadIdx.x
    threads = cuda.blockDim.x
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = x.shape[0]
    acc = 0.0
    probe = 0.0
    while i < n:
        v = abs(float64(x[i]))
        if kind == 0:
            acc += v * v
        elif kind == 1:
            acc += v
        elif kind == 2:
            probe += v * 0.0
            acc = max(acc, v)
        else:
            acc += v**order
        i += stride
    if kind == 2:
        acc, probe, _ = block_max_sum(tid, threads, acc, probe, 0.0)
        if probe != probe:
            acc = math.nan
    else:
        acc, probe, _ = block_sum3(tid, threads, acc, probe, 0.0)
    if tid == 0:
        partials[cuda.blockIdx.x] = acc


@gpu_kernel
def scale(x, factor):
    """``x *= factor`` in place (``factor`` of x's dtype)."""
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < x.shape[0]:
        x[i] = x[i] * factor
        i += stride


@gpu_kernel
def clamp(x, hi, lo):
    """Clamp ``x`` to ``[lo, hi]`` in place; NaN passes through (comparisons are false)."""
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < x.shape[0]:
        v = x[i]
        if v > hi:
            v = hi
        elif v < lo:
            v = lo
        x[i] = v
        i += stride


@gpu_kernel
def fill(x, value):
    """``x[:] = value``."""
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < x.shape[0]:
        x[i] = value
        i += stride
