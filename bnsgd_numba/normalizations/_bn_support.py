"""BatchNorm's CPU kernels, one step at a time, for the BatchNorm variants.

``batch_renorm`` and ``ghost_batch_norm`` need the batch statistics before
they normalize (to clip r and d, or to check every virtual batch before
anything is written), so they call the statistics and the normalization
kernels of :mod:`bnsgd_numba.batch_norm._cpu` separately instead of its
fused ``forward_train``. The arithmetic is BatchNorm's, bit for bit.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from bnsgd_numba import config
from bnsgd_numba._core.layouts import (
    NCS,
    empty_in_layout,
    native_layout,
    rows_per_item,
    to_layout,
    view_in_layout,
)
from bnsgd_numba.batch_norm import NonFiniteStatisticsError


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
    from bnsgd_numba._core.compile import caller_pair
    from bnsgd_numba.batch_norm import _cpu as kernels

    y_view = view_in_layout(y, axis, layout)
    rows = rows_per_item(x_view, layout, config.CPU_ITEM_ELEMENTS, config.CPU_RC_COLUMNS)
    caller_pair(kernels._normalize).for_size(x_view.size)(
        x_view, y_view, layout != NCS, x_view.size >= config.CPU_SERIAL_BELOW, rows,
        mean, invstd, weight, bias,
    )  # fmt: skip


def refuse_nonfinite(channels: np.ndarray, policy: str, what: str) -> bool:
    """Apply ``on_nonfinite`` to a batch with non-finite statistics.

    Raises :class:`NonFiniteStatisticsError` for ``"raise"``; warns and
    returns True (skip the running update) for ``"skip"``.
    """
    if policy == "raise":
        raise NonFiniteStatisticsError(channels)
    warnings.warn(
        f"{what} statistics are not finite in channel(s) {channels.tolist()}; "
        "the running statistics were not updated",
        RuntimeWarning,
        stacklevel=4,
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


class ChannelNorm:
    """Constructor checks and arrays shared by the BatchNorm variants.

    Sets ``num_features``, ``eps``, ``momentum``, ``affine``,
    ``channel_axis``, ``dtype``, ``on_nonfinite``, the per-channel
    ``weight``/``bias`` (and gradients) and ``running_mean``/``running_var``.
    """

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
        from bnsgd_numba.normalizations import _base

        self.num_features = _base.check_positive_int(num_features, "num_features")
        self.eps = _base.check_positive_eps(eps)
        self.momentum = _base.check_momentum(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.channel_axis = _base.check_axis(channel_axis)
        self.dtype = _base.check_dtype(dtype)
        self.on_nonfinite = _base.check_nonfinite_policy(on_nonfinite)
        c, dt = self.num_features, self.dtype
        self.weight = np.ones(c, dt) if self.affine else None
        self.bias = np.zeros(c, dt) if self.affine else None
        self.grad_weight = np.zeros(c, dt) if self.affine else None
        self.grad_bias = np.zeros(c, dt) if self.affine else None
        self.running_mean = np.zeros(c, dt) if self.track_running_stats else None
        self.running_var = np.ones(c, dt) if self.track_running_stats else None
        self.num_batches_tracked = 0
        self.skipped_updates = 0
        self._saved: tuple[Any, ...] | None = None

    def _checked_input(self, x: Any) -> tuple[np.ndarray, int]:
        from bnsgd_numba.normalizations import _base

        if self._check_side(x):  # type: ignore[attr-defined]
            x = _base.device_input(x, "x", self.dtype, 2, f"{type(self).__name__}.forward")
        else:
            x = _base.float_input(x, "x", self.dtype)
        axis = _base.channel_axis_index(self.channel_axis, len(x.shape))
        if x.shape[axis] != self.num_features:
            raise ValueError(
                f"x: expected {self.num_features} channels on axis {axis}, "
                f"got shape {tuple(x.shape)}"
            )
        return x, axis

    def _factor(self) -> float:
        if self.momentum is None:
            return 1.0 / (self.num_batches_tracked + 1)
        return self.momentum

    def _vector(self, array: np.ndarray | None) -> np.ndarray:
        from bnsgd_numba.normalizations._base import NO_ARRAY

        return NO_ARRAY[self.dtype] if array is None else array
