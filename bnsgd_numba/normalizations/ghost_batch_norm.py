"""Built-in plugin ``ghost_batch_norm``: :class:`GhostBatchNorm`."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from bnsgd_numba._core.checks import check_positive_int
from bnsgd_numba._core.layer import NormLayer, matching_dy
from bnsgd_numba.batch_norm.functional import batch_norm_backward, forward_with_status
from bnsgd_numba.normalizations import _bn_support as support
from bnsgd_numba.normalizations._base import registration_hook


class GhostBatchNorm(NormLayer):
    """Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017).

    In training the batch (axis 0) is split into virtual batches of
    ``virtual_batch_size`` samples (the last one may be smaller), and each is
    normalized with its own statistics, exactly as :class:`BatchNorm` would
    normalize it alone; eval uses the running statistics.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    virtual_batch_size : int, default 128
        Samples per virtual batch.
    eps, momentum, affine, track_running_stats, channel_axis, dtype, on_nonfinite
        As :class:`bnsgd_numba.BatchNorm` (``momentum`` is the weight of the
        NEW batch, PyTorch's convention; ``channel_axis`` must not be 0).

    Notes
    -----
    One running update per ``forward`` (as Keras' ``virtual_batch_size``
    does, not one per virtual batch): ``running_mean`` moves towards the
    mean of the whole batch, ``running_var`` towards the pooled
    within-virtual-batch variance ``sum(M2_k) / sum(m_k - 1)``, the unbiased
    estimate of the variance the virtual batches are normalized with (with
    equal sizes, the mean of their unbiased variances). Every virtual batch
    needs more than one value per channel in training; non-finite
    statistics in any of them are handled before anything is written.
    """

    BUFFERS = ("running_mean", "running_var")
    REPR_KEYWORDS = ("virtual_batch_size", "eps", "momentum", "affine")

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int = 128,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        channel_axis: int = 1,
        dtype: Any = np.float32,
        on_nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        self.virtual_batch_size = check_positive_int(virtual_batch_size, "virtual_batch_size")
        self._init_channels(
            num_features, eps, momentum, affine, track_running_stats, channel_axis, dtype,
            on_nonfinite,
        )  # fmt: skip

    def virtual_batches(self, batch: int) -> list[tuple[int, int]]:
        """Return the ``(start, stop)`` sample ranges of the virtual batches of a batch."""
        size = self.virtual_batch_size
        return [(a, min(a + size, batch)) for a in range(0, batch, size)]

    def forward(self, x: Any, training: bool = True) -> np.ndarray:
        """Normalize ``x`` per virtual batch (training) or with the running statistics.

        Parameters
        ----------
        x : ndarray of the layer's dtype
            ``num_features`` channels on ``channel_axis``, the batch on axis 0.
        training : bool
            Virtual-batch statistics and a running update, or running statistics.

        Returns
        -------
        ndarray
            Shaped like ``x``.
        """
        x, axis = self._checked_input(x)
        if not training and self.track_running_stats:
            result = support.running_forward(self, x, axis)
            self._saved = (x, axis, [(0, x.shape[0])], [result.save_mean],
                           [result.save_invstd], False)  # fmt: skip
            return result.y
        chunks = self.virtual_batches(x.shape[0])
        per_sample = support.per_channel_count(x.shape, axis) // max(1, x.shape[0])
        smallest = min((b - a) * per_sample for a, b in chunks) if chunks else 0
        if smallest <= 1:
            raise ValueError(
                f"x: expected more than 1 value per channel in every virtual batch of "
                f"{self.virtual_batch_size} samples when training, got input of shape "
                f"{tuple(x.shape)}"
            )
        if self._on_device:
            return self._forward_device(x, axis, chunks)
        layout = support.layout_of(x, axis)
        views = [support.view(x[a:b], axis, layout) for a, b in chunks]
        moments = [support.Moments(v, layout, self.eps) for v in views]
        tracking = self.track_running_stats
        skip = False
        if tracking and any(m.bad for m in moments):
            bad = np.unique(np.concatenate([m.nonfinite_channels() for m in moments]))
            skip = support.refuse_nonfinite(bad, self.on_nonfinite, "virtual batch")
        y = support.empty_output(x, axis, layout)
        weight, bias = self._vector(self.weight), self._vector(self.bias)
        for (a, b), v, m in zip(chunks, views, moments, strict=True):
            support.normalize(v, y[a:b], axis, layout, m.mean, m.invstd, weight, bias)
        if tracking and not skip:
            self._update_running(moments)
        elif tracking:
            self.skipped_updates += 1
        self._saved = (
            x, axis, chunks, [m.mean.astype(self.dtype) for m in moments],
            [m.invstd.astype(self.dtype) for m in moments], True,
        )  # fmt: skip
        return y

    def _forward_device(self, x: Any, axis: int, chunks: list[tuple[int, int]]) -> Any:
        # BatchNorm's GPU kernels on each virtual batch (a view of x along axis 0),
        # with throw-away running statistics at momentum 1 that come back holding
        # the virtual batch's mean and unbiased variance, for the pooled update.
        from bnsgd_numba._core import cuda as backend
        from bnsgd_numba.normalizations import _cuda_driver

        x = _cuda_driver.contiguous(x, "x", "the virtual batches")
        y = backend.device_empty(tuple(x.shape), self.dtype)
        tracking = self.track_running_stats
        c = self.num_features
        means, invstds, stats = [], [], []
        bad = 0
        for a, b in chunks:
            part = x[a:b]
            running = (None, None)
            if tracking:
                running = (
                    backend.to_device(np.zeros(c, self.dtype)),
                    backend.to_device(np.ones(c, self.dtype)),
                )
            result, part_bad = forward_with_status(
                part, self.weight, self.bias, *running, training=True, momentum=1.0,
                eps=self.eps, channel_axis=axis, out=y[a:b], on_nonfinite=self.on_nonfinite,
                warn_stacklevel=4,
            )  # fmt: skip
            bad += part_bad
            means.append(result.save_mean)
            invstds.append(result.save_invstd)
            count = support.per_channel_count(tuple(part.shape), axis)
            stats.append((count, *running))
        if tracking and bad:
            self.skipped_updates += 1
        elif tracking:
            self._update_running_pooled(stats)
        self._saved = (x, axis, chunks, means, invstds, True)
        return y

    def _update_running_pooled(self, stats: list[tuple[int, Any, Any]]) -> None:
        # Pooled from each virtual batch's mean and unbiased variance (rounded
        # once to the dtype on the device): the CPU path's statistics.
        total = float(sum(count for count, _, _ in stats))
        dof = total - len(stats)
        mean = np.zeros(self.num_features)
        var = np.zeros(self.num_features)
        for count, part_mean, part_var in stats:  # fixed order
            mean += part_mean.copy_to_host().astype(np.float64) * (count / total)
            var += part_var.copy_to_host().astype(np.float64) * ((count - 1) / dof)
        self._blend_running(mean, var)

    def _update_running(self, moments: list[support.Moments]) -> None:
        total = sum(m.count for m in moments)
        mean = np.zeros(self.num_features)
        for m in moments:  # fixed order
            mean += m.mean * (m.count / total)
        m2 = np.zeros(self.num_features)
        for m in moments:
            m2 += m.m2
        # var = m2 / (count - 1) in the kernel: count - 1 = total - (number of virtual batches)
        support.update_running(
            self.running_mean, self.running_var, mean, m2, total - len(moments) + 1.0,
            self._running_factor(),
        )  # fmt: skip
        self.num_batches_tracked += 1

    def backward(self, dy: Any) -> np.ndarray:
        """Return dx for the last ``forward``; write ``grad_weight``/``grad_bias``.

        Each virtual batch gets BatchNorm's backward with its own statistics;
        the parameter gradients are the sums over the virtual batches.

        Parameters
        ----------
        dy : ndarray
            Gradient of the loss with respect to the last output.

        Returns
        -------
        ndarray
            Gradient with respect to the last input.
        """
        x, axis, chunks, means, invstds, training = self._saved_input()
        dy = matching_dy(dy, x)
        if self._on_device:
            from bnsgd_numba._core import cuda as backend

            dx = backend.device_empty(tuple(x.shape), self.dtype)
        else:
            dx = support.empty_output(x, axis, support.layout_of(x, axis))
        grad_weight = np.zeros(self.num_features)
        grad_bias = np.zeros(self.num_features)
        for (a, b), mean, invstd in zip(chunks, means, invstds, strict=True):
            _, dweight, dbias = batch_norm_backward(
                dy[a:b], x[a:b], self.weight, mean, invstd, training=training,
                channel_axis=axis, out=dx[a:b],
            )  # fmt: skip
            grad_weight += self._host_copy(dweight)
            grad_bias += self._host_copy(dbias)
        self._set_gradients(grad_weight, grad_bias)
        return dx


def ghost_batch_norm(*args: Any, **kwargs: Any) -> GhostBatchNorm:
    """Create a :class:`GhostBatchNorm`."""
    return GhostBatchNorm(*args, **kwargs)


bnsgd_register_normalizations = registration_hook(
    "ghost_batch_norm",
    ghost_batch_norm,
    standardizes=False,
    examples=[
        {"virtual_batch_size": 2},
        {"virtual_batch_size": 3, "affine": False},
        {"virtual_batch_size": 2, "momentum": None, "track_running_stats": False},
    ],
)
