"""Timing helpers shared by the benchmarks: best-of-N wall time and a copy probe."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import prange as numba_prange

from bnsgd_numba._core.compile import cpu_kernel


def best_seconds(function: Callable[[], Any], *, repeat: int = 7, min_time: float = 0.05) -> float:
    """Return the best time of one call of ``function`` in seconds.

    ``function`` is called once to warm up, then in ``repeat`` rounds of as many
    calls as fill ``min_time`` seconds; the fastest round's mean is returned
    (the minimum is the least disturbed by other work on a shared machine).
    """
    function()
    start = time.perf_counter()
    function()
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(min_time / once))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


SETTLE_SECONDS = 0.05
"""Pause before each contender's round of :func:`interleaved_best_seconds`.

PyTorch's OpenMP workers spin for about 10-15 ms of CPU after each call
(measured with PyTorch 2.13 on 2 threads), on the cores the next contender
needs. Without the pause, whatever ran after PyTorch in a round was slowed
by them, and the same call measured 0.7x PyTorch in one run and 1.2x in the
next; with it, every contender starts on quiet cores.
"""


def interleaved_best_seconds(
    functions: dict[str, Any], repeat: int = 7, settle: float = SETTLE_SECONDS
) -> dict[str, float]:
    """Best time of each function, measured in interleaved rounds.

    One round of every contender after the other, ``repeat`` times, the best
    round of each kept: on a shared machine a burst of other work then hits
    all of them alike, and the ratios stay meaningful. Each round starts
    ``settle`` seconds after the previous one ended (:data:`SETTLE_SECONDS`).
    """
    rounds = interleaved_round_seconds(functions, repeat, settle)
    return {name: min(times) for name, times in rounds.items()}


def interleaved_round_seconds(
    functions: dict[str, Any], repeat: int = 7, settle: float = SETTLE_SECONDS
) -> dict[str, list[float]]:
    """Each function's time in each of ``repeat`` interleaved rounds.

    The rounds of :func:`interleaved_best_seconds`, all of them: two
    contenders timed next to each other in a round met the same load, so the
    ratio of their times round by round (a paired comparison) is steadier on
    a shared machine than the ratio of their best rounds.
    """
    rounds: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            time.sleep(settle)
            rounds[name].append(best_seconds(function, repeat=1))
    return rounds


def copier(source: np.ndarray) -> Any:
    """Return a function that copies ``source`` with the parallel probe kernel.

    The same-size copy is the roofline of an operation on ``source``: the
    data comes from wherever it lives (memory or a large cache), as the
    operation's does.
    """
    flat = np.ascontiguousarray(source).reshape(-1)
    target = np.empty_like(flat)
    return lambda: _parallel_copy(flat, target)


@cpu_kernel(parallel=True)
def _parallel_copy(source, target):
    # Fixed 64 Ki-element blocks spread over the threads: the same shape of
    # work as the kernels it is compared with.
    block = 65536
    n = source.shape[0]
    for b in numba_prange((n + block - 1) // block):
        start = b * block
        stop = min(start + block, n)
        # each block loops over its own slice from 0, which LLVM vectorizes
        # (a loop over range(start, stop) keeps a bounds check per element)
        source_block = source[start:stop]
        target_block = target[start:stop]
        for i in range(stop - start):
            target_block[i] = source_block[i]


def copy_bandwidth(nbytes: int = 256 * 2**20, dtype: Any = np.float32) -> float:
    """Measure a parallel memory copy and return its bandwidth in bytes per second.

    One read and one write per element are counted, as in STREAM's Copy.
    """
    itemsize = np.dtype(dtype).itemsize
    source = np.ones(nbytes // itemsize, dtype=dtype)
    target = np.empty_like(source)
    seconds = best_seconds(lambda: _parallel_copy(source, target), repeat=5)
    return 2 * source.nbytes / seconds
