"""The thread pool behind the parallel CPU kernels: its layer, its start, fork and threads.

numba runs ``prange`` loops on a threading layer it loads once per process,
the first time a parallel kernel is compiled, loaded from the cache or
queried (``numba.get_num_threads()``). This module decides what happens then,
so that the default install is fast next to NumPy's BLAS and PyTorch, and
safe under ``fork`` and Python threads (``docs/threading.md`` has the
measurements behind each choice):

- The pool starts on the first call of a parallel build only
  (:func:`parallel_mode`); small work never reaches one
  (:class:`~bnsgd_numba._core.compile.KernelPair`).
- Before it starts, oneTBB (the ``tbb`` wheel, a dependency) is made
  findable: its ``libtbb.so.12`` lies in the environment's ``lib/``, which the
  dynamic loader does not search, so it is loaded here by its full path.
  numba then picks its TBB layer, whose workers sleep instead of spinning and
  which survives ``fork``. When TBB cannot load, numba falls back to its
  OpenMP layer; its workers are then told to sleep when idle
  (``OMP_WAIT_POLICY=PASSIVE``, unless the user set a policy) so they do not
  spin against BLAS's threads, and :class:`ThreadingLayerWarning` says so once.
- A layer the user chose (``NUMBA_THREADING_LAYER``) is respected.
- After ``fork``, a child whose pool cannot work there (GNU OpenMP, whose
  teams do not survive ``fork``; TBB when another thread than the one that
  started it forked) runs the serial builds: same results, no crash, no hang.
  TBB forked from its own thread and workqueue restart their workers.
- numba's ``workqueue`` layer is not thread-safe: under it, one parallel
  region runs at a time, and a call that finds the pool busy runs the serial
  build instead of aborting the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FREE = "free"
"""Parallel builds run as they are: the layer is thread-safe."""
EXCLUSIVE = "exclusive"
"""One parallel region at a time; a call that finds the pool busy runs serially."""
SERIAL = "serial"
"""The pool cannot be used in this process: parallel builds are replaced by serial ones."""

_TBB_LIBRARY = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}
_OPENMP_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


class ThreadingLayerWarning(RuntimeWarning):
    """The parallel kernels run on a slower or less safe layer than the default one."""


_start_lock = threading.Lock()
_region_lock = threading.Lock()
_state: dict[str, Any] = {
    "mode": None,  # FREE, EXCLUSIVE or SERIAL once the pool has been asked for
    "layer": None,  # numba's threading layer name
    "launcher": None,  # ident of the thread that started the layer
    "tbb": None,  # the loaded oneTBB library (kept alive), or why it did not load
    "fork_from_other_thread": False,
}


def parallel_mode() -> str:
    """Start the pool if needed; return how parallel builds may run now.

    Returns
    -------
    str
        :data:`FREE`, :data:`EXCLUSIVE` or :data:`SERIAL`.
    """
    mode = _state["mode"]
    if mode is None:
        mode = _start()
    return mode


def exclusive(parallel: Callable[..., Any], serial: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a parallel build for a layer that runs one parallel region at a time.

    Parameters
    ----------
    parallel, serial : callable
        Two builds of one kernel, which give bitwise equal results.

    Returns
    -------
    callable
        Runs ``parallel`` when no other thread is in a parallel region of this
        package, ``serial`` otherwise.
    """

    def run(*args: Any) -> Any:
        if not _region_lock.acquire(blocking=False):
            return serial(*args)
        try:
            return parallel(*args)
        finally:
            _region_lock.release()

    return run


def describe() -> dict[str, str]:
    """The state of the pool, for reports: mode, layer, threads, and how TBB loaded.

    Does not start the pool.
    """
    import numba

    tbb = _state["tbb"]
    return {
        "mode": _state["mode"] or "not started",
        "layer": _state["layer"] or "not started",
        "threads": str(numba.config.NUMBA_NUM_THREADS),
        "tbb": tbb if isinstance(tbb, str) else ("loaded" if tbb is not None else "not tried"),
    }


def _start() -> str:
    with _start_lock:
        if _state["mode"] is not None:
            return _state["mode"]
        import numba

        launched = _layer_in_use()
        if launched is None:
            with _passive_openmp():
                numba.get_num_threads()  # loads the layer and starts its workers
            launched = _layer_in_use()
            _state["launcher"] = threading.get_ident()
            _warn_if_fallback(launched)
        else:
            _state["launcher"] = threading.main_thread().ident
        _state["layer"] = launched
        _state["mode"] = EXCLUSIVE if launched == "workqueue" else FREE
        return _state["mode"]


def _layer_in_use() -> str | None:
    import numba

    try:
        return str(numba.threading_layer())
    except ValueError:  # "Threading layer is not initialized."
        return None


def _tbb_candidates() -> Iterator[Path]:
    name = _TBB_LIBRARY.get(sys.platform)
    if name is None:
        return
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.files("tbb") or ():
            if file.name == name:
                yield Path(str(file.locate())).resolve()
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        yield Path(prefix) / ("Library/bin" if sys.platform == "win32" else "lib") / name


def _load_tbb() -> Any:
    # numba looks for oneTBB by its bare name; a library already loaded under
    # that name is what the dynamic loader then returns.
    name = _TBB_LIBRARY.get(sys.platform, "libtbb.so.12")
    with contextlib.suppress(OSError):
        return ctypes.CDLL(name)
    for path in _tbb_candidates():
        if path.is_file():
            try:
                return ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                return f"{path} did not load: {exc}"
    return f"{name} not found (pip install tbb)"


@contextlib.contextmanager
def _passive_openmp() -> Iterator[None]:
    # GNU OpenMP reads its spin policy once, when it is loaded; the variable
    # is set for that moment only, so the rest of the process (and its
    # children) keeps the user's environment.
    if any(name in os.environ for name in _OPENMP_WAIT_VARIABLES):
        yield
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        yield
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)


def _warn_if_fallback(layer: str | None) -> None:
    reason = _state["tbb"]
    if layer == "tbb" or not isinstance(reason, str):
        return
    warnings.warn(
        f"bnsgd_numba: oneTBB is not available ({reason}); the parallel CPU kernels run on "
        f"numba's {layer!r} threading layer, which is slower next to NumPy's BLAS; in a "
        "process forked after they ran they run serially. pip install tbb to restore the "
        "default (docs/threading.md).",
        ThreadingLayerWarning,
        stacklevel=4,
    )


def _before_fork() -> None:
    launcher = _state["launcher"] or threading.main_thread().ident
    _state["fork_from_other_thread"] = threading.get_ident() != launcher


def _after_fork_in_child() -> None:
    layer = _state["layer"] or _layer_in_use()
    if layer is None:
        return
    if layer == "omp" or (layer == "tbb" and _state["fork_from_other_thread"]):
        # GNU OpenMP's teams do not survive fork (numba stops a child that
        # uses them), and TBB can only be restarted by the thread that
        # started it; workqueue starts its workers again.
        _state["mode"] = SERIAL
        _state["layer"] = layer


def _prepare() -> None:
    # At import, before anything (this package, the user, a benchmark) can
    # make numba load its layer: a library load, no thread is started.
    import numba

    if str(numba.config.THREADING_LAYER).lower() in ("default", "tbb", "safe", "threadsafe"):
        if _layer_in_use() is None:
            _state["tbb"] = _load_tbb()
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


_prepare()
