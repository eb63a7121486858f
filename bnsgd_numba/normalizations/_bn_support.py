"""BatchNorm's CPU kernels, one step at a time, for the BatchNorm variants.

``batch_renorm`` and ``ghost_batch_norm`` need the batch statistics before
they normalize (to clip r and d, or to check every virtual batch before
anything is written), so they call the statistics and the normalization
kernels of :mod:`bnsgd_numba.batch_norm._cpu` separately instead of its
fused ``forward_train``. The arithmetic is BatchNorm's, bit for bit.

Every variant with running statistics evaluates with them as BatchNorm does:
:func:`running_forward` and :func:`running_backward`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from bnsgd_numba import config
from bnsgd_numba._core.layer import NormLayer, matching_dy, user_stacklevel
from bnsgd_numba._core.layouts import (
    NCS,
    empty_in_layout,
    native_layout,
    rows_per_item,
    to_layout,
    view_in_layout,
)
from bnsgd_numba.batch_norm import NonFiniteStatisticsError
from bnsgd_numba.batch_norm.functional import (
    batch_norm_backward,
    forward_with_status,
    fused_pair,
)


class Moments:
    """Float64 per-channel statistics of one batch (or virtual batch).

    Attributes
    ----------
    mean, m2 : ndarray
        Mean and sum of squared deviations per channel.
    count : float
        Values per channel.
    invstd : ndarray
        1/sqrt(m2/count + eps).
    bad : int
        Channels whose mean or variance is not finite.
    """

    def __init__(self, x_view: np.ndarray, layout: str, eps: float) -> None:
        from bnsgd_numba.batch_norm import _cpu as kernels

        channels = x_view.shape[1]
        self.mean = np.empty(channels, dtype=np.float64)
        self.m2 = np.empty(channels, dtype=np.float64)
        rows = rows_per_item(x_view, layout, config.CPU_ITEM_ELEMENTS, config.CPU_RC_COLUMNS)
        if layout == NCS:
            self.count = float(x_view.shape[0] * x_view.shape[2])
            kernels.moments_ncs.for_size(x_view.size)(x_view, rows, self.mean, self.m2)
        else:
            self.count = float(x_view.shape[0])
            kernels.moments_rc.for_size(x_view.size)(
                x_view.reshape(x_view.shape[0], channels), rows, config.CPU_RC_COLUMNS,
                self.mean, self.m2,
            )  # fmt: skip
        self.invstd = np.empty(channels, dtype=np.float64)
        self.bad = int(kernels.finish_statistics(self.mean, self.m2, self.count, eps, self.invstd))

    def nonfinite_channels(self) -> np.ndarray:
        """Return the indices of the channels whose statistics are not finite."""
        variance = self.m2 / self.count
        return np.flatnonzero(~(np.isfinite(self.mean) & np.isfinite(variance)))


def layout_of(x: np.ndarray, axis: int) -> str:
    """Return the kernel layout to read ``x`` in (see :mod:`bnsgd_numba._core.layouts`)."""
    return native_layout(x, axis)


def view(x: np.ndarray, axis: int, layout: str) -> np.ndarray:
    """Return ``x`` in ``layout``: a view, or a copy when it cannot be one."""
    return to_layout(x, axis, layout)


def empty_output(x: np.ndarray, axis: int, layout: str) -> np.ndarray:
    """Return an uninitialized array shaped like ``x`` with memory in ``layout``."""
    return empty_in_layout(x, axis, layout)


def normalize(
    x_view: np.ndarray,
    y: np.ndarray,
    axis: int,
    layout: str,
    mean: np.ndarray,
    invstd: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
) -> None:
    """Write ((x - mean) * invstd) * weight + bias into ``y`` (allocated in ``layout``).

    ``mean``/``invstd`` are float64; empty ``weight``/``bias`` mean 1 and 0.
    """
    y_view = view_in_layout(y, axis, layout)
    rows = rows_per_item(x_view, layout, config.CPU_ITEM_ELEMENTS, config.CPU_RC_COLUMNS)
    fused_pair("_normalize", layout).for_size(x_view.size)(
        x_view, y_view, x_view.size >= config.CPU_SERIAL_BELOW, rows,
        mean, invstd, weight, bias,
    )  # fmt: skip


def running_forward(layer: NormLayer, x: Any, axis: int, out: Any = None) -> Any:
    """Return BatchNorm's eval of ``x`` with the layer's running statistics.

    A :class:`~bnsgd_numba.BatchNormOutput`: ``y`` and the ``save_mean``/
    ``save_invstd`` that :func:`running_backward` takes.
    """
    result, _ = forward_with_status(
        x, layer.weight, layer.bias, layer.running_mean, layer.running_var,
        training=False, momentum=0.0, eps=layer.eps, channel_axis=axis,
        out=out, on_nonfinite="raise", warn_stacklevel=3,
    )  # fmt: skip
    return result


def running_backward(
    layer: NormLayer, dy: Any, x: Any, axis: int, mean: Any, invstd: Any, out: Any = None
) -> Any:
    """Return dx of :func:`running_forward`; write the layer's ``grad_weight``/``grad_bias``."""
    dx, dweight, dbias = batch_norm_backward(
        matching_dy(dy, x), x, layer.weight, mean, invstd, training=False, channel_axis=axis,
        out=out,
    )  # fmt: skip
    layer._set_gradients(dweight, dbias)
    return dx


def refuse_nonfinite(channels: np.ndarray, policy: str, what: str) -> bool:
    """Apply ``on_nonfinite`` to a batch with non-finite statistics.

    Raises :class:`NonFiniteStatisticsError` for ``"raise"``; warns and
    returns True (skip the running update) for ``"skip"``, the warning
    pointing at the user's call of the layer.
    """
    if policy == "raise":
        raise NonFiniteStatisticsError(channels)
    warnings.warn(
        f"{what} statistics are not finite in channel(s) {channels.tolist()}; "
        "the running statistics were not updated",
        RuntimeWarning,
        stacklevel=user_stacklevel(),
    )
    return True


def update_running(
    running_mean: np.ndarray,
    running_var: np.ndarray,
    mean: np.ndarray,
    m2: np.ndarray,
    unbiased_count: float,
    momentum: float,
) -> None:
    """running = (1 - momentum) * running + momentum * batch, var = m2 / (unbiased_count - 1)."""
    from bnsgd_numba.batch_norm import _cpu as kernels

    kernels.update_running_statistics(running_mean, running_var, mean, m2, unbiased_count, momentum)


def per_channel_count(shape: tuple[int, ...], axis: int) -> int:
    """Return how many values each channel of an array of ``shape`` has."""
    count = 1
    for i, size in enumerate(shape):
        if i != axis:
            count *= size
    return count


def as_dtype(values: Any, dtype: np.dtype) -> np.ndarray:
    """Return a C-contiguous copy of ``values`` in ``dtype``."""
    return np.ascontiguousarray(values, dtype=dtype)
