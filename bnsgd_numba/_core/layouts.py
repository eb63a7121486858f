"""Views of an N-d array as one of the two layouts the kernels know.

``"ncs"``: a C-contiguous ``(N, C, S)`` view, the channel axis in the middle
(N is the product of the axes before it, S of those after it).
``"rc"``: a C-contiguous ``(R, C, 1)`` view, the channel varying fastest in
memory (channels-last, or ``(N, C)``, or an NCHW-shaped array whose memory is
NHWC, as PyTorch's ``channels_last`` tensors are).

Arrays in neither layout are copied once into the ``ncs`` one (or ``rc`` when
the channel axis is last); outputs are written in the input's own layout.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

NCS = "ncs"
RC = "rc"


def normalize_channel_axis(channel_axis: Any, ndim: int) -> int:
    """Return ``channel_axis`` as an index in ``range(ndim)``.

    Raises
    ------
    TypeError
        When ``channel_axis`` is not an integer.
    ValueError
        When it is out of range for an array of ``ndim`` dimensions.
    """
    if type(channel_axis) is int and -ndim <= channel_axis < ndim:
        return channel_axis % ndim
    try:
        if isinstance(channel_axis, (bool, np.bool_)):
            raise TypeError
        axis = operator.index(channel_axis)
    except TypeError:
        raise TypeError(
            f"channel_axis must be an integer, got {type(channel_axis).__name__}"
        ) from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"channel_axis={axis} is out of range for an input of rank {ndim}")
    return axis % ndim


def view_in_layout(a: np.ndarray, axis: int, layout: str) -> np.ndarray | None:
    """Return ``a`` as a view in ``layout`` without copying, or None if impossible."""
    channels = a.shape[axis]
    if layout == NCS:
        if not a.flags.c_contiguous:
            return None
        before = math.prod(a.shape[:axis])
        return a.reshape(before, channels, math.prod(a.shape[axis + 1 :]))
    if axis == a.ndim - 1:
        return a.reshape(-1, channels, 1) if a.flags.c_contiguous else None
    moved = np.moveaxis(a, axis, -1)
    if not moved.flags.c_contiguous:
        return None
    return moved.reshape(-1, channels, 1)


def native_layout(a: np.ndarray, axis: int) -> str:
    """Return the layout ``a`` should be read in: its own, or the one to copy it to."""
    if axis == a.ndim - 1:
        return RC
    if a.flags.c_contiguous:
        return NCS
    if view_in_layout(a, axis, RC) is not None:
        return RC
    return NCS


def kernel_view(a: np.ndarray, axis: int) -> tuple[str, np.ndarray]:
    """Return ``(native_layout(a, axis), to_layout(a, axis, that layout))`` in one go."""
    if a.flags.c_contiguous:
        channels = a.shape[axis]
        if axis == a.ndim - 1:
            return RC, a.reshape(-1, channels, 1)
        before = math.prod(a.shape[:axis])
        return NCS, a.reshape(before, channels, math.prod(a.shape[axis + 1 :]))
    layout = native_layout(a, axis)
    return layout, to_layout(a, axis, layout)


def to_layout(a: np.ndarray, axis: int, layout: str) -> np.ndarray:
    """Return ``a`` in ``layout``: a view when possible, else a contiguous copy."""
    view = view_in_layout(a, axis, layout)
    if view is not None:
        return view
    if layout == NCS:
        return view_in_layout(np.ascontiguousarray(a), axis, NCS)
    return np.ascontiguousarray(np.moveaxis(a, axis, -1)).reshape(-1, a.shape[axis], 1)


def empty_in_layout(a: np.ndarray, axis: int, layout: str) -> np.ndarray:
    """Return an uninitialized array shaped like ``a`` whose memory is in ``layout``."""
    if layout == NCS or axis == a.ndim - 1:
        return np.empty(a.shape, dtype=a.dtype)
    moved_shape = a.shape[:axis] + a.shape[axis + 1 :] + (a.shape[axis],)
    return np.moveaxis(np.empty(moved_shape, dtype=a.dtype), -1, axis)


def from_layout(view: np.ndarray, shape: tuple[int, ...], axis: int, layout: str) -> np.ndarray:
    """The array of ``shape`` that a kernel view in ``layout`` holds (inverse of :func:`to_layout`)."""
    if layout == NCS:
        return view.reshape(shape)
    view = view.reshape(view.shape[:2])
    moved_shape = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    return np.moveaxis(view.reshape(moved_shape), -1, axis)


def rows_per_item(view: np.ndarray, layout: str, item_elements: int, rc_columns: int) -> int:
    """Rows of ``view`` per reduction work item (a function of the shape only)."""
    return item_rows(view.shape[1], view.shape[2], layout != NCS, item_elements, rc_columns)


def item_rows(
    channels: int, inner: int, channels_last: bool, item_elements: int, rc_columns: int
) -> int:
    """Rows per reduction work item of an ``(N, C, inner)`` or ``(R, C, 1)`` view.

    Plain integer arithmetic, so the kernels compile it too. An empty inner
    size counts as 1 (an input with a zero-length spatial axis).
    """
    if channels_last:
        return max(1, item_elements // max(1, min(channels, rc_columns)))
    return max(1, item_elements // max(1, inner))
