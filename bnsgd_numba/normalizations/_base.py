"""What the normalization layers share: argument checks, parameters, state dicts."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from bnsgd_numba._core.checks import (
    FLOAT_DTYPES,
    check_nonfinite_policy,
    check_positive_int,
    check_real,
    check_unit_momentum,
)
from bnsgd_numba._core.checks import check_float_dtype as check_dtype
from bnsgd_numba._core.checks import check_positive_eps as check_positive_eps
from bnsgd_numba._core.state import load_checked_state

NO_ARRAY = {dtype: np.empty(0, dtype=dtype) for dtype in FLOAT_DTYPES}

__all__ = [
    "NO_ARRAY",
    "NormLayer",
    "channel_axis_index",
    "check_axis",
    "check_dtype",
    "check_momentum",
    "check_nonfinite_policy",
    "check_positive_eps",
    "check_positive_int",
    "check_real",
    "float_input",
    "matching_dy",
    "device_input",
]


def check_momentum(momentum: Any) -> float | None:
    """Return ``momentum`` (None, or a float in [0, 1]), or raise ValueError."""
    return None if momentum is None else check_unit_momentum(momentum)


def float_input(value: Any, name: str, dtype: np.dtype, min_rank: int = 2) -> np.ndarray:
    """Return ``value`` as a NumPy array of ``dtype`` and rank >= ``min_rank``.

    Raises
    ------
    TypeError
        When the dtype is not ``dtype``.
    ValueError
        When the rank is too small.
    """
    array = np.asarray(value)
    if array.dtype != dtype:
        raise TypeError(f"{name}: dtype must be {dtype} (the layer's dtype), got {array.dtype}")
    if array.ndim < min_rank:
        raise ValueError(
            f"{name}: expected an array of rank >= {min_rank}, got shape {array.shape}"
        )
    return array


def device_input(value: Any, name: str, dtype: np.dtype, min_rank: int, caller: str) -> Any:
    """Return ``value`` as a numba device array of ``dtype`` and rank >= ``min_rank``."""
    from bnsgd_numba._core import cuda as backend

    backend.require_cuda(caller)
    array = backend.as_device_array(value)
    if np.dtype(array.dtype) != dtype:
        raise TypeError(
            f"{name}: dtype must be {dtype} (the layer's dtype), got {np.dtype(array.dtype)}"
        )
    if len(array.shape) < min_rank:
        raise ValueError(
            f"{name}: expected an array of rank >= {min_rank}, got shape {tuple(array.shape)}"
        )
    return array


def matching_dy(dy: Any, x: Any) -> Any:
    """Return ``dy`` as an array shaped and typed like the saved input ``x``, on its side."""
    from bnsgd_numba._core.arrays import is_device_array

    on_device = is_device_array(x)
    if is_device_array(dy) != on_device:
        raise TypeError(
            "dy: host and device arrays cannot be mixed: the forward input was "
            + ("a CUDA array" if on_device else "a host array")
        )
    if on_device:
        from bnsgd_numba._core import cuda as backend

        dy = backend.as_device_array(dy)
    else:
        dy = np.asarray(dy)
    if np.dtype(dy.dtype) != np.dtype(x.dtype):
        raise TypeError(f"dy: dtype {dy.dtype} does not match the forward input ({x.dtype})")
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(
            f"dy: shape {tuple(dy.shape)} does not match the forward input {tuple(x.shape)}"
        )
    return dy


def check_axis(channel_axis: Any) -> int:
    """Return ``channel_axis`` as an int other than 0 (axis 0 is the batch)."""
    try:
        axis = operator.index(channel_axis)
    except TypeError:
        raise TypeError(f"channel_axis must be an integer, got {channel_axis!r}") from None
    if axis == 0:
        raise ValueError("channel_axis must not be 0: axis 0 is the batch axis")
    return axis


def channel_axis_index(channel_axis: Any, ndim: int, *, allow_batch: bool = False) -> int:
    """Return ``channel_axis`` in ``range(ndim)``; axis 0 is the batch unless allowed."""
    from bnsgd_numba._core.layouts import normalize_channel_axis

    axis = normalize_channel_axis(channel_axis, ndim)
    if axis == 0 and not allow_batch:
        raise ValueError("channel_axis must not be 0: axis 0 is the batch axis")
    return axis


class NormLayer:
    """Base of the normalization layers: parameters, gradients and state dicts.

    Subclasses set ``dtype``, the arrays named in ``PARAMETERS`` (with a
    ``grad_`` twin each) and ``BUFFERS`` (None when absent), and
    ``TRACKS_BATCHES`` when ``num_batches_tracked`` is part of the state.
    """

    PARAMETERS: tuple[str, ...] = ("weight", "bias")
    BUFFERS: tuple[str, ...] = ()
    dtype: np.dtype
    num_batches_tracked: int = 0
    _on_device: bool = False

    @property
    def on_device(self) -> bool:
        """Whether the layer's arrays are CUDA device arrays (see :meth:`to_device`)."""
        return self._on_device

    def _array_names(self) -> list[str]:
        names = [*self.PARAMETERS, *(f"grad_{n}" for n in ("weight", "bias")), *self.BUFFERS]
        return [n for n in dict.fromkeys(names) if getattr(self, n, None) is not None]

    def to_device(self) -> NormLayer:
        """Move parameters, gradients and buffers to the GPU; return self.

        The layer then takes CUDA arrays (numba device arrays, or anything
        with ``__cuda_array_interface__``) and returns device arrays.

        Raises
        ------
        CudaUnavailableError
            When CUDA kernels cannot run here (no GPU, no simulator).
        """
        from bnsgd_numba._core import cuda as backend

        name = type(self).__name__
        backend.require_cuda(f"{name}.to_device")
        if not self._on_device:
            for key in self._array_names():
                setattr(self, key, backend.to_device(getattr(self, key)))
            self._on_device = True
            self._saved = None
        return self

    def to_host(self) -> NormLayer:
        """Move the layer's arrays back to the host (NumPy arrays); return self."""
        if self._on_device:
            for key in self._array_names():
                setattr(self, key, getattr(self, key).copy_to_host())
            self._on_device = False
            self._saved = None
        return self

    def _check_side(self, x: Any, name: str = "x") -> bool:
        """Return whether ``x`` is a CUDA array; raise TypeError if the layer is elsewhere."""
        from bnsgd_numba._core.arrays import is_device_array

        device = is_device_array(x)
        if device != self._on_device:
            where = "the GPU" if self._on_device else "the host"
            move = "to_host()" if self._on_device else "to_device()"
            raise TypeError(
                f"{type(self).__name__}: the layer's arrays are on {where} but {name} is not; "
                f"move {name}, or call the layer's {move}"
            )
        return device

    def _tracks_batches(self) -> bool:
        return False

    def parameters(self) -> list[np.ndarray]:
        """Return the trainable arrays (those present of ``PARAMETERS``)."""
        return [getattr(self, n) for n in self.PARAMETERS if getattr(self, n, None) is not None]

    def gradients(self) -> list[np.ndarray]:
        """Return the gradient arrays, aligned with :meth:`parameters`."""
        return [
            getattr(self, f"grad_{n}")
            for n in self.PARAMETERS
            if getattr(self, n, None) is not None
        ]

    def _state_arrays(self) -> list[str]:
        names = [*self.PARAMETERS, *self.BUFFERS]
        return [n for n in names if getattr(self, n, None) is not None]

    def _host_copy(self, array: Any) -> np.ndarray:
        return array.copy_to_host() if self._on_device else np.array(array, copy=True)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Return copies of the parameters and buffers (PyTorch's keys)."""
        state = {name: self._host_copy(getattr(self, name)) for name in self._state_arrays()}
        if self._tracks_batches():
            state["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy ``state`` into the layer, in place; check all of it first.

        Raises
        ------
        KeyError
            When a key is missing or unexpected.
        ValueError, TypeError
            When an entry has the wrong shape or dtype. Nothing is modified.
        """
        load_checked_state(self, state, self._state_arrays(), self._on_device)

    def _set_gradients(self, grad_weight: Any, grad_bias: Any) -> None:
        for name, value in (("weight", grad_weight), ("bias", grad_bias)):
            if getattr(self, name, None) is None or value is None:
                continue
            target = getattr(self, f"grad_{name}")
            if self._on_device:
                from bnsgd_numba._core.arrays import is_device_array

                if not is_device_array(value):
                    value = np.ascontiguousarray(value, dtype=self.dtype).reshape(target.shape)
                target.copy_to_device(value)
            else:
                target[...] = np.reshape(value, target.shape)

    def _saved_input(self) -> Any:
        saved = getattr(self, "_saved", None)
        if saved is None:
            raise RuntimeError("backward() called before forward()")
        return saved

    def __call__(self, x: Any, training: bool = True) -> Any:
        return self.forward(x, training)  # type: ignore[attr-defined]
