"""Built-in plugin ``layer_norm``: :class:`LayerNorm` (torch.nn.LayerNorm).

Also the row machinery :class:`RowNorm` that ``rms_norm`` shares: the input
is read as rows ``(R, D)``, ``D`` the product of the normalized dimensions.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from bnsgd_numba import config
from bnsgd_numba._core.arrays import check_out
from bnsgd_numba._core.checks import check_float_dtype, check_positive_eps
from bnsgd_numba._core.layer import (
    NO_ARRAY,
    NormLayer,
    channel_axis_index,
    device_input,
    float_input,
    matching_dy,
)
from bnsgd_numba.normalizations._base import registration_hook


def _normalized_shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        shape = tuple(value)
    else:
        shape = (value,)
    if not shape:
        raise ValueError("normalized_shape must have at least one dimension")
    result = []
    for size in shape:
        try:
            size = operator.index(size)
        except TypeError:
            raise TypeError(f"normalized_shape must hold integers, got {value!r}") from None
        if size < 1:
            raise ValueError(f"normalized_shape must hold positive sizes, got {value!r}")
        result.append(size)
    return tuple(result)


class RowNorm(NormLayer):
    """Normalization over the trailing ``normalized_shape`` of the input, row by row.

    ``channel_axis=None`` (default) normalizes the last ``len(normalized_shape)``
    dimensions, as PyTorch does; an integer ``channel_axis`` normalizes that
    one axis (``normalized_shape`` then is its size), as ConvNeXt's
    channels-first LayerNorm does, and an input whose axis is not last is
    copied once to put it last.
    """

    CENTERED = True
    REPR_ARGS = ("normalized_shape",)
    REPR_KEYWORDS = ("eps", "elementwise_affine")

    def __init__(
        self,
        normalized_shape: Any,
        eps: float | None,
        elementwise_affine: bool,
        bias: bool,
        channel_axis: int | None,
        dtype: Any,
    ) -> None:
        self.normalized_shape = _normalized_shape(normalized_shape)
        self.dtype = check_float_dtype(dtype)
        self.eps = None if eps is None else check_positive_eps(eps)
        if channel_axis is not None:
            if len(self.normalized_shape) != 1:
                raise ValueError(
                    "channel_axis normalizes one axis: normalized_shape must have one "
                    f"dimension, got {self.normalized_shape}"
                )
            channel_axis = operator.index(channel_axis)
        self.channel_axis = channel_axis
        self.elementwise_affine = bool(elementwise_affine)
        affine = self.elementwise_affine
        self._init_parameters(self.normalized_shape, weight=affine, bias=affine and bool(bias))

    @property
    def features(self) -> int:
        """D, the number of values each row is normalized over."""
        return math.prod(self.normalized_shape)

    def _eps(self) -> float:
        return float(np.finfo(self.dtype).eps) if self.eps is None else self.eps

    def _rows(self, a: np.ndarray, name: str) -> tuple[np.ndarray, int | None]:
        """Return ``a`` as C-contiguous rows (R, D) and the axis moved last, if any."""
        if self.channel_axis is None:
            k = len(self.normalized_shape)
            if a.ndim < k or a.shape[a.ndim - k :] != self.normalized_shape:
                raise ValueError(
                    f"{name}: shape {a.shape} does not end with normalized_shape "
                    f"{self.normalized_shape}"
                )
            return np.ascontiguousarray(a).reshape(-1, self.features), None
        axis = channel_axis_index(self.channel_axis, a.ndim)
        if a.shape[axis] != self.features:
            raise ValueError(
                f"{name}: expected {self.features} features on axis {axis}, got shape {a.shape}"
            )
        if axis == a.ndim - 1:
            return np.ascontiguousarray(a).reshape(-1, self.features), None
        moved = np.ascontiguousarray(np.moveaxis(a, axis, -1))
        return moved.reshape(-1, self.features), axis

    @staticmethod
    def _unrows(rows: np.ndarray, shape: tuple[int, ...], axis: int | None) -> np.ndarray:
        if axis is None:
            return rows.reshape(shape)
        moved_shape = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
        return np.moveaxis(rows.reshape(moved_shape), -1, axis)

    def _flat(self, array: np.ndarray | None) -> np.ndarray:
        if array is None:
            return NO_ARRAY[self.dtype]
        return np.ascontiguousarray(array).reshape(-1)

    def _output(
        self, out: Any, like: np.ndarray, rows: np.ndarray, axis: int | None, others: tuple
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (array to return, rows the kernel writes): ``out``'s own rows when possible."""
        if out is None:
            target = np.empty_like(rows)
            return self._unrows(target, like.shape, axis), target
        check_out(out, like, "out", others)
        if axis is None and out.flags.c_contiguous:
            return out, out.reshape(rows.shape)
        return out, None

    def forward(self, x: Any, training: bool = True, *, out: Any = None) -> np.ndarray:
        """Normalize each row of ``x`` (``training`` changes nothing: no running stats).

        Parameters
        ----------
        x : ndarray of the layer's dtype
            Shape ``(..., *normalized_shape)``, or ``features`` values on
            ``channel_axis``.
        training : bool
            Accepted for the common layer API.
        out : ndarray, optional
            Where to write the output (shape and dtype of ``x``, not
            overlapping it), so that a training loop runs without allocating.

        Returns
        -------
        ndarray
            Shaped like ``x`` (``out`` when given).
        """
        from bnsgd_numba.normalizations import _cpu as kernels

        if self._check_side(x):
            return self._forward_device(x, out)
        x = float_input(x, "x", self.dtype, min_rank=1 if self.channel_axis is None else 2)
        rows, axis = self._rows(x, "x")
        result, y = self._output(out, x, rows, axis, (self.weight, self.bias))
        target = np.empty_like(rows) if y is None else y
        count, length = rows.shape
        eps = self._eps()
        invstd = np.empty(count, dtype=np.float64)
        per_item = max(1, config.CPU_ITEM_ELEMENTS // length)
        if self.CENTERED:
            mean = np.empty(count, dtype=np.float64)
            kernels.layer_forward.for_size(rows.size)(
                rows, target, per_item, config.CPU_ITEM_ELEMENTS, eps, self._flat(self.weight),
                self._flat(self.bias), mean, invstd,
            )  # fmt: skip
        else:
            mean = invstd
            kernels.rms_forward.for_size(rows.size)(
                rows, target, per_item, eps, self._flat(self.weight), invstd
            )
        if y is None:
            np.copyto(result, self._unrows(target, x.shape, axis))
        self._saved = (x, rows, axis, mean, invstd)
        return result

    def _partials(self, items: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        # the per-block column sums of backward, kept between calls of one shape
        cached = getattr(self, "_partial_buffers", None)
        if cached is None or cached[0].shape != (items, length):
            cached = (np.empty((items, length)), np.empty((items, length)))
            self._partial_buffers = cached
        return cached

    def backward(self, dy: Any, *, out: Any = None) -> np.ndarray:
        """Return dx for the last ``forward``; write ``grad_weight``/``grad_bias``.

        Parameters
        ----------
        dy : ndarray
            Gradient of the loss with respect to the last output.
        out : ndarray, optional
            Where to write dx (shape and dtype of the input).

        Returns
        -------
        ndarray
            Gradient with respect to the last input.
        """
        from bnsgd_numba.normalizations import _cpu as kernels

        x, rows, axis, mean, invstd = self._saved_input()
        dy = matching_dy(dy, x)
        if self._on_device:
            return self._backward_device(dy, out)
        dy_rows, _ = self._rows(dy, "dy")
        result, dx = self._output(out, x, rows, axis, (dy, self.weight, self.bias))
        target = np.empty_like(rows) if dx is None else dx
        count, length = rows.shape
        # larger blocks than the forward's: fewer partial rows to add up
        per_item = max(1, 4 * config.CPU_ITEM_ELEMENTS // length)
        items = (count + per_item - 1) // per_item
        part_gw, part_gb = self._partials(items, length)
        kernels.layer_backward.for_size(rows.size)(
            dy_rows, rows, target, per_item, mean, invstd, self._flat(self.weight),
            self.CENTERED, part_gw, part_gb,
        )  # fmt: skip
        columns = config.CPU_RC_COLUMNS
        for grad, part in ((self.grad_weight, part_gw), (self.grad_bias, part_gb)):
            if grad is not None:
                total = np.empty(length, dtype=np.float64)
                kernels.column_sums.for_size(part.size)(part, total, columns)
                grad[...] = total.reshape(self.normalized_shape)
        if dx is None:
            np.copyto(result, self._unrows(target, x.shape, axis))
        return result

    # --- GPU -------------------------------------------------------------------------

    def _device_rows(self, a: Any, name: str) -> Any:
        from bnsgd_numba.normalizations import _cuda_driver

        shape = tuple(a.shape)
        k = len(self.normalized_shape)
        if self.channel_axis is not None:
            axis = channel_axis_index(self.channel_axis, len(shape))
            if shape[axis] != self.features:
                raise ValueError(
                    f"{name}: expected {self.features} features on axis {axis}, got shape {shape}"
                )
            if axis != len(shape) - 1:
                raise ValueError(
                    f"{name}: on the GPU the normalized axis must be the last one "
                    f"(channel_axis={self.channel_axis} of a rank-{len(shape)} array)"
                )
        elif len(shape) < k or shape[len(shape) - k :] != self.normalized_shape:
            raise ValueError(
                f"{name}: shape {shape} does not end with normalized_shape {self.normalized_shape}"
            )
        a = _cuda_driver.contiguous(a, name, "the rows")
        return _cuda_driver.view(a, (math.prod(shape) // self.features, self.features))

    def _device_flat(self, array: Any) -> Any:
        from bnsgd_numba.normalizations import _cuda_driver

        return _cuda_driver.cached_view(self, array, (self.features,))

    def _device_output(self, out: Any, x: Any, rows: Any, others: tuple[Any, ...]) -> Any:
        from bnsgd_numba.normalizations import _cuda_driver

        return _cuda_driver.device_output(out, x, rows, self.dtype, others)

    def _forward_device(self, x: Any, out: Any) -> Any:
        from bnsgd_numba.normalizations import _cuda_driver

        x = device_input(x, "x", self.dtype, 1, f"{type(self).__name__}.forward")
        rows = self._device_rows(x, "x")
        y, y_rows = self._device_output(out, x, rows, (self.weight, self.bias))
        work = _cuda_driver.rows_forward(
            self, rows, y_rows, self._device_flat(self.weight), self._device_flat(self.bias),
            self._eps(), self.CENTERED,
        )  # fmt: skip
        self._saved = (x, rows, None, work, None)
        return y

    def _backward_device(self, dy: Any, out: Any) -> Any:
        from bnsgd_numba.normalizations import _cuda_driver

        x, rows, _, work, _ = self._saved_input()
        dy_rows = self._device_rows(dy, "dy")
        dx, dx_rows = self._device_output(out, x, rows, (dy, self.weight, self.bias))
        _cuda_driver.rows_backward(
            dy_rows, rows, dx_rows, self._device_flat(self.weight), work, self.CENTERED,
            self._device_flat(self.grad_weight), self._device_flat(self.grad_bias), self,
        )  # fmt: skip
        return dx


class LayerNorm(RowNorm):
    """Layer Normalization (Ba, Kiros & Hinton 2016), as ``torch.nn.LayerNorm``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing dimensions each sample is normalized over.
    eps : float, default 1e-5
        Added to the variance.
    elementwise_affine : bool, default True
        Learn ``weight`` (init 1) and ``bias`` (init 0) of shape ``normalized_shape``.
    bias : bool, default True
        Learn ``bias`` too (when ``elementwise_affine``).
    channel_axis : int, optional
        Normalize this one axis instead of the trailing ones (channels-first
        LayerNorm; the kit's calling convention).
    dtype : float32 or float64
        The dtype of the parameters and of the inputs.

    Notes
    -----
    Per row of D values: ``y = (x - mean) / sqrt(var + eps) * weight + bias``
    with the biased variance; statistics in float64, two passes per block.
    ``backward`` overwrites ``grad_weight``/``grad_bias``::

        dx = invstd * (g - mean(g) - x_hat * mean(g * x_hat)),  g = dy * weight
    """

    REPR_KEYWORDS = ("eps", "elementwise_affine", "bias")

    def __init__(
        self,
        normalized_shape: Any,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        channel_axis: int | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, channel_axis, dtype)

    def _repr_value(self, name: str) -> Any:
        return self.bias is not None if name == "bias" else super()._repr_value(name)


def layer_norm(*args: Any, **kwargs: Any) -> LayerNorm:
    """Create a :class:`LayerNorm` (arguments as ``torch.nn.LayerNorm``, plus ``dtype``)."""
    return LayerNorm(*args, **kwargs)


bnsgd_register_normalizations = registration_hook(
    "layer_norm",
    layer_norm,
    standardizes=False,
    batch_statistics=False,
    examples=[{}, {"elementwise_affine": False}, {"bias": False, "eps": 1e-3}],
)
