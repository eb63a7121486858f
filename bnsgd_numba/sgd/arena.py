"""A model's parameters and gradients as views into two contiguous buffers."""

from __future__ import annotations

import itertools
import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bnsgd_numba._core.checks import FLOAT_DTYPES, check_positive_int


def _fixed(name: str, doc: str) -> property:
    # A read-only attribute: rebinding one of an arena's buffers would let a
    # step read or write past the end of an array of another size.
    def refuse(self: Any, value: Any) -> None:
        raise AttributeError(
            f"{type(self).__name__}.{name} cannot be rebound: the arena's buffers and its "
            f"layout are fixed when it is made; write values in place "
            f"(arena.flat_params[...] = values, arena.params[i][...] = values)"
        )

    return property(operator.attrgetter("_" + name), refuse, doc=doc)


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
    params : tuple of numpy.ndarray
        One writable view per shape into :attr:`flat_params` (zeros at first).
        Assign values in place (``arena.params[i][...] = values``).
    grads : tuple of numpy.ndarray
        One view per shape into :attr:`flat_grads`, where a backward pass
        writes the gradients in place.
    flat_params, flat_grads : numpy.ndarray
        The two 1-D buffers, tensors stored one after the other in order.
    shapes : tuple of tuple of int
    offsets : tuple of int
        Where each tensor starts in the flat buffers.
    sizes : tuple of int
        Elements of each tensor.
    size : int
        Elements of each flat buffer.
    dtype : numpy.dtype

    Every attribute is read-only (rebinding one raises AttributeError): the
    buffers and the layout are fixed when the arena is made, and values are
    written in place. ``SGD`` and the clipping functions check the buffers
    (shape, dtype, writable) at every use.

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
            checked = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype: {dtype!r} is not a NumPy dtype") from None
        if checked not in FLOAT_DTYPES:
            raise TypeError(f"dtype: {checked} is not supported (float32 or float64 expected)")
        if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Iterable):
            raise TypeError(f"shapes: expected a sequence of shapes, got {type(shapes).__name__}")
        self._layout(
            checked,
            tuple(_check_shape(shape, f"shapes[{i}]") for i, shape in enumerate(shapes)),
        )
        self._flat_params = np.zeros(self._size, dtype=self._dtype)
        self._flat_grads = np.zeros(self._size, dtype=self._dtype)
        self._params = self.views(self._flat_params)
        self._grads = self.views(self._flat_grads)

    def _layout(self, dtype: np.dtype, shapes: tuple[tuple[int, ...], ...]) -> None:
        # sizes in Python integers: NumPy's int64 products wrap around silently
        most = np.iinfo(np.intp).max // np.dtype(dtype).itemsize
        sizes = [math.prod(shape) for shape in shapes]
        for i, (shape, size) in enumerate(zip(shapes, sizes, strict=True)):
            if size > most:
                raise ValueError(
                    f"shapes[{i}]: shape {shape} has {size} elements, more than a {dtype} "
                    f"array can hold ({most})"
                )
        offsets = [0, *itertools.accumulate(sizes)]
        if offsets[-1] > most:
            raise ValueError(
                f"shapes: the tensors hold {offsets[-1]} elements in all, more than a "
                f"{dtype} array can hold ({most})"
            )
        self._dtype = np.dtype(dtype)
        self._shapes = shapes
        self._sizes = tuple(sizes)
        self._offsets = tuple(offsets[:-1])
        self._size = offsets[-1]
        self._work_items: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    dtype = _fixed("dtype", "The dtype of both buffers (float32 or float64).")
    shapes = _fixed("shapes", "The shape of each tensor, in order.")
    sizes = _fixed("sizes", "Elements of each tensor.")
    offsets = _fixed("offsets", "Where each tensor starts in the flat buffers.")
    size = _fixed("size", "Elements of each flat buffer.")
    flat_params = _fixed("flat_params", "The 1-D buffer of the parameters.")
    flat_grads = _fixed("flat_grads", "The 1-D buffer of the gradients.")
    params = _fixed("params", "One view per tensor into :attr:`flat_params` (a tuple).")
    grads = _fixed("grads", "One view per tensor into :attr:`flat_grads` (a tuple).")

    def checked_buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(flat_params, flat_grads)`` after checking them for a step.

        Raises
        ------
        ValueError, TypeError
            When either buffer was changed in place so that it no longer
            matches the layout (its shape or dtype), or the parameters were
            made read-only: a kernel would then read or write the wrong
            memory, or fail inside numba.
        """
        params = self._flat_params
        grads = self._flat_grads
        size = self._size
        dtype = self._dtype
        # Strides are not checked: NumPy keeps strides set in place (a
        # deprecated feature) inside the array's memory, and the kernels
        # follow them, so only the shape and dtype can take them elsewhere.
        # ndim and len: the cheapest test of the shape, run at every step.
        if (
            params.ndim == 1
            and grads.ndim == 1
            and len(params) == size
            and len(grads) == size
            and params.dtype is dtype
            and grads.dtype is dtype
            and params.flags.writeable
        ):
            return params, grads
        expected = (size,)
        for name, flat in (("flat_params", params), ("flat_grads", grads)):
            if flat.shape != expected:
                raise ValueError(
                    f"arena.{name}: shape {flat.shape} is no longer the arena's "
                    f"({self._size},) (it was changed in place)"
                )
            if flat.dtype != self._dtype:
                raise TypeError(
                    f"arena.{name}: dtype {flat.dtype} is no longer the arena's {self._dtype}"
                )
        if not params.flags.writeable:
            raise ValueError("arena.flat_params: array is not writable")
        return params, grads

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], dtype: Any = None) -> ParameterArena:
        """Return an arena holding copies of ``arrays`` as its parameters.

        ``dtype`` defaults to the dtype of the first array; every array is
        cast to it.

        Raises
        ------
        TypeError, ValueError
            Naming ``arrays[i]`` for an entry that is not an array of real
            numbers (a complex array would lose its imaginary part), or
            ``arrays`` when it is not a sequence.
        """
        if isinstance(arrays, (str, bytes)) or not isinstance(arrays, Iterable):
            raise TypeError(f"arrays: expected a sequence of arrays, got {type(arrays).__name__}")
        converted = []
        for i, array in enumerate(arrays):
            try:
                array = np.asarray(array)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"arrays[{i}]: not an array of numbers ({exc})") from None
            if array.dtype.kind not in "biuf":
                raise TypeError(
                    f"arrays[{i}]: dtype {array.dtype} is not a real number type "
                    "(float32 or float64 expected)"
                )
            converted.append(array)
        arrays = converted
        if dtype is None:
            dtype = arrays[0].dtype if arrays else np.float32
        arena = cls([array.shape for array in arrays], dtype=dtype)
        for view, array in zip(arena.params, arrays, strict=True):
            view[...] = array
        return arena

    def views(self, flat: np.ndarray) -> tuple[np.ndarray, ...]:
        """Return views of ``flat`` (a buffer of :attr:`size` elements) in this layout."""
        if not isinstance(flat, np.ndarray):
            raise TypeError(f"flat must be a NumPy array, got {type(flat).__name__}")
        if flat.shape != (self._size,):
            raise ValueError(f"flat: shape {flat.shape} is not ({self._size},)")
        return tuple(
            flat[offset : offset + size].reshape(shape)
            for offset, size, shape in zip(self._offsets, self._sizes, self._shapes, strict=True)
        )

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        self._flat_grads.fill(0)

    def work_items(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Start and stop indices in the flat buffers of per-tensor work items.

        Each tensor is split into items of ``chunk`` elements from its own
        start, exactly as a reduction over that tensor alone would split it,
        so a reduction over the arena equals the one over the list of views.
        """
        items = self._work_items.get(chunk)
        if items is None:
            chunk = check_positive_int(chunk, "chunk")
            items = work_items(self._sizes, self._offsets, chunk)
            self._work_items[chunk] = items
        return items

    def __len__(self) -> int:
        return len(self._shapes)

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
        self._layout(host.dtype, host.shapes)
        backend = _backend()
        self._flat_params = backend.to_device(host.flat_params)
        self._flat_grads = backend.to_device(host.flat_grads)
        self._params = self.views(self._flat_params)
        self._grads = self.views(self._flat_grads)

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

    def views(self, flat: Any) -> tuple[Any, ...]:
        """Return device views of ``flat`` (a buffer of :attr:`size` elements) in this layout."""
        if tuple(flat.shape) != (self._size,):
            raise ValueError(f"flat: shape {tuple(flat.shape)} is not ({self._size},)")
        return tuple(
            flat[offset : offset + size].reshape(shape)
            for offset, size, shape in zip(self._offsets, self._sizes, self._shapes, strict=True)
        )

    def checked_buffers(self) -> tuple[Any, Any]:
        """Return ``(flat_params, flat_grads)`` after checking their shape and dtype.

        Raises
        ------
        ValueError, TypeError
            When either buffer's shape, strides or dtype were changed in place.
        """
        expected = (self._size,)
        strides = (self._dtype.itemsize,)
        for name, flat in (("flat_params", self._flat_params), ("flat_grads", self._flat_grads)):
            if tuple(flat.shape) != expected or (self._size > 1 and tuple(flat.strides) != strides):
                raise ValueError(
                    f"arena.{name}: shape {tuple(flat.shape)} is no longer the arena's "
                    f"contiguous ({self._size},) buffer (it was changed in place)"
                )
            if np.dtype(flat.dtype) != self._dtype:
                raise TypeError(
                    f"arena.{name}: dtype {np.dtype(flat.dtype)} is no longer the arena's "
                    f"{self._dtype}"
                )
        return self._flat_params, self._flat_grads

    def zero_grad(self) -> None:
        """Set every gradient to zero (one launch)."""
        from bnsgd_numba.sgd import _cuda_driver

        _cuda_driver.fill_zero(self._flat_grads)

    def __repr__(self) -> str:
        return (
            f"DeviceParameterArena({len(self)} tensors, {self.size} elements, dtype={self.dtype})"
        )


def _backend() -> Any:
    # numba-cuda is imported when a device arena is first made, not with this module
    from bnsgd_numba._core import cuda

    return cuda
