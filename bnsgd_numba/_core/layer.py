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
import os
import sys
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from bnsgd_numba._core.arrays import is_device_array
from bnsgd_numba._core.checks import (
    FLOAT_DTYPES,
    check_flag,
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
    """Return ``channel_axis`` as an int other than 0 (axis 0 is the batch).

    Raises
    ------
    TypeError
        When it is not an integer (a bool, a float, a string...).
    ValueError
        When it is 0.
    """
    if isinstance(channel_axis, (bool, np.bool_)):
        raise TypeError(f"channel_axis must be an integer, got {channel_axis!r}")
    try:
        axis = operator.index(channel_axis)
    except TypeError:
        raise TypeError(f"channel_axis must be an integer, got {channel_axis!r}") from None
    if axis == 0:
        raise ValueError("channel_axis must not be 0: axis 0 is the batch axis")
    return axis


def check_layer_dtype(dtype: Any) -> np.dtype:
    """Return a layer's ``dtype`` as float32 or float64, or raise TypeError.

    Unlike ``np.dtype``, None is refused: it would mean float64, where
    PyTorch's ``dtype=None`` means float32.
    """
    if dtype is None:
        raise TypeError("dtype must be float32 or float64, got None")
    return check_float_dtype(dtype)


def check_policy(on_nonfinite: Any) -> str:
    """Return ``on_nonfinite`` if it is the string ``"raise"`` or ``"skip"``, else raise."""
    if not isinstance(on_nonfinite, str):
        raise TypeError(
            f"on_nonfinite must be 'raise' or 'skip', got {type(on_nonfinite).__name__} "
            f"{on_nonfinite!r}"
        )
    return check_nonfinite_policy(on_nonfinite)


def channel_axis_index(channel_axis: Any, ndim: int) -> int:
    """Return ``channel_axis`` in ``range(1, ndim)``: axis 0 is the batch."""
    axis = normalize_channel_axis(channel_axis, ndim)
    if axis == 0:
        raise ValueError(
            f"channel_axis={channel_axis} is axis 0 of an input of rank {ndim}, "
            "the batch axis; pass an input of a higher rank or a channel_axis >= 1"
        )
    return axis


def dtype_mismatch(name: str, got: Any, dtype: np.dtype) -> TypeError:
    """Return the TypeError for an input ``name`` of dtype ``got`` given to a ``dtype`` layer."""
    got = np.dtype(got)
    if got.kind not in "biuf":
        return TypeError(f"{name}: expected an array of real numbers ({dtype}), got dtype {got}")
    message = f"{name}: dtype {got} does not match the layer's {dtype}; cast {name} with "
    message += f"{name}.astype(np.{dtype.name})"
    if got in FLOAT_DTYPES:
        message += f" or build the layer with dtype=np.{got.name}"
    return TypeError(message)


def as_array(value: Any, name: str) -> np.ndarray:
    """Return ``np.asarray(value)``, or raise TypeError naming ``name`` when NumPy cannot."""
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name}: expected an array, got a {type(value).__name__} NumPy cannot convert"
        ) from exc


def float_input(value: Any, name: str, dtype: np.dtype, min_rank: int = 2) -> np.ndarray:
    """Return ``value`` as a NumPy array of ``dtype`` and rank >= ``min_rank``.

    Raises
    ------
    TypeError
        When it is not an array of ``dtype`` (the message says how to cast it).
    ValueError
        When the rank is too small.
    """
    array = as_array(value, name)
    if array.dtype != dtype:
        raise dtype_mismatch(name, array.dtype, dtype)
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
        raise dtype_mismatch(name, array.dtype, dtype)
    if len(array.shape) < min_rank:
        raise ValueError(
            f"{name}: expected an array of rank >= {min_rank}, got shape {tuple(array.shape)}"
        )
    return array


_PACKAGE_DIRECTORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def user_stacklevel() -> int:
    """Return the ``stacklevel`` that points a warning of the caller at the user's code.

    That is the first frame, counting from the caller's own (level 1), whose
    code lies outside the ``bnsgd_numba`` package: the user's call of the
    layer, however many of the package's frames (``__call__``, ``forward``,
    its helpers) lie in between.
    """
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIRECTORY):
        frame = frame.f_back
        level += 1
    return level


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
    and ``REPR_KEYWORDS`` (``bias`` as whether the layer has one, as
    PyTorch shows it), then the dtype. ``load_state_dict`` accepts and
    ignores the keys in ``IGNORED_STATE_KEYS``.

    Every layer's ``backward`` overwrites ``grad_weight``/``grad_bias``: it
    does not accumulate into them as PyTorch's autograd does, so there is
    nothing to zero between steps, and gradients over several batches are
    summed by the caller.
    """

    PARAMETERS: tuple[str, ...] = ("weight", "bias")
    BUFFERS: tuple[str, ...] = ()
    IGNORED_STATE_KEYS: tuple[str, ...] = ()
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

    def _init_affine(
        self,
        channels: int,
        eps: Any,
        affine: Any,
        channel_axis: Any,
        dtype: Any,
        bias: Any = True,
    ) -> None:
        """Check and set ``eps``, ``affine``, ``channel_axis``, ``dtype``; per-channel parameters.

        ``bias=False`` (with ``affine``): a ``weight`` and no ``bias``, as in PyTorch.
        """
        self.eps = check_positive_eps(eps)
        self.affine = check_flag(affine, "affine")
        shifted = check_flag(bias, "bias")
        self.channel_axis = check_axis(channel_axis)
        self.dtype = check_layer_dtype(dtype)
        self._init_parameters((channels,), weight=self.affine, bias=self.affine and shifted)

    def _init_running_statistics(
        self, channels: int, momentum: Any, track_running_stats: Any, on_nonfinite: Any
    ) -> None:
        """Check and set ``momentum``, ``on_nonfinite``; ``running_mean``/``running_var``."""
        self.momentum = check_momentum(momentum)
        self.on_nonfinite = check_policy(on_nonfinite)
        self.track_running_stats = check_flag(track_running_stats, "track_running_stats")
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
        bias: Any = True,
    ) -> None:
        """The constructor of a BatchNorm-like layer: every check, then the arrays."""
        self.num_features = check_positive_int(num_features, "num_features")
        self._init_affine(self.num_features, eps, affine, channel_axis, dtype, bias)
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
        """Overwrite ``grad_weight``/``grad_bias`` (those present) with host or device values.

        Overwrite, not accumulate: what every layer's ``backward`` promises.
        """
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

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy ``state`` (host arrays) into the layer, in place; check all of it first.

        Parameters
        ----------
        state : mapping
            What :meth:`state_dict` returns: the arrays by name.

        Raises
        ------
        TypeError
            When ``state`` is not a mapping.
        KeyError
            When a key is missing or unexpected.
        ValueError, TypeError
            When an entry has the wrong shape or dtype. Nothing is modified.
        """
        if not isinstance(state, Mapping):
            raise TypeError(
                "state must be a mapping of names to arrays (what state_dict() returns), "
                f"got {type(state).__name__}"
            )
        array_keys = self._state_arrays()
        expected = set(array_keys)
        if self._tracks_batches():
            expected.add("num_batches_tracked")
        given = set(state) - set(self.IGNORED_STATE_KEYS)
        missing = sorted(expected - given)
        unexpected = sorted(given - expected, key=repr)
        if missing or unexpected:
            raise KeyError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
        arrays = {}
        for key in array_keys:
            value = as_array(state[key], f"state_dict[{key!r}]")
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
            tracked = as_array(state["num_batches_tracked"], "state_dict['num_batches_tracked']")
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
        if type(x) is np.ndarray and not self._on_device and x.dtype is self.dtype:
            # the usual call, checked in a few operations: BatchNorm's per-call cost
            shape = x.shape
            axis = self.channel_axis
            if axis < 0:
                axis += len(shape)
            if 0 < axis < len(shape) and shape[axis] == self.num_features:
                return x, axis
        if self._check_side(x):
            x = device_input(x, "x", self.dtype, 2, f"{type(self).__name__}.forward")
        else:
            x = float_input(x, "x", self.dtype)
        return x, self._channels_axis(tuple(x.shape), self.num_features)

    def _channels_axis(self, shape: tuple[int, ...], channels: int, name: str = "x") -> int:
        """Return the channel axis of an input of ``shape``; ValueError unless it has ``channels``."""
        axis = channel_axis_index(self.channel_axis, len(shape))
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
        return self.bias is not None if name == "bias" else getattr(self, name)

    def __repr__(self) -> str:
        shown = [f"{self._repr_value(n)}" for n in self.REPR_ARGS]
        shown += [f"{n}={self._repr_value(n)}" for n in self.REPR_KEYWORDS]
        return f"{type(self).__name__}({', '.join(shown)}, dtype={self.dtype.name})"
