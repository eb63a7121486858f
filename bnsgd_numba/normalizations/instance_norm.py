"""Built-in plugin ``instance_norm``: :class:`InstanceNorm` (torch.nn.InstanceNorm1d/2d/3d)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from bnsgd_numba._core.layer import float_input
from bnsgd_numba.normalizations import _bn_support as support
from bnsgd_numba.normalizations._base import registration_hook
from bnsgd_numba.normalizations.group_norm import GroupedNorm


class InstanceNorm(GroupedNorm):
    """Instance Normalization (Ulyanov et al. 2016), as ``torch.nn.InstanceNorm{1,2,3}d``.

    One class for every rank >= 3: (N, C, L), (N, C, H, W), (N, C, D, H, W),
    or channels-last with ``channel_axis=-1``.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    eps : float, default 1e-5
        Added to the variance.
    momentum : float or None, default 0.1
        Weight of the NEW batch in the running averages (PyTorch's
        convention); ``None``: cumulative average.
    affine : bool, default False
        Learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).
    track_running_stats : bool, default False
        Keep ``running_mean``/``running_var`` and normalize with them in eval.
    channel_axis : int, default 1
        The channel axis; axis 0 is the batch.
    dtype : float32 or float64
        The dtype of the parameters and of the inputs.
    on_nonfinite : {"raise", "skip"}, default "raise"
        With running statistics, a training batch whose statistics are not
        finite raises ``FloatingPointError`` before anything is written, or
        (``"skip"``) is normalized without updating them, with a warning.

    Notes
    -----
    Each (sample, channel) is normalized over its S spatial values (biased
    variance; S > 1 in training). The running statistics follow PyTorch:
    ``running_mean += momentum * (mean_n(mean) - running_mean)`` and the same
    for the variance with the instances' unbiased variances ``var * S/(S-1)``.
    Eval with running statistics is BatchNorm's eval with them. Two
    differences from PyTorch, which turns ``momentum=None`` into 0 (the
    running statistics never move) and leaves ``num_batches_tracked`` at 0:
    here ``None`` is a cumulative average, as in BatchNorm, and
    ``num_batches_tracked`` counts the updates.
    """

    MIN_RANK = 3
    BUFFERS = ("running_mean", "running_var")
    REPR_ARGS = ("num_features",)
    REPR_KEYWORDS = ("eps", "momentum", "affine", "track_running_stats")

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        *,
        channel_axis: int = 1,
        dtype: Any = np.float32,
        on_nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(num_features, num_features, eps, affine, channel_axis, dtype)
        self.num_features = self.num_channels
        self._init_running_statistics(
            self.num_features, momentum, track_running_stats, on_nonfinite
        )

    def forward(self, x: Any, training: bool = True, *, out: Any = None) -> np.ndarray:
        """Normalize each instance; in training also update the running statistics.

        Parameters
        ----------
        x : ndarray of the layer's dtype, rank >= 3
            ``num_features`` channels on ``channel_axis``, the batch on axis 0.
        training : bool
            Instance statistics (True, or without running statistics) or
            running statistics.
        out : ndarray, optional
            Where to write the output (shape and dtype of ``x``).

        Returns
        -------
        ndarray
            Shaped like ``x``.
        """
        on_device = self._check_side(x)
        if on_device:
            x, x3 = self._checked_device_input(x, "InstanceNorm.forward")
        else:
            x = float_input(x, "x", self.dtype, self.MIN_RANK)
        if not training and self.track_running_stats:
            result = support.running_forward(self, x, self.channel_axis, out)
            self._saved = ("running", x, result.save_mean, result.save_invstd)
            return result.y
        if on_device:
            s = self._spatial(x)
        else:
            x3, axis = self._ncs(x, "x")
            n, c, s = x3.shape
        if training and s <= 1:
            raise ValueError(
                f"x: expected more than 1 spatial element when training, got shape {x.shape}"
            )
        if on_device:
            return self._instance_forward_device(x, x3, out, training)
        if not (training and self.track_running_stats):
            return self._fused_forward(x, x3, axis, out)
        # the running update (or the refusal of non-finite statistics) comes
        # between the statistics and the first write
        if out is not None:
            self._target(out, x, x3, axis, (self.weight, self.bias))  # checked before writing
        mean, var, invstd = self._statistics(x3)
        self._update_running(mean.reshape(n, c), var.reshape(n, c), s)
        return self._normalize(x, x3, axis, mean, invstd, out)

    def _instance_forward_device(self, x: Any, rows: Any, out: Any, training: bool) -> Any:
        from bnsgd_numba.normalizations import _cuda_driver

        if not (training and self.track_running_stats):
            return self._forward_device(x, out, rows)
        y, y_rows = self._device_output(out, x, rows, (self.weight, self.bias))
        n, c, s = x.shape[0], self.num_channels, rows.shape[1]
        stats = _cuda_driver.group_statistics(self, rows, c, s, self.eps)
        self._update_running(stats[:, 0].reshape(n, c), stats[:, 2].reshape(n, c), s)
        work = _cuda_driver.group_forward(
            self, rows, y_rows, self.weight, self.bias, c, s, self.eps, partials_done=True
        )
        self._saved = ("gpu_groups", x, rows, work, c)
        return y

    def _update_running(self, mean: np.ndarray, var: np.ndarray, spatial: int) -> None:
        finite = np.isfinite(mean).all(axis=0) & np.isfinite(var).all(axis=0)
        if not finite.all():
            support.refuse_nonfinite(np.flatnonzero(~finite), self.on_nonfinite, "instance")
            self.skipped_updates += 1
            return
        self._blend_running(mean.mean(axis=0), (var * (spatial / (spatial - 1))).mean(axis=0))

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
        saved = self._saved_input()
        if saved[0] in ("groups", "gpu_groups"):
            return super().backward(dy, out=out)
        _, x, save_mean, save_invstd = saved
        return support.running_backward(self, dy, x, self.channel_axis, save_mean, save_invstd, out)


def instance_norm(*args: Any, **kwargs: Any) -> InstanceNorm:
    """Create an :class:`InstanceNorm` (arguments as ``torch.nn.InstanceNorm2d``, plus ``dtype``)."""
    return InstanceNorm(*args, **kwargs)


bnsgd_register_normalizations = registration_hook(
    "instance_norm",
    instance_norm,
    standardizes=False,
    batch_statistics=False,
    min_rank=3,
    examples=[
        {},
        {"affine": True},
        {"affine": True, "track_running_stats": True},
        {"track_running_stats": True, "momentum": None},
    ],
)
