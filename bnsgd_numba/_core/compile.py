"""The one way CPU kernels are compiled: ``cpu_kernel``.

Every ``@njit`` kernel of the package goes through :func:`cpu_kernel`, which
takes the fastmath flags from :mod:`bnsgd_numba.config`, asks for on-disk
caching, and silently falls back to no caching when no writable cache
directory can be found (read-only site-packages without ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import numba

from bnsgd_numba import config
from bnsgd_numba._core import threads


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
        return _njit(function, parallel, flags)

    return decorate


PRANGE_ONLY = {
    "prange": True,
    "numpy": False,
    "setitem": False,
    "inplace_binop": False,
    "reduction": False,
    "comprehension": False,
    "stencil": False,
}
"""numba's ``parallel`` option of a parallel build: only ``prange`` loops run on the pool.

With ``parallel=True`` numba also turns each array expression, slice
assignment and NumPy call such as ``np.zeros`` outside a ``prange`` into a
parallel region of its own, which wakes the pool once more: the channels-last
gradient sums zeroed their partial sums in one (5-8 us of their 20-40 us at
(128..256, 784) on 2 cores) before their ``prange``. Outside a ``prange`` a
parallel build now runs as the serial build does, on the calling thread.
"""


def njit_options(parallel: bool, fastmath: Any) -> dict[str, Any]:
    """The ``numba.njit`` options of every kernel, caching aside.

    ``error_model="numpy"``: a float division by zero gives inf or nan (IEEE)
    instead of a ZeroDivisionError check per division, which keeps loops
    with divisions from vectorizing. A parallel build parallelizes its
    ``prange`` loops only (:data:`PRANGE_ONLY`).
    """
    return {
        "parallel": dict(PRANGE_ONLY) if parallel else False,
        "fastmath": set(fastmath),
        "nogil": True,
        "error_model": "numpy",
    }


def _njit(function: Callable[..., Any], parallel: bool, fastmath: Any) -> Any:
    options = njit_options(parallel, fastmath)
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:
        # numba raises RuntimeError("cannot cache function ...") when no
        # cache locator finds a writable directory.
        return numba.njit(cache=False, **options)(function)


class KernelPair:
    """A parallel and a single-threaded build of one kernel source.

    Both builds run the same loops over the same work items, so they agree
    bitwise; :meth:`for_size` picks the serial one for work too small to be
    worth waking the thread pool (``config.CPU_SERIAL_BELOW`` elements), and
    only a call of the parallel one starts the pool
    (:mod:`bnsgd_numba._core.threads`).

    Parameters
    ----------
    function : callable
        A kernel source with ``prange`` loops (both builds are compiled from
        it), or, with ``caller=True``, a compiled serial kernel that calls the
        parallel builds of other pairs: its serial build calls their serial
        builds instead, so it never loads the pool.
    caller : bool
        See ``function``.
    """

    def __init__(self, function: Callable[..., Any], *, caller: bool = False) -> None:
        if caller:
            self.parallel = function
            self.serial = _serial_twin(function)
        else:
            self.parallel = cpu_kernel(parallel=True)(function)
            self.serial = cpu_kernel(parallel=False)(_renamed(function, "_serial"))
            _SERIAL_BUILDS[id(self.parallel)] = self.serial
        self._exclusive = threads.exclusive(self.parallel, self.serial)

    def for_size(self, elements: int) -> Any:
        """Return the build to use for work over ``elements`` array elements."""
        if elements < config.CPU_SERIAL_BELOW:
            return self.serial
        mode = threads.parallel_mode()
        if mode == threads.FREE:
            return self.parallel
        if mode == threads.EXCLUSIVE:
            return self._exclusive
        return self.serial


def caller_pair(kernel: Any) -> KernelPair:
    """The :class:`KernelPair` of a serial kernel that calls parallel builds, made once.

    Parameters
    ----------
    kernel : numba dispatcher
        A kernel compiled with :func:`cpu_kernel` (not parallel) that calls
        the parallel builds of pairs, such as a fused forward pass choosing
        between builds with a flag.

    Returns
    -------
    KernelPair
        ``parallel`` is ``kernel``; ``serial`` is a copy of it that calls the
        serial builds only.
    """
    pair = _CALLER_PAIRS.get(id(kernel))
    if pair is None:
        pair = _CALLER_PAIRS.setdefault(id(kernel), KernelPair(kernel, caller=True))
    return pair


def specialized(
    functions: Sequence[Callable[..., Any]], suffix: str, **constants: Any
) -> dict[str, Any]:
    """Compile kernel sources that call each other, with some globals fixed.

    numba reads a global as a compile-time constant and drops the branches
    it rules out before typing them: a build only compiles the loops its
    constants lead to (a build per memory layout compiles that layout's
    loops, not both).

    Parameters
    ----------
    functions : sequence of callable
        Plain Python kernel sources of one module. Each build sees the
        others' builds under their names, so calls between them stay within
        one specialization.
    suffix : str
        Appended to each build's name (and so to its cache files).
    **constants
        Globals to fix, such as ``CHANNELS_LAST=True``.

    Returns
    -------
    dict
        The name of each source -> its build (a :func:`cpu_kernel`).
    """
    namespace = {**functions[0].__globals__, **constants}
    builds = {}
    for function in functions:
        build = cpu_kernel()(_renamed(function, suffix, namespace))
        builds[function.__name__] = namespace[function.__name__] = build
    return builds


_CALLER_PAIRS: dict[int, KernelPair] = {}
_SERIAL_BUILDS: dict[int, Any] = {}
"""id of a dispatcher -> the build of it that runs no parallel region."""


def _serial_twin(kernel: Any) -> Any:
    # The serial twin of a compiled kernel: the kernel itself when nothing it
    # calls (through its globals, recursively) is a parallel build, else a
    # copy compiled against globals where each of those is its serial build.
    known = _SERIAL_BUILDS.get(id(kernel))
    if known is not None:
        return known
    _SERIAL_BUILDS[id(kernel)] = kernel  # until known: ends a cycle of calls
    function = kernel.py_func
    replaced = {}
    for name in _global_names(function.__code__):
        value = function.__globals__.get(name)
        if isinstance(value, numba.core.registry.CPUDispatcher):
            twin = _serial_twin(value)
            if twin is not value:
                replaced[name] = twin
    twin = kernel
    if replaced:
        clone = _renamed(function, "_serial", {**function.__globals__, **replaced})
        twin = _njit(clone, False, kernel.targetoptions["fastmath"])
    _SERIAL_BUILDS[id(kernel)] = twin
    return twin


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            names |= _global_names(constant)
    return names


def _renamed(
    function: Callable[..., Any], suffix: str, namespace: dict[str, Any] | None = None
) -> Callable[..., Any]:
    # Numba names its cache files after the qualified name: the serial build
    # needs its own name so the two builds never load each other's code.
    clone = types.FunctionType(
        function.__code__,
        function.__globals__ if namespace is None else namespace,
        function.__name__ + suffix,
        function.__defaults__,
        function.__closure__,
    )
    clone.__qualname__ = function.__qualname__ + suffix
    clone.__module__ = function.__module__
    clone.__doc__ = function.__doc__
    return clone
