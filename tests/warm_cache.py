"""Compile the kernels most test files use into numba's cache, before the test workers start.

The suite runs in pytest-xdist workers (one per core), and numba compiles a
kernel in every process that first calls it: on a fresh clone each worker
would compile the same BatchNorm and SGD kernels. ``tests/conftest.py`` runs
this script in the controller instead, one process per dtype at once, and
the workers then load the kernels from the cache. Run alone:
``python tests/warm_cache.py float32``.
"""

from __future__ import annotations

import sys

import numpy as np

# (shape, channel_axis): serial and parallel builds, channels-first and channels-last
BATCH_NORM_SHAPES = (
    ((4, 3, 5), 1),
    ((6, 3), 1),
    ((300, 40, 30), 1),
    ((3000, 48), 1),
    ((8, 5, 4), -1),
)
SGD_SIZES = (10, 300_000)


def warm(dtype: type) -> None:
    """Call BatchNorm forward (training, eval), backward, the SGD step and clipping in ``dtype``."""
    import bnsgd_numba as bn

    for shape, axis in BATCH_NORM_SHAPES:
        x = np.linspace(-1, 1, np.prod(shape)).reshape(shape).astype(dtype)
        channels = shape[axis]
        weight, bias = np.ones(channels, dtype), np.zeros(channels, dtype)
        rm, rv = np.zeros(channels, dtype), np.ones(channels, dtype)
        for w, b in ((None, None), (weight, bias)):
            out = bn.batch_norm_forward(x, w, b, rm, rv, training=True, channel_axis=axis)
            bn.batch_norm_forward(x, w, b, rm, rv, training=False, channel_axis=axis)
            bn.batch_norm_backward(x, x, w, out.save_mean, out.save_invstd, channel_axis=axis)
    for size in SGD_SIZES:
        arena = bn.ParameterArena([(size,), (3,)], dtype=dtype)
        arena.grads[0][...] = 1
        bn.SGD(arena, lr=0.1, momentum=0.9, weight_decay=1e-4).step()
        params = [np.ones(size, dtype), np.ones(3, dtype)]
        bn.SGD(params, lr=0.1, momentum=0.9).step([np.ones_like(p) for p in params])
        bn.sgd_step(params[0], np.ones_like(params[0]), lr=0.1)
        bn.clip_grad_norm([np.ones(size, dtype)], 1.0)


if __name__ == "__main__":
    warm(np.dtype(sys.argv[1]).type)
