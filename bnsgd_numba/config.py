"""Tunable defaults shared by every kernel, in one place.

Kernels read these values when they are compiled or launched; change them
before the first call (or call :func:`reset` to go back to the defaults).
The fastmath flags are compiled into numba's on-disk cache, which does not
notice a change of flags: clear the cache (the ``*.nbi``/``*.nbc`` files in
``__pycache__`` or ``NUMBA_CACHE_DIR``) after changing them.

``FASTMATH`` and ``REDUCTION_FASTMATH`` are the only fastmath flag sets any
kernel uses (``tests/test_package.py`` checks that no kernel hard-codes its
own). Neither has ``nnan``/``ninf``: those would let LLVM delete the
finiteness checks that keep a NaN batch out of the running statistics.
``reassoc`` is confined to the small loops that sum values already stored in
memory, and to single additions (``_core.reductions.reassociable_add``):
elsewhere it lets LLVM rewrite a + (b - a) * (n / n) as a + ((b - a) * n) / n,
or acc + (x - s) as (acc + x) - s, and exact results (a constant channel
normalizing to exactly ``bias``) stop being exact.
"""

from __future__ import annotations

_DEFAULTS = {
    "FASTMATH": frozenset({"contract"}),
    "REDUCTION_FASTMATH": frozenset({"reassoc", "contract"}),
    "CPU_ITEM_ELEMENTS": 16384,
    "CPU_RC_COLUMNS": 512,
    "CPU_SERIAL_BELOW": 98304,
    "GPU_THREADS_PER_BLOCK": 256,
}

FASTMATH: frozenset[str] = _DEFAULTS["FASTMATH"]
"""LLVM fastmath flags of every kernel: FMA contraction only."""

REDUCTION_FASTMATH: frozenset[str] = _DEFAULTS["REDUCTION_FASTMATH"]
"""Flags of the row-sum helpers (``cpu_kernel(reduction=True)``) and of
``_core.reductions.reassociable_add``: ``reassoc`` lets LLVM vectorize a sum;
their terms are loaded from memory or computed in strict arithmetic, so no
algebra can move across them. The order stays fixed for a given build: results do not
depend on the number of threads."""

CPU_ITEM_ELEMENTS: int = _DEFAULTS["CPU_ITEM_ELEMENTS"]
"""Elements per work item of a CPU reduction.

The split of a reduction into items depends on the array's shape only, never
on the number of threads, so results are bitwise identical whatever
``NUMBA_NUM_THREADS`` is.
"""

CPU_RC_COLUMNS: int = _DEFAULTS["CPU_RC_COLUMNS"]
"""Channels per work item of a channels-last reduction."""

CPU_SERIAL_BELOW: int = _DEFAULTS["CPU_SERIAL_BELOW"]
"""Work over fewer elements runs the single-threaded build of a kernel.

Both builds split the work into the same items, so they agree bitwise. The
serial one runs on the calling thread and never starts or wakes the thread
pool: below about 98,304 (3 * 2**15) elements a parallel region costs more
than it saves on two cores (measured per kernel family, docs/threading.md),
and in a training step it would also wake threads next to BLAS's. 0 makes
every call parallel; a huge value makes every call serial.
"""

GPU_THREADS_PER_BLOCK: int = _DEFAULTS["GPU_THREADS_PER_BLOCK"]
"""Threads per block of GPU kernels (tests shrink it for the simulator)."""


def reset() -> None:
    """Restore every setting of this module to its default."""
    globals().update(_DEFAULTS)
