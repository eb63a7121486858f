"""CPU kernels of the SGD family: the fused update, the finiteness check, clipping.

Every kernel works on 1-D C-contiguous arrays (a tensor's flat view, or the
flat buffer of a :class:`~bnsgd_numba.sgd.arena.ParameterArena`), in work items of
a fixed number of elements, so the same kernel serves one tensor and a whole
arena. Elementwise kernels give each element the same arithmetic wherever it
lies, which is why the per-tensor and the arena paths agree bitwise.
Reductions return one partial per work item, computed in a fixed order, and the
caller combines the partials in a fixed order: results never depend on the
number of threads.

Scalars arrive as Python floats and are cast to the array's dtype inside the
kernels (``dtype.type(x)``), as PyTorch casts its ``alpha`` arguments: a bare
float literal would promote float32 arithmetic to float64.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from bnsgd_numba._core.compile import KernelPair


def _sgd_update(
    param,
    grad,
    buf,
    lr,
    momentum,
    dampening,
    weight_decay,
    mode,
    nesterov,
    decoupled,
    maximize,
    chunk,
):
    # Each work item loops over its own slice: indices from 0 let LLVM drop
    # the negative-index wraparound and vectorize. The flag tests select
    # between values only (no memory access depends on them), so they are
    # unswitched or if-converted.
    cast = param.dtype.type
    lr_t = cast(lr)
    mom = cast(momentum)
    damp1 = cast(1.0 - dampening)
    wd = cast(weight_decay)
    decay = cast(1.0 - lr * weight_decay)
    sign = cast(-1.0) if maximize else cast(1.0)
    coupled = weight_decay != 0.0 and not decoupled
    n = param.shape[0]
    for item in prange((n + chunk - 1) // chunk):
        start = item * chunk
        stop = min(start + chunk, n)
        p_item = param[start:stop]
        g_item = grad[start:stop]
        if mode == 0:
            for i in range(p_item.shape[0]):
                p = p_item[i]
                g = sign * g_item[i]
                if coupled:
                    g = g + wd * p
                if decoupled:
                    p = p * decay
                p_item[i] = p - lr_t * g
        elif mode == 1:
            b_item = buf[start:stop]
            for i in range(p_item.shape[0]):
                p = p_item[i]
                g = sign * g_item[i]
                if coupled:
                    g = g + wd * p
                b_item[i] = g
                if nesterov:
                    g = g + mom * g
                if decoupled:
                    p = p * decay
                p_item[i] = p - lr_t * g
        else:
            b_item = buf[start:stop]
            for i in range(p_item.shape[0]):
                p = p_item[i]
                g = sign * g_item[i]
                if coupled:
                    g = g + wd * p
                b = mom * b_item[i] + damp1 * g
                b_item[i] = b
                if nesterov:
                    g = g + mom * b
                else:
                    g = b
                if decoupled:
                    p = p * decay
                p_item[i] = p - lr_t * g


sgd_update = KernelPair(_sgd_update)
"""``sgd_update.for_size(n)(param, grad, buf, lr, momentum, dampening,
weight_decay, mode, nesterov, decoupled, maximize, chunk)``: one SGD step over
flat arrays, in place (``buf`` is ignored, and may be empty, in MODE_PLAIN)."""


def _nonfinite_items(x, chunk):
    # x * 0 is 0 for finite x and NaN for NaN or +-Inf; without the nnan flag
    # LLVM may not fold it away, and the sum vectorizes.
    zero = x.dtype.type(0.0)
    n = x.shape[0]
    items = (n + chunk - 1) // chunk
    flags = np.zeros(items, dtype=np.bool_)
    for item in prange(items):
        start = item * chunk
        stop = min(start + chunk, n)
        x_item = x[start:stop]
        acc = zero
        for i in range(x_item.shape[0]):
            acc += x_item[i] * zero
        flags[item] = acc != acc
    return flags


nonfinite_items = KernelPair(_nonfinite_items)
"""``nonfinite_items.for_size(n)(x, chunk)``: per work item, True where ``x``
holds a NaN or an infinity."""


def _norm_partials(x, starts, stops, kind, order):
    # One float64 partial per work item [starts[k], stops[k]); float32 data
    # is accumulated in float64.
    items = starts.shape[0]
    partials = np.zeros(items, dtype=np.float64)
    for item in prange(items):
        x_item = x[starts[item] : stops[item]]
        acc = 0.0
        if kind == 0:
            for i in range(x_item.shape[0]):
                v = np.float64(x_item[i])
                acc += v * v
        elif kind == 1:
            for i in range(x_item.shape[0]):
                acc += abs(np.float64(x_item[i]))
        elif kind == 2:
            nan_probe = 0.0
            for i in range(x_item.shape[0]):
                v = abs(np.float64(x_item[i]))
                nan_probe += v * 0.0
                if v > acc:
                    acc = v
            if nan_probe != nan_probe:
                acc = np.nan
        else:
            for i in range(x_item.shape[0]):
                acc += abs(np.float64(x_item[i])) ** order
        partials[item] = acc
    return partials


norm_partials = KernelPair(_norm_partials)
"""``norm_partials.for_size(n)(x, starts, stops, kind, order)``: float64
partial sums of ``|x|**order`` (or partial maxima of ``|x|`` for NORM_INF),
one per work item."""


def _scale(x, factor, chunk):
    f = x.dtype.type(factor)
    n = x.shape[0]
    for item in prange((n + chunk - 1) // chunk):
        start = item * chunk
        stop = min(start + chunk, n)
        x_item = x[start:stop]
        for i in range(x_item.shape[0]):
            x_item[i] = x_item[i] * f


scale = KernelPair(_scale)
"""``scale.for_size(n)(x, factor, chunk)``: ``x *= factor`` in place."""


def _clamp(x, limit, chunk):
    # Comparisons are false for NaN, so NaN passes through as in torch.clamp.
    hi = x.dtype.type(limit)
    lo = -hi
    n = x.shape[0]
    for item in prange((n + chunk - 1) // chunk):
        start = item * chunk
        stop = min(start + chunk, n)
        x_item = x[start:stop]
        for i in range(x_item.shape[0]):
            v = x_item[i]
            if v > hi:
                v = hi
            elif v < lo:
                v = lo
            x_item[i] = v


clamp = KernelPair(_clamp)
"""``clamp.for_size(n)(x, limit, chunk)``: clamp ``x`` to ``[-limit, limit]`` in place."""
