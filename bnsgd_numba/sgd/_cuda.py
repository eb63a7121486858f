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

from bnsgd_numba._core.cuda import (
    MAX_THREADS_PER_BLOCK,
    WARP_SIZE,
    cuda,
    gpu_device_function,
    gpu_kernel,
    shfl_down3,
)
from bnsgd_numba.batch_norm._cuda import _block_sum3

MAX_WARPS = MAX_THREADS_PER_BLOCK // WARP_SIZE


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


@gpu_device_function
def _block_max_probe(tid, threads, top, probe):
    # Block max of ``top`` (>= 0) and sum of ``probe``; thread 0 gets both.
    warp_top = cuda.shared.array(MAX_WARPS, float64)
    warp_probe = cuda.shared.array(MAX_WARPS, float64)
    offset = WARP_SIZE // 2
    while offset > 0:
        top_b, probe_b, _ = shfl_down3(top, probe, 0.0, offset)
        top = max(top, top_b)
        probe += probe_b
        offset //= 2
    lane = tid % WARP_SIZE
    if lane == 0:
        warp_top[tid // WARP_SIZE] = top
        warp_probe[tid // WARP_SIZE] = probe
    cuda.syncthreads()
    if lane < threads // WARP_SIZE:
        top = warp_top[lane]
        probe = warp_probe[lane]
    else:
        top = 0.0
        probe = 0.0
    offset = WARP_SIZE // 2
    while offset > 0:
        top_b, probe_b, _ = shfl_down3(top, probe, 0.0, offset)
        top = max(top, top_b)
        probe += probe_b
        offset //= 2
    cuda.syncthreads()
    return top, probe


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
        acc, probe = _block_max_probe(tid, threads, acc, probe)
        if probe != probe:
            acc = math.nan
    else:
        acc, probe, _ = _block_sum3(tid, threads, acc, probe, 0.0)
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
