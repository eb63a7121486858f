"""The base of every normalization layer: parameters, running statistics, state, checks.

:class:`NormLayer` is what :class:`~bnsgd_numba.BatchNorm`, its distributed
twin and every built-in normalization plugin share: the constructor checks
and arrays, the host/device moves, ``parameters``/``gradients``,
``state_dict``/``load_state_dict``, ``__repr__`` and the input checks. It
sits below the concept packages and imports none of them, so that
``batch_norm`` and ``normalizations`` (which builds on ``batch_norm``) both
derive from it.
"""

from __future__ import annotations

import operator
from typing import Any, TypeVar

import numpy as np

from bnsgd_numba._core.arrays import is_device_array
from bnsgd_numba._core.checks import (
    FLOAT_DTYPES,
    check_float_dtype,
    check_nonfinite_policy,
    check_positive_eps,
    check_positive_int,
    check_unit_momentum,
)
from bnsgd_numba._core.layouts import normalize_channel_axis

NO_ARRAY = {dtype: np.empty(0, dtype=dtype) for dtype in FLOAT_DTYPES}
"""The empty vector the kernels take for an absent ``weight`` or ``bias``, per dtype."""

_Layer = TypeVar("_Layer", bound="NormLayer")


def check_momentum(momentum: Any) -> float | None:
    """Return ``momentum`` (None, or a float in [0, 1]), or raise ValueError."""
    return None if momentum is None else check_unit_momentum(momentum)


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
    axis = normalize_channel_axis(channel_axis, ndim)
    if axis == 0 and not allow_batch:
        raise ValueError("channel_axis must not be 0: axis 0 is the batch axis")
    return axis


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


class NormLayer:
    """Base of the normalization layers: parameters, running statistics and state.

    A subclass's constructor checks its own arguments and calls
    :meth:`_init_channels` (a per-channel layer with optional running
    statistics), or :meth:`_init_affine` and :meth:`_init_running_statistics`,
    or :meth:`_init_parameters` directly. ``PARAMETERS`` names the trainable
    arrays (each with a ``grad_`` twin), ``BUFFERS`` the other arrays of the
    state (None when absent); ``num_batches_tracked`` is part of the state
    when the layer keeps running statistics and ``TRACKS_BATCHES`` is true.
    ``__repr__`` shows the attributes named in ``REPR_ARGS`` (positionally)
    and ``REPR_KEYWORDS``, then the dtype.
    """

    PARAMETERS: tuple[str, ...] = ("weight", "bias")
    BUFFERS: tuple[str, ...] = ()
    TRACKS_BATCHES = True
    REPR_ARGS: tuple[str, ...] = ("num_features",)
    REPR_KEYWORDS: tuple[str, ...] = ()
    dtype: np.dtype
    weight: Any = None
    bias: Any = None
    grad_weight: Any = None
    grad_bias: Any = None
    num_batches_tracked: int = 0
    _on_device: bool = False
    _saved: tuple[Any, ...] | None = None

    # -- construction ------------------------------------------------------------------

    def _init_parameters(self, shape: tuple[int, ...], *, weight: bool, bias: bool) -> None:
        """Create ``weight`` (ones), ``bias`` (zeros) and their gradients in ``self.dtype``."""
        self.weight = np.ones(shape, self.dtype) if weight else None
        self.bias = np.zeros(shape, self.dtype) if bias else None
        self.grad_weight = np.zeros(shape, self.dtype) if weight else None
        self.grad_bias = np.zeros(shape, self.dtype) if bias else None
        self._saved = None

    def _check_channel_axis(self, channel_axis: Any) -> int:
        return check_axis(channel_axis)

    def _init_affine(
        self, channels: int, eps: Any, affine: Any, channel_axis: Any, dtype: Any
    ) -> None:
        """Check and set ``eps``, ``affine``, ``channel_axis``, ``dtype``; per-channel parameters."""
        self.eps = check_positive_eps(eps)
        self.affine = bool(affine)
        self.channel_axis = self._check_channel_axis(channel_axis)
        self.dtype = check_float_dtype(dtype)
        self._init_parameters((channels,), weight=self.affine, bias=self.affine)

    def _init_running_statistics(
        self, channels: int, momentum: Any, track_running_stats: Any, on_nonfinite: Any
    ) -> None:
        """Check and set ``momentum``, ``on_nonfinite``; ``running_mean``/``running_var``."""
        self.momentum = check_momentum(momentum)
        self.on_nonfinite = check_nonfinite_policy(on_nonfinite)
        self.track_running_stats = bool(track_running_stats)
        tracked = self.track_running_stats
        self.running_mean = np.zeros(channels, self.dtype) if tracked else None
        self.running_var = np.ones(channels, self.dtype) if tracked else None
        self.num_batches_tracked = 0
        self.skipped_updates = 0

    def _init_channels(
        self,
        num_features: Any,
        eps: Any,
        momentum: Any,
        affine: Any,
        track_running_stats: Any,
        channel_axis: Any,
        dtype: Any,
        on_nonfinite: Any,
    ) -> None:
        """The constructor of a BatchNorm-like layer: every check, then the arrays."""
        self.num_features = check_positive_int(num_features, "num_features")
        self._init_affine(self.num_features, eps, affine, channel_axis, dtype)
        self._init_running_statistics(
            self.num_features, momentum, track_running_stats, on_nonfinite
        )

    # -- host and device ---------------------------------------------------------------

    @property
    def on_device(self) -> bool:
        """Whether the layer's arrays are CUDA device arrays (see :meth:`to_device`)."""
        return self._on_device

    def _array_names(self) -> list[str]:
        names = [*self.PARAMETERS, "grad_weight", "grad_bias", *self.BUFFERS]
        return [n for n in dict.fromkeys(names) if getattr(self, n, None) is not None]

    def to_device(self: _Layer) -> _Layer:
        """Move parameters, gradients and buffers (running statistics) to the GPU; return self.

        The layer then takes CUDA arrays (numba device arrays, or anything
        with ``__cuda_array_interface__``) and returns device arrays.

        Raises
        ------
        CudaUnavailableError
            When CUDA kernels cannot run here (no GPU, no simulator).
        """
        from bnsgd_numba._core import cuda as backend

        backend.require_cuda(f"{type(self).__name__}.to_device")
        if not self._on_device:
            for key in self._array_names():
                setattr(self, key, backend.to_device(getattr(self, key)))
            self._on_device = True
            self._saved = None
        return self

    def to_host(self: _Layer) -> _Layer:
        """Move the layer's arrays back to the host (NumPy arrays); return self."""
        if self._on_device:
            for key in self._array_names():
                setattr(self, key, getattr(self, key).copy_to_host())
            self._on_device = False
            self._saved = None
        return self

    def _check_side(self, x: Any, name: str = "x") -> bool:
        """Return whether ``x`` is a CUDA array; raise TypeError if the layer is elsewhere."""
        device = is_device_array(x)
        if device != self._on_device:
            where = "the GPU" if self._on_device else "the host"
            move = "to_host()" if self._on_device else "to_device()"
            raise TypeError(
                f"{type(self).__name__}: the layer's arrays are on {where} but {name} is not; "
                f"move {name}, or call the layer's {move}"
            )
        return device

    def _host_copy(self, array: Any) -> np.ndarray:
        return array.copy_to_host() if self._on_device else np.array(array, copy=True)

    # -- parameters and state ----------------------------------------------------------

    def parameters(self) -> list[Any]:
        """Return the trainable arrays (those present of ``PARAMETERS``)."""
        return [getattr(self, n) for n in self.PARAMETERS if getattr(self, n) is not None]

    def gradients(self) -> list[Any]:
        """Return the gradient arrays, aligned with :meth:`parameters`."""
        return [getattr(self, f"grad_{n}") for n in self.PARAMETERS if getattr(self, n) is not None]

    def _set_gradients(self, grad_weight: Any, grad_bias: Any) -> None:
        """Overwrite ``grad_weight``/``grad_bias`` (those present) with host or device values."""
        if not self._on_device:  # unrolled: BatchNorm.backward's per-call cost on small inputs
            if self.grad_weight is not None and grad_weight is not None:
                self.grad_weight[...] = grad_weight
            if self.grad_bias is not None and grad_bias is not None:
                self.grad_bias[...] = grad_bias
            return
        for target, value in ((self.grad_weight, grad_weight), (self.grad_bias, grad_bias)):
            if target is None or value is None:
                continue
            if not is_device_array(value):
                value = np.ascontiguousarray(value, dtype=self.dtype).reshape(target.shape)
            target.copy_to_device(value)

    def _state_arrays(self) -> list[str]:
        names = [*self.PARAMETERS, *self.BUFFERS]
        return [n for n in names if getattr(self, n, None) is not None]

    def _tracks_batches(self) -> bool:
        return self.TRACKS_BATCHES and getattr(self, "running_mean", None) is not None

    def state_dict(self) -> dict[str, np.ndarray]:
        """Return host copies of the parameters and buffers (PyTorch's keys)."""
        state = {name: self._host_copy(getattr(self, name)) for name in self._state_arrays()}
        if self._tracks_batches():
            state["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy ``state`` (host arrays) into the layer, in place; check all of it first.

        Raises
        ------
        KeyError
            When a key is missing or unexpected.
        ValueError, TypeError
            When an entry has the wrong shape or dtype. Nothing is modified.
        """
        array_keys = self._state_arrays()
        expected = set(array_keys)
        if self._tracks_batches():
            expected.add("num_batches_tracked")
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
        arrays = {}
        for key in array_keys:
            value = np.asarray(state[key])
            target = getattr(self, key)
            if value.shape != tuple(target.shape):
                raise ValueError(
                    f"state_dict[{key!r}]: expected shape {target.shape}, got {value.shape}"
                )
            if value.dtype != self.dtype:
                raise TypeError(
                    f"state_dict[{key!r}]: expected dtype {self.dtype}, got {value.dtype}"
                )
            arrays[key] = value
        tracked = None
        if "num_batches_tracked" in expected:
            tracked = np.asarray(state["num_batches_tracked"])
            if tracked.shape != () or tracked.dtype.kind not in "iu" or tracked < 0:
                raise ValueError("state_dict['num_batches_tracked'] must be a non-negative integer")
        for key, value in arrays.items():
            if self._on_device:
                getattr(self, key).copy_to_device(np.ascontiguousarray(value))
            else:
                np.copyto(getattr(self, key), value)
        if tracked is not None:
            self.num_batches_tracked = int(tracked)

    # -- forward and backward ----------------------------------------------------------

    def _checked_input(self, x: Any) -> tuple[Any, int]:
        """Return ``x`` (host or device, the layer's dtype, rank >= 2) and its channel axis."""
        if self._check_side(x):
            x = device_input(x, "x", self.dtype, 2, f"{type(self).__name__}.forward")
        else:
            x = float_input(x, "x", self.dtype)
        return x, self._channels_axis(tuple(x.shape), self.num_features)

    def _channels_axis(
        self, shape: tuple[int, ...], channels: int, name: str = "x", *, allow_batch: bool = False
    ) -> int:
        """Return the channel axis of an input of ``shape``; ValueError unless it has ``channels``."""
        axis = channel_axis_index(self.channel_axis, len(shape), allow_batch=allow_batch)
        if shape[axis] != channels:
            raise ValueError(
                f"{name}: expected {channels} channels on axis {axis}, got shape {shape}"
            )
        return axis

    def _running_factor(self) -> float:
        """The weight of this batch in the running update (``momentum``, or cumulative)."""
        if self.momentum is None:
            return 1.0 / (self.num_batches_tracked + 1)
        return self.momentum

    def _blend_running(
        self, batch_mean: np.ndarray, batch_var: np.ndarray, current: tuple | None = None
    ) -> None:
        """Move the running statistics towards float64 batch values; count the batch.

        ``current`` holds the float64 running statistics when the caller has
        already read them (from the device).
        """
        factor = self._running_factor()
        names = ("running_mean", "running_var")
        if current is None:
            current = tuple(self._host_copy(getattr(self, n)).astype(np.float64) for n in names)
        for name, now, batch in zip(names, current, (batch_mean, batch_var), strict=True):
            updated = ((1.0 - factor) * now + factor * batch).astype(self.dtype)
            if self._on_device:
                getattr(self, name).copy_to_device(updated)
            else:
                getattr(self, name)[...] = updated
        self.num_batches_tracked += 1

    def _vector(self, array: Any) -> Any:
        return NO_ARRAY[self.dtype] if array is None else array

    def _saved_input(self) -> tuple[Any, ...]:
        if self._saved is None:
            raise RuntimeError("backward() called before forward()")
        return self._saved

    def __call__(self, x: Any, training: bool = True, **kwargs: Any) -> Any:
        return self.forward(x, training, **kwargs)  # type: ignore[attr-defined]

    def _repr_value(self, name: str) -> Any:
        return getattr(self, name)

    def __repr__(self) -> str:
        shown = [f"{self._repr_value(n)}" for n in self.REPR_ARGS]
        shown += [f"{n}={self._repr_value(n)}" for n in self.REPR_KEYWORDS]
        return f"{type(self).__name__}({', '.join(shown)}, dtype={self.dtype.name})"
