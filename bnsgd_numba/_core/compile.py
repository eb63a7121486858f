"""The one way CPU kernels are compiled: ``cpu_kernel``.

Every ``@njit`` kernel of the package goes through :func:`cpu_kernel`, which
takes the fastmath flags from :mod:`bnsgd_numba.config`, asks for on-disk
caching, and silently falls back to no caching when no writable cache
directory can be found (read-only site-packages without ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import numba

from bnsgd_numba import config


def cpu_kernel(
    *, parallel: bool = False, reduction: bool = False
) -> Callable[[Callable[..., Any]], Any]:
    """Decorate a function as a cached ``numba.njit`` kernel.

    Parameters
    ----------
    parallel : bool
        Compile ``prange`` loops for the thread pool.
    reduction : bool
        A row-sum helper whose terms are loaded from memory: compiled with
        ``config.REDUCTION_FASTMATH`` (reassociation, so the sum vectorizes)
        instead of ``config.FASTMATH``.

    Returns
    -------
    decorator
        Turns a Python function into a lazily compiled dispatcher.
    """

    def decorate(function: Callable[..., Any]) -> Any:
        flags = config.REDUCTION_FASTMATH if reduction else config.FASTMATH
        # error_model="numpy": a float division by zero gives inf or nan (IEEE)
        # instead of a ZeroDivisionError check per division, which keeps
        # loops with divisions from vectorizing.
        options = {
            "parallel": parallel,
            "fastmath": set(flags),
            "nogil": True,
            "error_model": "numpy",
        }
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:
            # numba raises RuntimeError("cannot cache function ...") when no
            # cache locator finds a writable directory.
            return numba.njit(cache=False, **options)(function)

    return decorate


class KernelPair:
    """A parallel and a single-threaded build of one kernel source.

    Both builds run the same loops over the same work items, so they agree
    bitwise; :meth:`for_size` picks the serial one for arrays too small to be
    worth waking the thread pool (``config.CPU_SERIAL_BELOW`` elements).
    """

    def __init__(self, function: Callable[..., Any]) -> None:
        self.parallel = cpu_kernel(parallel=True)(function)
        self.serial = cpu_kernel(parallel=False)(_renamed(function, "_serial"))

    def for_size(self, elements: int) -> Any:
        """Return the build to use for an array of ``elements`` elements."""
        return self.serial if elements < config.CPU_SERIAL_BELOW else self.parallel


def _renamed(function: Callable[..., Any], suffix: str) -> Callable[..., Any]:
    # Numba names its cache files after the qualified name: the serial build
    # needs its own name so the two builds never load each other's code.
    clone = types.FunctionType(
        function.__code__,
        function.__globals__,
        function.__name__ + suffix,
        function.__defaults__,
        function.__closure__,
    )
    clone.__qualname__ = function.__qualname__ + suffix
    clone.__module__ = function.__module__
    clone.__doc__ = function.__doc__
    return clone
