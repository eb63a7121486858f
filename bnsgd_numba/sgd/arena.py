"""A model's parameters and gradients as views into two contiguous buffers."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bnsgd_numba._core.checks import FLOAT_DTYPES


def _check_shape(shape: Any, name: str) -> tuple[int, ...]:
    if isinstance(shape, (numbers.Integral, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(
            f"{name}: a shape must be an int or a tuple of ints, got {type(shape).__name__}"
        ) from None
    for dim in dims:
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (numbers.Integral, np.integer)):
            raise TypeError(f"{name}: shape {dims!r} holds a non-integer dimension {dim!r}")
        if dim < 0:
            raise ValueError(f"{name}: shape {dims!r} has a negative dimension")
    return tuple(int(dim) for dim in dims)


def work_items(
    sizes: Sequence[int], offsets: Sequence[int], chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop indices of work items of ``chunk`` elements, per tensor.

    Tensor ``k`` covers ``[offsets[k], offsets[k] + sizes[k])``; its items start
    at its own first element, so the split of a tensor does not depend on what
    lies around it.
    """
    starts = [np.zeros(0, np.int64)]
    stops = [np.zeros(0, np.int64)]
    for offset, size in zip(offsets, sizes, strict=True):
        first = np.arange(offset, offset + size, chunk, dtype=np.int64)
        starts.append(first)
        stops.append(np.minimum(first + chunk, offset + size))
    return np.concatenate(starts), np.concatenate(stops)


class ParameterArena:
    """Parameters and gradients of a model, packed into two contiguous buffers.

    Parameters
    ----------
    shapes : iterable of tuple of int (or int)
        The shape of each parameter tensor, in order.
    dtype : numpy dtype
        float32 (default) or float64.

    Attributes
    ----------
    params : list of numpy.ndarray
        One writable view per shape into :attr:`flat_params` (zeros at first).
        Assign values in place (``arena.params[i][...] = values``): rebinding
        the list element would detach it from the arena.
    grads : list of numpy.ndarray
        One view per shape into :attr:`flat_grads`, where a backward pass
        writes the gradients in place.
    flat_params, flat_grads : numpy.ndarray
        The two 1-D buffers, tensors stored one after the other in order.
    shapes : tuple of tuple of int
    offsets : tuple of int
        Where each tensor starts in the flat buffers.
    sizes : tuple of int
        Elements of each tensor.

    Notes
    -----
    ``SGD(arena, ...)`` keeps its momentum in a third buffer laid out the same
    way, and its ``step()`` updates every tensor in one kernel call over the
    three buffers (what Apex's multi_tensor_apply and PyTorch's ``fused=True``
    do on the GPU). :func:`~bnsgd_numba.clip_grad_norm` accepts an arena too and
    reduces its gradients in one call. The results are bitwise those of the
    same operations over the lists of views.
    """

    def __init__(self, shapes: Iterable[Any], dtype: Any = np.float32) -> None:
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype: {dtype!r} is not a NumPy dtype") from None
        if self.dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype: {self.dtype} is not supported (float32 or float64 expected)")
        if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Iterable):
            raise TypeError(f"shapes: expected a sequence of shapes, got {type(shapes).__name__}")
        self.shapes = tuple(_check_shape(shape, f"shapes[{i}]") for i, shape in enumerate(shapes))
        sizes = [int(np.prod(shape, dtype=np.int64)) for shape in self.shapes]
        offsets = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
        self.sizes = tuple(sizes)
        self.offsets = tuple(int(offset) for offset in offsets[:-1])
        self.size = int(offsets[-1])
        self.flat_params = np.zeros(self.size, dtype=self.dtype)
        self.flat_grads = np.zeros(self.size, dtype=self.dtype)
        self.params = self.views(self.flat_params)
        self.grads = self.views(self.flat_grads)
        self._work_items: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], dtype: Any = None) -> ParameterArena:
        """Return an arena holding copies of ``arrays`` as its parameters.

        ``dtype`` defaults to the dtype of the first array; every array is
        cast to it.
        """
        arrays = [np.asarray(array) for array in arrays]
        if dtype is None:
            dtype = arrays[0].dtype if arrays else np.float32
        arena = cls([array.shape for array in arrays], dtype=dtype)
        for view, array in zip(arena.params, arrays, strict=True):
            view[...] = array
        return arena

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """Return views of ``flat`` (a buffer of :attr:`size` elements) in this layout."""
        if flat.shape != (self.size,):
            raise ValueError(f"flat: shape {flat.shape} is not ({self.size},)")
        return [
            flat[offset : offset + size].reshape(shape)
            for offset, size, shape in zip(self.offsets, self.sizes, self.shapes, strict=True)
        ]

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        self.flat_grads.fill(0)

    def work_items(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Start and stop indices in the flat buffers of per-tensor work items.

        Each tensor is split into items of ``chunk`` elements from its own
        start, exactly as a reduction over that tensor alone would split it,
        so a reduction over the arena equals the one over the list of views.
        """
        items = self._work_items.get(chunk)
        if items is None:
            items = work_items(self.sizes, self.offsets, chunk)
            self._work_items[chunk] = items
        return items

    def __len__(self) -> int:
        return len(self.shapes)

    def __repr__(self) -> str:
        return f"ParameterArena({len(self)} tensors, {self.size} elements, dtype={self.dtype})"


class DeviceParameterArena(ParameterArena):
    """A :class:`~bnsgd_numba.ParameterArena` whose two buffers live on the GPU.

    Parameters
    ----------
    shapes : iterable of tuple of int (or int)
        The shape of each parameter tensor, in order.
    dtype : numpy dtype
        float32 (default) or float64.

    Notes
    -----
    ``params``, ``grads``, ``flat_params`` and ``flat_grads`` are numba
    device arrays (the views share the flat buffers). ``SGD(arena, ...)``
    updates every tensor in one grid-stride launch over the flat buffers.
    Build one from host arrays with :meth:`from_arrays` or from a host arena
    with :meth:`from_host`; :meth:`to_host` copies it back.
    """

    def __init__(self, shapes: Iterable[Any], dtype: Any = np.float32) -> None:
        _backend().require_cuda("DeviceParameterArena")
        host = ParameterArena(shapes, dtype)
        self._adopt(host)

    def _adopt(self, host: ParameterArena) -> None:
        self.dtype = host.dtype
        self.shapes = host.shapes
        self.sizes = host.sizes
        self.offsets = host.offsets
        self.size = host.size
        backend = _backend()
        self.flat_params = backend.to_device(host.flat_params)
        self.flat_grads = backend.to_device(host.flat_grads)
        self.params = self.views(self.flat_params)
        self.grads = self.views(self.flat_grads)
        self._work_items = {}

    @classmethod
    def from_host(cls, arena: ParameterArena) -> DeviceParameterArena:
        """Return a device copy of a host arena (parameters and gradients)."""
        _backend().require_cuda("DeviceParameterArena.from_host")
        device = cls.__new__(cls)
        device._adopt(arena)
        return device

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], dtype: Any = None) -> DeviceParameterArena:
        """Return a device arena holding copies of host ``arrays`` as its parameters."""
        return cls.from_host(ParameterArena.from_arrays(arrays, dtype))

    def to_host(self) -> ParameterArena:
        """Return a host :class:`~bnsgd_numba.ParameterArena` with copies of both buffers."""
        host = ParameterArena(self.shapes, self.dtype)
        host.flat_params[...] = self.flat_params.copy_to_host()
        host.flat_grads[...] = self.flat_grads.copy_to_host()
        return host

    def views(self, flat: Any) -> list[Any]:
        """Return device views of ``flat`` (a buffer of :attr:`size` elements) in this layout."""
        if tuple(flat.shape) != (self.size,):
            raise ValueError(f"flat: shape {tuple(flat.shape)} is not ({self.size},)")
        return [
            flat[offset : offset + size].reshape(shape)
            for offset, size, shape in zip(self.offsets, self.sizes, self.shapes, strict=True)
        ]

    def zero_grad(self) -> None:
        """Set every gradient to zero (one launch)."""
        from bnsgd_numba.sgd import _cuda_driver

        _cuda_driver.fill_zero(self.flat_grads)

    def __repr__(self) -> str:
        return (
            f"DeviceParameterArena({len(self)} tensors, {self.size} elements, dtype={self.dtype})"
        )


def _backend() -> Any:
    # numba-cuda is imported when a device arena is first made, not with this module
    from bnsgd_numba._core import cuda

    return cuda
