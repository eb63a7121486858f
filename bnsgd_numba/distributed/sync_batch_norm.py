"""``SyncBatchNorm``: BatchNorm whose training statistics are those of the global batch.

Each rank holds a part of the batch (parts may differ in size, down to
empty). In training the forward pass

1. validates the input and computes, with the BatchNorm kernels, the local
   per-channel ``(count, mean, M2)`` in float64 (two-pass blocks merged with
   Chan's formula);
2. agrees with the other ranks that nobody failed (:class:`RankGuard`);
3. exchanges the ``(count, mean[C], M2[C])`` of every rank in one Allgather
   and merges them **in rank order** with Chan's parallel formula, so every
   rank holds bitwise the same global statistics and a rank with more
   examples weighs more (the running variance gets the unbiased factor of
   the *global* count; PyTorch and Apex once got this wrong for unequal
   parts);
4. normalizes its own part and updates the running statistics.

The backward pass exchanges the per-channel (sum dy, sum dy*(x - mean),
sum (x - mean)) in one Allgather, adds them in rank order and computes the
input gradient of the global batch.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from bnsgd_numba import config
from bnsgd_numba._core.arrays import check_out, is_device_array
from bnsgd_numba._core.checks import check_flag
from bnsgd_numba._core.compile import cpu_kernel
from bnsgd_numba._core.layouts import (
    NCS,
    empty_in_layout,
    from_layout,
    native_layout,
    rows_per_item,
    to_layout,
    view_in_layout,
)
from bnsgd_numba._core.reductions import merge_chan
from bnsgd_numba.batch_norm._common import (
    NonFiniteStatisticsError,
    host_channel_vector,
    host_input,
    nonfinite_channels,
)
from bnsgd_numba.batch_norm.functional import fused_pair
from bnsgd_numba.batch_norm.layer import BatchNorm
from bnsgd_numba.distributed._mpi import resolve_comm
from bnsgd_numba.distributed.errors import RankGuard, allgather, resolve_timeout


@cpu_kernel()
def merge_rank_moments(table, channels, mean, m2):
    """Merge per-rank ``(count, mean[C], M2[C])`` rows in rank order; return the count.

    ``table`` is ``(ranks, 1 + 2 * channels)`` float64; ``mean`` and ``m2``
    receive the global statistics (Chan, Golub & LeVeque 1979, the formula
    the local kernels use between blocks).
    """
    total = 0.0
    for r in range(table.shape[0]):
        total += table[r, 0]
    for c in range(channels):
        count, running_mean, running_m2 = 0.0, 0.0, 0.0
        for r in range(table.shape[0]):
            count, running_mean, running_m2 = merge_chan(
                count, running_mean, running_m2, table[r, 0], table[r, 1 + c],
                table[r, 1 + channels + c],
            )  # fmt: skip
        mean[c] = running_mean
        m2[c] = running_m2
    return total


class SyncBatchNorm(BatchNorm):
    """BatchNorm over a batch spread across the ranks of an MPI communicator.

    The interface of :class:`~bnsgd_numba.BatchNorm` (same keywords, same
    attributes, ``state_dict``), plus ``comm`` and ``timeout``. Every rank of
    ``comm`` must call :meth:`forward` (training) and :meth:`backward` the
    same number of times, in the same order as its other collectives.

    Parameters
    ----------
    num_features : int
        Number of channels C (the same on every rank: checked).
    comm : mpi4py communicator, optional
        The ranks sharing the batch; default ``MPI.COMM_WORLD``. mpi4py is
        imported only when ``comm`` is None: without mpi4py that raises an
        ``ImportError`` telling how to install it (``bnsgd-numba[mpi]``);
        any object with mpi4py's communicator methods is accepted.
    timeout : float, None or "default"
        Deadline of each collective, in seconds (see
        :func:`~bnsgd_numba.distributed.errors.resolve_timeout`): past it the
        job is aborted (``MPI_Abort``) instead of hanging.
    **kwargs
        ``eps``, ``momentum``, ``affine``, ``bias``, ``track_running_stats``,
        ``channel_axis``, ``dtype``, ``on_nonfinite``: as for BatchNorm
        (``momentum`` is the weight of the NEW batch, PyTorch's convention).

    Notes
    -----
    - **Training** (``forward(x, training=True)``): mean and variance are
      those of the concatenation of every rank's ``x`` (any part sizes,
      empty ones included); the error for one value per channel counts the
      global batch. The running statistics are updated identically on every
      rank. A non-finite global statistic raises (or is skipped) on every
      rank alike.
    - **Eval** (``training=False``): purely local, no communication (as in
      PyTorch): the running statistics, or, with
      ``track_running_stats=False``, the local batch's statistics. One rank
      may evaluate alone.
    - **Backward** after a training forward: ``dx`` is the rank's part of
      the global batch's input gradient. ``grad_weight`` and ``grad_bias``
      hold this rank's share (sums over its own part), as in PyTorch, so
      that their sum over the ranks is the global batch's gradient; the
      average that :class:`~bnsgd_numba.distributed.DataParallelSGD` takes is
      the full-batch gradient when each rank's loss gradient is scaled by
      ``ranks * local_count / global_count`` (equal parts: by 1).
    - Each step exchanges, per rank, ``8 * (1 + 2C)`` bytes in the forward
      pass and ``8 * 3C`` in the backward pass (Allgather: every rank
      receives ``ranks`` times that), plus two agreement Allgathers of 16
      bytes per rank.
    - A bad input on one rank (wrong shape, dtype, a read-only running
      statistic...) raises :class:`~bnsgd_numba.distributed.RankFailedError`
      on every rank, naming the failing rank; it is also a ``ValueError`` /
      ``TypeError`` when the original error was.
    - Host arrays only: :meth:`to_device` raises ``NotImplementedError``.
    """

    def __init__(
        self,
        num_features: int,
        *,
        comm: Any = None,
        timeout: float | None | str = "default",
        **kwargs: Any,
    ) -> None:
        super().__init__(num_features, **kwargs)
        self.timeout = resolve_timeout(timeout)
        self.comm = resolve_comm(comm, "SyncBatchNorm")
        self._global_count: float | None = None

    def _allgather(self, send: np.ndarray, what: str) -> np.ndarray:
        """Return every rank's float64 ``send``, one row per rank in rank order."""
        ranks = self.comm.Get_size()
        return allgather(
            self.comm,
            send,
            np.empty((ranks, send.shape[0]), np.float64),
            timeout=self.timeout,
            what=f"SyncBatchNorm.{what}",
        )

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: Any, training: bool = True, *, out: Any = None) -> Any:
        """Normalize ``x`` with the global batch's statistics (training) or locally (eval).

        Parameters
        ----------
        x : ndarray
            This rank's part of the batch, ``num_features`` channels on
            ``channel_axis`` (may have zero rows).
        training : bool
            Global batch statistics and a running update (a collective:
            every rank must call it), or the running statistics (local).
        out : ndarray, optional
            Where to write the output.

        Returns
        -------
        ndarray
            The normalized, scaled and shifted input.

        Raises
        ------
        RankFailedError
            (also ``ValueError``/``TypeError``) on every rank when a rank's
            input is bad; ``ValueError`` when the global batch has one value
            per channel; ``FloatingPointError`` on every rank when a global
            statistic is not finite (``on_nonfinite="raise"``); a
            ``training`` that is not a bool raises on every rank that trains.
        """
        if training is False or training is np.False_:
            self._global_count = None
            return super().forward(x, False, out=out)
        tracking = self.track_running_stats
        with RankGuard(
            self.comm,
            "SyncBatchNorm.forward",
            timeout=self.timeout,
            signature=self.num_features,
            signature_name="num_features",
        ):
            check_flag(training, "training")
            local = self._prepare_forward(x, out, tracking)
        x, view, layout, axis, weight, bias, out, send = local
        channels = self.num_features
        table = self._allgather(send, "forward (statistics)")
        ranks = table.shape[0]
        mean = np.empty(channels, np.float64)
        m2 = np.empty(channels, np.float64)
        count = float(merge_rank_moments(table, channels, mean, m2))
        if count <= 1:
            raise ValueError(
                "x: expected more than 1 value per channel when training, got "
                f"{count:g} in the global batch over {ranks} rank(s) (this rank's input has "
                f"shape {x.shape})"
            )
        from bnsgd_numba.batch_norm import _cpu as kernels

        invstd = np.empty(channels, np.float64)
        bad = kernels.finish_statistics(mean, m2, count, self.eps, invstd)
        save_mean = mean.astype(x.dtype)
        save_invstd = invstd.astype(x.dtype)
        if bad and tracking:
            if self.on_nonfinite == "raise":
                raise NonFiniteStatisticsError(nonfinite_channels(save_mean, save_invstd))
            warnings.warn(
                f"batch statistics are not finite in {bad} channel(s) "
                f"{nonfinite_channels(save_mean, save_invstd).tolist()}; "
                "the running statistics were not updated",
                RuntimeWarning,
                stacklevel=2,
            )
        y = out if out is not None else empty_in_layout(x, axis, layout)
        y_view = view_in_layout(y, axis, layout)
        y_kernel = y_view if y_view is not None else np.empty_like(view)
        rows = rows_per_item(view, layout, config.CPU_ITEM_ELEMENTS, config.CPU_RC_COLUMNS)
        empty = np.empty(0, x.dtype)
        fused_pair("_normalize", layout).for_size(x.size)(
            view, y_kernel, x.size >= config.CPU_SERIAL_BELOW, rows, mean, invstd,
            empty if weight is None else weight, empty if bias is None else bias,
        )  # fmt: skip
        if y_view is None:
            np.copyto(y, from_layout(y_kernel, x.shape, axis, layout))
        if tracking:
            if bad:
                self.skipped_updates += 1
            else:
                kernels.update_running_statistics(
                    self.running_mean, self.running_var, mean, m2, count, self._running_factor()
                )
                self.num_batches_tracked += 1
        self._saved = (x, save_mean, save_invstd, True)
        self._global_count = count
        return y

    __call__ = forward

    def _prepare_forward(self, x: Any, out: Any, tracking: bool) -> tuple[Any, ...]:
        """Validate (nothing written yet) and compute the local moments."""
        if self.on_device or is_device_array(x):
            raise TypeError("SyncBatchNorm: x must be a host (NumPy) array")
        x, axis = self._checked_input(x)
        channels = self.num_features
        weight = host_channel_vector(self.weight, "weight", x.dtype, channels)
        bias = host_channel_vector(self.bias, "bias", x.dtype, channels)
        for name in ("running_mean", "running_var"):
            host_channel_vector(getattr(self, name), name, x.dtype, channels, writable=tracking)
        if out is not None:
            check_out(out, x, "out", (self.running_mean, self.running_var, weight, bias))
        layout = native_layout(x, axis)
        view = to_layout(x, axis, layout)
        send = np.empty(1 + 2 * channels, np.float64)
        send[0] = x.size // channels
        mean, m2 = send[1 : 1 + channels], send[1 + channels :]
        from bnsgd_numba.batch_norm import _cpu as kernels

        rows = rows_per_item(view, layout, config.CPU_ITEM_ELEMENTS, config.CPU_RC_COLUMNS)
        if layout == NCS:
            kernels.moments_ncs.for_size(x.size)(view, rows, mean, m2)
        else:
            kernels.moments_rc.for_size(x.size)(
                view.reshape(view.shape[:2]), rows, config.CPU_RC_COLUMNS, mean, m2
            )
        return x, view, layout, axis, weight, bias, out, send

    # -- backward --------------------------------------------------------------------------
    def backward(self, dy: Any, *, out: Any = None) -> Any:
        """Return this rank's part of dx; overwrite this rank's share of the parameter gradients.

        After a training forward this is a collective (every rank must call
        it); after an eval forward it is local, as in BatchNorm. The
        gradients are overwritten, not accumulated as PyTorch does.

        Parameters
        ----------
        dy : ndarray
            Gradient of the loss with respect to this rank's last output.
        out : ndarray, optional
            Where to write dx.

        Returns
        -------
        ndarray
            Gradient of the loss with respect to this rank's last input.

        Raises
        ------
        RankFailedError
            On every rank when a rank's ``dy`` or ``out`` is bad (or a rank
            calls backward before forward).
        """
        if self._global_count is None:
            return super().backward(dy, out=out)
        channels = self.num_features
        with RankGuard(
            self.comm,
            "SyncBatchNorm.backward",
            timeout=self.timeout,
            signature=channels,
            signature_name="num_features",
        ):
            prepared = self._prepare_backward(dy, out)
        x, dy, dx, axis, layout, x_view, dy_view, send, rows = prepared
        table = self._allgather(send, "backward (gradient sums)")
        ranks = table.shape[0]
        totals = table[0].copy()
        for r in range(1, ranks):  # rank order: bitwise the same on every rank
            totals += table[r]
        _, save_mean, save_invstd, _ = self._saved
        count = self._global_count
        from bnsgd_numba.batch_norm import _cpu as kernels

        dtype = x.dtype
        weight = self.weight if self.weight is not None else np.empty(0, dtype)
        global_weight = np.empty(channels, dtype)
        global_bias = np.empty(channels, dtype)
        dy_scale = np.empty(channels, dtype)
        shift = np.empty(channels, dtype)
        xmu_scale = np.empty(channels, dtype)
        center_lo = np.empty(channels, dtype)
        kernels.gradient_constants(
            totals[:channels], totals[channels : 2 * channels], totals[2 * channels :], weight,
            save_invstd, count, True, global_weight, global_bias, dy_scale, shift, xmu_scale,
            center_lo,
        )  # fmt: skip
        dx_view = view_in_layout(dx, axis, layout)
        dx_kernel = dx_view if dx_view is not None else np.empty_like(x_view)
        if layout == NCS:
            kernels.input_gradient_ncs.for_size(x.size)(
                dy_view, x_view, dx_kernel, save_mean, center_lo, dy_scale, shift, xmu_scale
            )
        else:
            shape2 = x_view.shape[:2]
            kernels.input_gradient_rc.for_size(x.size)(
                dy_view.reshape(shape2), x_view.reshape(shape2), dx_kernel.reshape(shape2), rows,
                save_mean, center_lo, dy_scale, shift, xmu_scale,
            )  # fmt: skip
        if dx_view is None:
            np.copyto(dx, from_layout(dx_kernel, x.shape, axis, layout))
        # this rank's share, about the global batch's exact mean (see gradient_constants)
        local_dy = send[:channels]
        delta = totals[2 * channels :] / count
        centered = send[channels : 2 * channels] - delta * local_dy
        self._set_gradients(centered * save_invstd.astype(np.float64), local_dy)
        return dx

    def _prepare_backward(self, dy: Any, out: Any) -> tuple[Any, ...]:
        x, save_mean, save_invstd, _ = self._saved_input()
        dy = host_input(dy, "dy")
        if dy.shape != x.shape:
            raise ValueError(f"dy: shape {dy.shape} does not match x {x.shape}")
        if dy.dtype != x.dtype:
            raise TypeError(f"dy: dtype {dy.dtype} does not match x {x.dtype}")
        if out is not None:
            check_out(out, x, "out", (dy, self.weight, save_mean, save_invstd))
        axis = self._channels_axis(x.shape, self.num_features)
        layout = native_layout(x, axis)
        x_view = to_layout(x, axis, layout)
        dy_view = to_layout(dy, axis, layout)
        dx = out if out is not None else empty_in_layout(x, axis, layout)
        channels = self.num_features
        send = np.empty(3 * channels, np.float64)
        sum_dy, sum_dy_xmu, sum_xmu = (send[k * channels : (k + 1) * channels] for k in range(3))
        rows = rows_per_item(x_view, layout, config.CPU_ITEM_ELEMENTS, config.CPU_RC_COLUMNS)
        mean = save_mean.astype(np.float64)
        from bnsgd_numba.batch_norm import _cpu as kernels

        if layout == NCS:
            kernels.gradient_sums_ncs.for_size(x.size)(
                dy_view, x_view, mean, rows, sum_dy, sum_dy_xmu, sum_xmu
            )
        else:
            shape2 = x_view.shape[:2]
            kernels.gradient_sums_rc.for_size(x.size)(
                dy_view.reshape(shape2), x_view.reshape(shape2), mean, rows,
                config.CPU_RC_COLUMNS, sum_dy, sum_dy_xmu, sum_xmu,
            )  # fmt: skip
        return x, dy, dx, axis, layout, x_view, dy_view, send, rows

    # -- host only -------------------------------------------------------------------------
    def to_device(self) -> SyncBatchNorm:
        """Not supported: SyncBatchNorm runs on host arrays.

        Raises
        ------
        NotImplementedError
            Always.
        """
        raise NotImplementedError(
            "SyncBatchNorm runs on the host (NumPy arrays over MPI); use BatchNorm on the GPU"
        )

    def __repr__(self) -> str:
        return super().__repr__() + f" over {self.comm.Get_size()} rank(s)"
