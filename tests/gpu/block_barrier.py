"""A faster way for the CUDA simulator to run a thread block (tests only).

numba-cuda's simulator runs each CUDA thread of a block as a Python thread,
and its ``BlockManager.run`` makes the main thread poll every thread in a
loop (``is_alive`` and a ``syncthreads_blocked`` flag) until all are blocked
in ``syncthreads`` or gone. On the suite's small kernels that polling took
most of the CPU time of the GPU tests: it competes for the interpreter lock
with the threads it waits for.

Here the block's threads meet at a condition-variable barrier instead, and
the main thread just joins them. The semantics are the simulator's:

- ``syncthreads`` returns once every thread of the block that is still
  running has reached it (a thread that has returned no longer counts);
- when a thread raises, the others are aborted at their next (or current)
  ``syncthreads``, and the launch raises the first exception, with the
  simulator's ``tid=[...] ctaid=[...]`` prefix.

It also enters ``swapped_cuda_module`` (which every device-function call of
every thread goes through) as a plain context manager instead of a
generator, with the same bookkeeping: a fifth of the GPU tests' time.

:func:`install` swaps these in for ``BlockManager.run``,
``BlockThread.syncthreads`` and ``kernel.swapped_cuda_module``;
``tests/gpu/conftest.py`` does it for the session when the simulator is on.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest


class BlockBarrier:
    """``__syncthreads`` for the live threads of one simulated block."""

    def __init__(self, threads: int) -> None:
        self._condition = threading.Condition()
        self._live = threads
        self._waiting = 0
        self._generation = 0
        self.aborted = False

    def wait(self) -> None:
        """Block until every live thread has called ``wait`` (or the block is aborted)."""
        with self._condition:
            if self.aborted:
                raise RuntimeError("abort flag set on syncthreads call")
            generation = self._generation
            self._waiting += 1
            if self._waiting == self._live:
                self._release()
                return
            while generation == self._generation and not self.aborted:
                self._condition.wait()
            if self.aborted:
                raise RuntimeError("abort flag set on syncthreads clear")

    def leave(self) -> None:
        """A thread has returned: the others no longer wait for it."""
        with self._condition:
            self._live -= 1
            if self._live and self._waiting == self._live:
                self._release()

    def abort(self) -> None:
        """A thread has raised: wake every waiting thread with an error."""
        with self._condition:
            self.aborted = True
            self._condition.notify_all()

    def _release(self) -> None:
        self._waiting = 0
        self._generation += 1
        self._condition.notify_all()


def _run_block(self: Any, grid_point: tuple[int, ...], *args: Any) -> None:
    # BlockManager.run: start the block's threads, join them, raise the first error
    from numba.cuda.simulator.kernel import BlockThread

    block_points = list(np.ndindex(*self._block_dim))
    barrier = self._barrier = BlockBarrier(len(block_points))
    failed: list[BlockThread] = []

    def target() -> None:
        try:
            self._f(*args)
        except BaseException:
            failed.append(threading.current_thread())
            barrier.abort()
            raise
        barrier.leave()

    threads = [BlockThread(target, self, grid_point, point, self._debug) for point in block_points]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for thread in failed + threads:
        if thread.exception:
            raise thread.exception[0].with_traceback(thread.exception[1])


def _syncthreads(self: Any) -> None:
    self._manager._barrier.wait()


class _SwappedCudaModule:
    # numba-cuda's swapped_cuda_module (the kernel's module sees the fake
    # `cuda` while a simulated function runs), as a plain context manager:
    # the simulator enters it on every device-function call of every thread
    __slots__ = ("_globals", "_fake", "_lock")

    def __init__(self, fn: Any, fake_cuda_module: Any) -> None:
        self._globals = fn.__globals__
        self._fake = fake_cuda_module

    def __enter__(self) -> None:
        kernelapi, cuda = _SIMULATOR
        key = id(self._globals)
        with kernelapi._locks_register_lock:
            self._lock = kernelapi._globals_locks[key]
        with self._lock:
            if kernelapi._swap_refcount[key] == 0:
                original = {k: v for k, v in self._globals.items() if v is cuda}
                kernelapi._swap_orig[key] = original
                for k in original:
                    self._globals[k] = self._fake
            kernelapi._swap_refcount[key] += 1

    def __exit__(self, *exc: Any) -> None:
        kernelapi = _SIMULATOR[0]
        key = id(self._globals)
        with self._lock:
            kernelapi._swap_refcount[key] -= 1
            if kernelapi._swap_refcount[key] == 0:
                self._globals.update(kernelapi._swap_orig.pop(key))
                del kernelapi._swap_refcount[key]


_SIMULATOR: list[Any] = []
"""numba-cuda's simulator module ``kernelapi`` and the real ``numba.cuda``, set by :func:`install`."""


def install(patch: pytest.MonkeyPatch) -> None:
    """Make ``patch`` swap the barrier in for the simulator's polling loop.

    Also a cheaper ``swapped_cuda_module`` (same bookkeeping, no generator).
    """
    from numba import cuda
    from numba.cuda.simulator import kernel, kernelapi

    _SIMULATOR[:] = [kernelapi, cuda]
    patch.setattr(kernel.BlockManager, "run", _run_block)
    patch.setattr(kernel.BlockThread, "syncthreads", _syncthreads)
    patch.setattr(kernel, "swapped_cuda_module", _SwappedCudaModule)
