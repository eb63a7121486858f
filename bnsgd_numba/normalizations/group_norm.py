"""Built-in plugin ``group_norm``: :class:`GroupNorm` (torch.nn.GroupNorm).

Also :class:`GroupedNorm`, the machinery ``instance_norm`` shares: the input
is read as ``(N, C, S)`` (batch, channels, everything else) and each of the
``N * G`` groups of ``C / G`` channels is one row of statistics.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bnsgd_numba import config
from bnsgd_numba._core.arrays import check_out
from bnsgd_numba._core.checks import check_positive_int
from bnsgd_numba._core.layer import NormLayer, device_input, float_input, matching_dy
from bnsgd_numba.normalizations._base import registration_hook


class GroupedNorm(NormLayer):
    """Per-sample statistics over groups of channels; per-channel affine."""

    MIN_RANK = 2
    REPR_ARGS = ("num_groups", "num_channels")
    REPR_KEYWORDS = ("eps", "affine")

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float,
        affine: bool,
        channel_axis: int,
        dtype: Any,
    ) -> None:
        self.num_groups = check_positive_int(num_groups, "num_groups")
        self.num_channels = check_positive_int(num_channels, "num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(
                f"num_channels ({self.num_channels}) must be divisible by num_groups "
                f"({self.num_groups})"
            )
        self._init_affine(self.num_channels, eps, affine, channel_axis, dtype)

    def _ncs(self, a: np.ndarray, name: str) -> tuple[np.ndarray, int]:
        """Return ``a`` as a C-contiguous (N, C, S) array and its channel axis."""
        axis = self._channels_axis(a.shape, self.num_channels, name)
        spatial = math.prod(s for i, s in enumerate(a.shape) if i not in (0, axis))
        if axis != 1:
            a = np.moveaxis(a, axis, 1)
        return np.ascontiguousarray(a).reshape(a.shape[0], self.num_channels, spatial), axis

    @staticmethod
    def _unncs(a3: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
        if axis == 1:
            return a3.reshape(shape)
        moved_shape = (shape[0], shape[axis]) + tuple(
            s for i, s in enumerate(shape) if i not in (0, axis)
        )
        return np.moveaxis(a3.reshape(moved_shape), 1, axis)

    def _target(
        self, out: Any, like: np.ndarray, like3: np.ndarray, axis: int, others: tuple
    ) -> np.ndarray:
        """Return the (N, C, S) array the kernel writes: ``out``'s own memory when possible."""
        if out is None:
            return np.empty_like(like3)
        check_out(out, like, "out", others)
        if axis == 1 and out.flags.c_contiguous:
            return out.reshape(like3.shape)
        return np.empty_like(like3)

    def _result(self, out: Any, target3: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
        result = self._unncs(target3, shape, axis)
        if out is None or np.may_share_memory(result, out):
            return out if out is not None else result
        np.copyto(out, result)
        return out

    def _statistics(self, x3: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from bnsgd_numba.normalizations import _cpu as kernels

        n, c, s = x3.shape
        rows = x3.reshape(n * self.num_groups, (c // self.num_groups) * s)
        mean = np.empty(rows.shape[0], dtype=np.float64)
        var = np.empty_like(mean)
        invstd = np.empty_like(mean)
        kernels.row_statistics.for_size(x3.size)(
            rows, config.CPU_ITEM_ELEMENTS, self.eps, mean, var, invstd
        )
        return mean, var, invstd

    def _normalize(
        self, x: np.ndarray, x3: np.ndarray, axis: int, mean: np.ndarray, invstd: np.ndarray,
        out: Any = None,
    ) -> np.ndarray:  # fmt: skip
        from bnsgd_numba.normalizations import _cpu as kernels

        y3 = self._target(out, x, x3, axis, (self.weight, self.bias))
        kernels.group_normalize.for_size(x3.size)(
            x3, y3, self.num_groups, mean, invstd, self._vector(self.weight),
            self._vector(self.bias),
        )  # fmt: skip
        self._saved = ("groups", x, x3, axis, mean, invstd)
        return self._result(out, y3, x.shape, axis)

    def forward(self, x: Any, training: bool = True, *, out: Any = None) -> np.ndarray:
        """Normalize each group of each sample of ``x``.

        Parameters
        ----------
        x : ndarray of the layer's dtype
            ``num_channels`` channels on ``channel_axis``, the batch on axis 0.
        training : bool
            Accepted for the common layer API (no running statistics).
        out : ndarray, optional
            Where to write the output (shape and dtype of ``x``).

        Returns
        -------
        ndarray
            Shaped like ``x``.
        """
        if self._check_side(x):
            return self._forward_device(x, out)
        x = float_input(x, "x", self.dtype, self.MIN_RANK)
        x3, axis = self._ncs(x, "x")
        return self._fused_forward(x, x3, axis, out)

    def _fused_forward(self, x: np.ndarray, x3: np.ndarray, axis: int, out: Any) -> np.ndarray:
        """Statistics and normalization in one pass over each group (no checks between)."""
        from bnsgd_numba.normalizations import _cpu as kernels

        rows = x3.shape[0] * self.num_groups
        mean = np.empty(rows, dtype=np.float64)
        var = np.empty_like(mean)
        invstd = np.empty_like(mean)
        y3 = self._target(out, x, x3, axis, (self.weight, self.bias))
        kernels.group_forward.for_size(x3.size)(
            x3, y3, self.num_groups, config.CPU_ITEM_ELEMENTS, self.eps,
            self._vector(self.weight), self._vector(self.bias), mean, var, invstd,
        )  # fmt: skip
        self._saved = ("groups", x, x3, axis, mean, invstd)
        return self._result(out, y3, x.shape, axis)

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

        if self._saved_input()[0] == "gpu_groups":
            return self._backward_device(dy, out)
        _, x, x3, axis, mean, invstd = self._saved_input()
        dy = matching_dy(dy, x)
        dy3, _ = self._ncs(dy, "dy")
        n, c, s = x3.shape
        sum_dy = np.empty((n, c), dtype=np.float64)
        sum_dy_xmu = np.empty((n, c), dtype=np.float64)
        dx3 = self._target(out, x, x3, axis, (dy, self.weight, self.bias))
        kernels.group_backward.for_size(x3.size)(
            dy3, x3, dx3, self.num_groups, mean, invstd, self._vector(self.weight), sum_dy,
            sum_dy_xmu,
        )  # fmt: skip
        grad_weight = np.empty(c, dtype=np.float64)
        grad_bias = np.empty(c, dtype=np.float64)
        kernels.group_parameter_gradients(
            sum_dy, sum_dy_xmu, self.num_groups, invstd, grad_weight, grad_bias
        )
        self._set_gradients(grad_weight, grad_bias)
        return self._result(out, dx3, x.shape, axis)

    # --- GPU -------------------------------------------------------------------------

    def _device_rows(self, a: Any, name: str, groups: int | None = None) -> Any:
        """Return ``a`` (checked) seen as the (N * G, C / G * S) rows of its groups."""
        from bnsgd_numba.normalizations import _cuda_driver

        shape = tuple(a.shape)
        axis = self._channels_axis(shape, self.num_channels, name)
        if axis != 1:
            raise ValueError(
                f"{name}: on the GPU the channels must be on axis 1 (channel_axis="
                f"{self.channel_axis} of a rank-{len(shape)} array)"
            )
        a = _cuda_driver.contiguous(a, name, "(N, C, ...)")
        groups = self.num_groups if groups is None else groups
        return _cuda_driver.view(a, (shape[0] * groups, math.prod(shape[1:]) // groups))

    def _device_output(self, out: Any, x: Any, rows: Any, others: tuple[Any, ...]) -> Any:
        from bnsgd_numba.normalizations import _cuda_driver

        return _cuda_driver.device_output(out, x, rows, self.dtype, others)

    def _checked_device_input(self, x: Any, caller: str, groups: int | None = None) -> Any:
        x = device_input(x, "x", self.dtype, self.MIN_RANK, caller)
        return x, self._device_rows(x, "x", groups)

    def _spatial(self, x: Any) -> int:
        return math.prod(tuple(x.shape)[2:])

    def _forward_device(self, x: Any, out: Any, rows: Any = None) -> Any:
        from bnsgd_numba.normalizations import _cuda_driver

        if rows is None:
            x, rows = self._checked_device_input(x, f"{type(self).__name__}.forward")
        y, y_rows = self._device_output(out, x, rows, (self.weight, self.bias))
        work = _cuda_driver.group_forward(
            self, rows, y_rows, self.weight, self.bias, self.num_groups, self._spatial(x),
            self.eps,
        )  # fmt: skip
        self._saved = ("gpu_groups", x, rows, work, self.num_groups)
        return y

    def _backward_device(self, dy: Any, out: Any) -> Any:
        from bnsgd_numba.normalizations import _cuda_driver

        _, x, rows, work, groups = self._saved_input()
        dy = matching_dy(dy, x)
        dy_rows = self._device_rows(dy, "dy", groups)
        dx, dx_rows = self._device_output(out, x, rows, (dy, self.weight, self.bias))
        _cuda_driver.group_backward(
            dy_rows, rows, dx_rows, self.weight, work, groups, self._spatial(x),
            self.grad_weight, self.grad_bias, self,
        )  # fmt: skip
        return dx


class GroupNorm(GroupedNorm):
    """Group Normalization (Wu & He 2018), as ``torch.nn.GroupNorm``.

    Parameters
    ----------
    num_groups : int
        Number of groups the channels are split into; must divide ``num_channels``.
    num_channels : int
        Number of channels C.
    eps : float, default 1e-5
        Added to the variance.
    affine : bool, default True
        Learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).
    channel_axis : int, default 1
        The channel axis (-1: channels-last, copied once to channels-first);
        axis 0 is the batch.
    dtype : float32 or float64
        The dtype of the parameters and of the inputs.

    Notes
    -----
    Per sample n and group g, over its ``C/G * S`` values (biased variance)::

        y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]

    Statistics in float64, two passes per block merged with Chan's formula.
    There are no running statistics: ``training`` changes nothing.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        channel_axis: int = 1,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__(num_groups, num_channels, eps, affine, channel_axis, dtype)


def group_norm(*args: Any, **kwargs: Any) -> GroupNorm:
    """Create a :class:`GroupNorm`.

    Takes PyTorch's ``(num_groups, num_channels, eps, affine)`` plus ``dtype``
    and ``channel_axis``, or ``(num_channels, *, num_groups=...)``: one
    positional argument with ``num_groups`` given by keyword is the channel
    count, as every other normalization takes it
    (``create_normalization("group_norm", 64, num_groups=8)``).
    """
    if len(args) == 1 and "num_groups" in kwargs and "num_channels" not in kwargs:
        return GroupNorm(num_channels=args[0], **kwargs)
    return GroupNorm(*args, **kwargs)


bnsgd_register_normalizations = registration_hook(
    "group_norm",
    group_norm,
    standardizes=False,
    batch_statistics=False,
    examples=[
        {"num_groups": 1},
        {"num_groups": 3},
        {"num_groups": 1, "affine": False, "eps": 1e-3},
    ],
)
