"""The one module that imports numba-cuda: everything CUDA goes through here.

Importing this module never fails: without numba-cuda, or without a GPU and
without the simulator, :data:`cuda` is None or unusable and
:func:`require_cuda` raises :class:`CudaUnavailableError`, the one error a
caller sees when it passes a device array to a machine that cannot run it.
Switching the backend (numba-cuda is in maintenance mode; its successor
numba-cuda-mlir has no simulator) means changing this module only.

What the rest of the package takes from here:

- :data:`cuda`: the ``numba.cuda`` module (real or simulated), for
  ``@cuda.jit`` kernels and their intrinsics;
- :func:`gpu_kernel` / :func:`gpu_device_function`: the one way kernels are
  compiled (``fastmath`` off, see below);
- :func:`shfl_down3`: a warp shuffle of three values, which the simulator
  (it has no warp intrinsics) emulates through shared memory, same results;
- array helpers: :func:`as_device_array`, :func:`device_empty`,
  :func:`strided_view`, :func:`to_host`, :func:`to_device`.

Notes
-----
``numba.cuda.jit(fastmath=...)`` does not take LLVM flag sets such as
``config.FASTMATH``: any true value switches NVVM to flush-to-zero and
approximate division and square root, which would change ``1/sqrt(var + eps)``
and the non-finite checks. GPU kernels are therefore compiled with
``fastmath=False``; NVVM contracts multiply-adds into FMA by default, which is
the ``contract`` half of ``config.FASTMATH``, and reductions have a fixed order
by construction, so ``reassoc`` is not wanted either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

try:  # numba-cuda provides numba.cuda; the old built-in target also would
    from numba import cuda
except Exception as exc:  # ImportError, or a broken CUDA install
    cuda = None
    _IMPORT_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = None


def _simulated() -> bool:
    if cuda is None:
        return False
    try:
        from numba.core import config as numba_config

        return bool(getattr(numba_config, "ENABLE_CUDASIM", 0))
    except Exception:
        return False


SIMULATOR: bool = _simulated()
"""True when ``numba.cuda`` is the CUDA simulator (NUMBA_ENABLE_CUDASIM=1)."""

WARP_SIZE = 32
"""Threads per warp; block sizes must be multiples of it."""

MAX_THREADS_PER_BLOCK = 1024
"""The CUDA limit, also the size of the simulator's shuffle scratch."""


class CudaUnavailableError(ImportError):
    """A CUDA array was passed, but this process cannot run CUDA kernels."""


def cuda_available() -> bool:
    """Return True when CUDA kernels can run here (a GPU, or the simulator).

    Returns
    -------
    bool
        False when numba-cuda is not installed, or no GPU and driver are
        found and NUMBA_ENABLE_CUDASIM is not set. Never raises.
    """
    if cuda is None:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def unavailable_reason() -> str:
    """Return why CUDA is not available (empty when it is)."""
    if cuda is None:
        return (
            f"numba-cuda could not be imported ({_IMPORT_ERROR}); install it with "
            "`pip install bnsgd-numba[cuda]`"
        )
    if not cuda_available():
        return (
            "no CUDA GPU or driver was found (set NUMBA_ENABLE_CUDASIM=1 before numba is "
            "imported to run the kernels in the CUDA simulator)"
        )
    return ""


def require_cuda(caller: str) -> None:
    """Raise :class:`CudaUnavailableError` naming ``caller`` unless CUDA can run.

    Parameters
    ----------
    caller : str
        The public function that received a device array.
    """
    if cuda is not None and cuda_available():
        return
    raise CudaUnavailableError(
        f"{caller}: got a CUDA array, but CUDA kernels cannot run here: "
        f"{unavailable_reason()}; pass NumPy arrays to use the CPU kernels"
    )


def gpu_kernel(function: Callable[..., Any]) -> Any:
    """Compile ``function`` as a ``@cuda.jit`` kernel (lazily, per signature)."""
    return cuda.jit(fastmath=False)(function)


def gpu_device_function(function: Callable[..., Any]) -> Any:
    """Compile ``function`` as a ``@cuda.jit(device=True)`` function."""
    return cuda.jit(device=True, fastmath=False)(function)


# --- warp shuffle ---------------------------------------------------------

if cuda is not None and not SIMULATOR:

    @cuda.jit(device=True, fastmath=False)
    def shfl_down3(a, b, c, delta):
        """Values of ``a``, ``b``, ``c`` at the lane ``delta`` up (own values past the warp's end).

        ``cuda.shfl_down_sync`` with a full mask: all 32 lanes must call it.
        """
        return (
            cuda.shfl_down_sync(0xFFFFFFFF, a, delta),
            cuda.shfl_down_sync(0xFFFFFFFF, b, delta),
            cuda.shfl_down_sync(0xFFFFFFFF, c, delta),
        )

elif cuda is not None:
    import threading

    @cuda.jit(device=True)
    def shfl_down3(a, b, c, delta):
        """The simulator's stand-in for three ``shfl_down_sync``, through shared memory.

        Same results as the real shuffles. Every thread of the block must call
        it together (the kernels keep the control flow around shuffles
        uniform over the block, which a full-mask shuffle needs of the warp
        anyway). Two scratch buffers used in turn need one barrier per call.
        """
        scratch = cuda.shared.array((2, 3, MAX_THREADS_PER_BLOCK), np.float64)
        thread = threading.current_thread()
        turn = getattr(thread, "_bnsgd_shuffle_turn", 0)
        thread._bnsgd_shuffle_turn = 1 - turn
        tid = cuda.threadIdx.x + cuda.blockDim.x * (
            cuda.threadIdx.y + cuda.blockDim.y * cuda.threadIdx.z
        )
        scratch[turn, 0, tid] = a
        scratch[turn, 1, tid] = b
        scratch[turn, 2, tid] = c
        cuda.syncthreads()
        if tid % WARP_SIZE + delta < WARP_SIZE:
            source = tid + delta
            return scratch[turn, 0, source], scratch[turn, 1, source], scratch[turn, 2, source]
        return a, b, c

else:
    shfl_down3 = None


# --- arrays ---------------------------------------------------------------


def as_device_array(obj: Any) -> Any:
    """Return ``obj`` as a numba device array without copying.

    numba device arrays (and the simulator's) are returned as they are;
    other objects with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA
    tensors) are wrapped as views of the same memory.
    """
    if getattr(type(obj), "__cuda_ndarray__", False) is True:
        return obj
    return cuda.as_cuda_array(obj)


def device_empty(shape: Any, dtype: Any) -> Any:
    """Return an uninitialized C-contiguous device array."""
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def to_device(array: np.ndarray) -> Any:
    """Copy a host array to a new device array."""
    return cuda.to_device(np.ascontiguousarray(array))


def to_host(array: Any) -> np.ndarray:
    """Copy a device array (or anything with the CUDA array interface) to the host."""
    return as_device_array(array).copy_to_host()


def strided_view(array: Any, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
    """Return a view of ``array``'s memory with ``shape`` and byte ``strides``.

    The caller guarantees that the view stays inside ``array``'s memory (it
    is used to see a dense channels-last array as (R, C) and back).
    """
    if SIMULATOR:
        host = array._ary
        view = np.lib.stride_tricks.as_strided(host, shape=shape, strides=strides)
        return type(array)(view, stream=array.stream)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(shape, strides, array.dtype, stream=array.stream, gpu_data=array.gpu_data)


def flat_view(array: Any) -> Any:
    """Return a 1-D view of a dense device array's memory, in memory order.

    ``array`` must be dense (C-contiguous, or a permutation of a
    C-contiguous array's axes with its first element at the lowest
    address, as a channels-last view). Cheaper than ``reshape``: one
    DeviceNDArray is built directly on the same memory.
    """
    size = math.prod(tuple(array.shape))
    itemsize = np.dtype(array.dtype).itemsize
    if SIMULATOR:
        if array.is_c_contiguous():
            return array.reshape(size)
        return strided_view(array, (size,), (itemsize,))
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    return DeviceNDArray(
        (size,), (itemsize,), array.dtype, stream=array.stream, gpu_data=array.gpu_data
    )


def row_views(array: Any) -> tuple[Any, ...]:
    """Return the rows of a C-contiguous 2-D device array as 1-D views (no copy)."""
    rows, columns = (int(n) for n in array.shape)
    if SIMULATOR:
        return tuple(array[k] for k in range(rows))
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    itemsize = np.dtype(array.dtype).itemsize
    nbytes = columns * itemsize
    return tuple(
        DeviceNDArray(
            (columns,),
            (itemsize,),
            array.dtype,
            stream=array.stream,
            gpu_data=array.gpu_data.view(k * nbytes, (k + 1) * nbytes),
        )  # fmt: skip
        for k in range(rows)
    )


def permuted(array: Any, axes: tuple[int, ...]) -> Any:
    """Return a view of a device array with its axes permuted (as ``np.transpose``)."""
    shape = tuple(array.shape)
    strides = array_strides(array)
    return strided_view(array, tuple(shape[a] for a in axes), tuple(strides[a] for a in axes))


def array_strides(array: Any) -> tuple[int, ...]:
    """Byte strides of a device array (numba's or the simulator's)."""
    return tuple(int(s) for s in array.strides)


def _byte_extent(array: Any) -> tuple[int, int]:
    # [first byte, one past the last byte] of a strided view, from its own
    # pointer and strides: the driver's address range would be the whole
    # allocation, which PyTorch's caching allocator shares between tensors.
    if _is_numba_array(array):
        # numba's own arrays: the same figures without building the interface dict
        start = int(array.device_ctypes_pointer.value or 0)
        shape = tuple(array.shape)
        strides = tuple(array.strides)
        if math.prod(shape) == 0:
            return start, start
        itemsize = np.dtype(array.dtype).itemsize
    else:
        interface = array.__cuda_array_interface__
        start = int(interface["data"][0] or 0)
        shape = tuple(interface["shape"])
        itemsize = np.dtype(interface["typestr"]).itemsize
        if math.prod(shape) == 0:
            return start, start
        strides = interface.get("strides") or _c_strides(shape, itemsize)
    low = sum(min(0, (n - 1) * st) for n, st in zip(shape, strides, strict=True))
    high = sum(max(0, (n - 1) * st) for n, st in zip(shape, strides, strict=True))
    return start + low, start + high + itemsize


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides = []
    step = itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def overlaps(a: Any, b: Any) -> bool:
    """Whether the memory spans of two device arrays (views) overlap."""
    if SIMULATOR:
        return bool(np.may_share_memory(a._ary, b._ary))
    a_start, a_end = _byte_extent(a)
    b_start, b_end = _byte_extent(b)
    return a_start < b_end and b_start < a_end


def same_memory(a: Any, b: Any) -> bool:
    """Whether two device arrays map every index to the same address (a full overlap)."""
    if tuple(a.shape) != tuple(b.shape) or np.dtype(a.dtype) != np.dtype(b.dtype):
        return False
    if array_strides(a) != array_strides(b):
        return False
    if SIMULATOR:
        return a._ary.__array_interface__["data"][0] == b._ary.__array_interface__["data"][0]
    return _byte_extent(a) == _byte_extent(b)


def _is_numba_array(obj: Any) -> bool:
    # numba's DeviceNDArray (not the simulator's arrays, which lack the interface)
    return not SIMULATOR and getattr(type(obj), "__cuda_ndarray__", False) is True


def readonly(obj: Any) -> bool:
    """Whether ``obj``'s CUDA array interface marks it read-only."""
    if _is_numba_array(obj):
        return False  # numba's arrays are always writable
    interface = getattr(obj, "__cuda_array_interface__", None)
    if not isinstance(interface, dict):
        return False
    data = interface.get("data")
    return bool(data[1]) if isinstance(data, tuple) and len(data) > 1 else False


def synchronize() -> None:
    """Wait for every kernel launched so far."""
    cuda.synchronize()


def current_device_id() -> int:
    """Id of numba's current CUDA device (0 under the simulator)."""
    if SIMULATOR:
        return 0
    return int(cuda.get_current_device().id)


def device_name() -> str:
    """Name of the current device ("CUDA simulator" under the simulator)."""
    if SIMULATOR:
        return "CUDA simulator"
    name = cuda.get_current_device().name
    return name.decode() if isinstance(name, bytes) else str(name)


def driver_version() -> str:
    """The CUDA driver's version as numba sees it ("simulator" under the simulator)."""
    if SIMULATOR:
        return "simulator"
    from numba.cuda.cudadrv.driver import driver

    return ".".join(str(part) for part in driver.get_version())


def simulator_requested() -> bool:
    """Whether NUMBA_ENABLE_CUDASIM is set in the environment."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
