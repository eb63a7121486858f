"""The ``BatchNorm`` layer: parameters, running statistics, forward and backward."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from bnsgd_numba._core.layer import NormLayer
from bnsgd_numba.batch_norm.functional import batch_norm_backward, forward_with_status


class BatchNorm(NormLayer):
    """Batch Normalization over the channel axis of inputs of any rank >= 2.

    One class serves ``BatchNorm1d``/``2d``/``3d`` of PyTorch: the input may be
    (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W), or channels-last with
    ``channel_axis=-1``.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    eps : float, default 1e-5
        Added to the variance.
    momentum : float or None, default 0.1
        Weight of the NEW batch in the running averages (PyTorch's
        convention, the seed document's ``(1 - a) * old + a * batch``; Keras'
        ``momentum=0.99`` is ``momentum=0.01`` here). ``None``: a cumulative
        average, factor ``1 / num_batches_tracked``.
    affine : bool, default True
        Learn a per-channel ``weight`` (init 1) and ``bias`` (init 0).
    track_running_stats : bool, default True
        Keep ``running_mean`` (init 0) and ``running_var`` (init 1) and use
        them in eval mode; without them eval mode uses batch statistics.
    channel_axis : int, default 1
        The channel axis of the inputs.
    dtype : float32 or float64
        The dtype of the parameters and of the inputs this layer accepts.
    on_nonfinite : {"raise", "skip"}, default "raise"
        In training, a batch whose statistics are not finite never reaches
        the running statistics: raise ``FloatingPointError`` naming the
        channels (nothing written), or ``"skip"`` the update with a
        ``RuntimeWarning``.

    Attributes
    ----------
    weight, bias, grad_weight, grad_bias : ndarray of shape (C,) or None
        Parameters and the gradients ``backward`` writes into (in place, so
        they may be views into a :class:`~bnsgd_numba.ParameterArena`).
    running_mean, running_var : ndarray of shape (C,) or None
    num_batches_tracked : int
    skipped_updates : int
        Training batches whose running update was skipped (non-finite).

    Notes
    -----
    ``backward(dy)`` uses the input of the last ``forward`` call (kept by
    reference, as autograd keeps it: do not modify it in between) and
    overwrites ``grad_weight``/``grad_bias`` (it does not accumulate).

    The layer is created on the host. :meth:`to_device` moves its parameters,
    gradients and running statistics to the GPU (numba device arrays, updated
    in place there) so that it takes CUDA arrays; :meth:`to_host` moves them
    back. Inputs must be on the same side as the layer. ``state_dict``
    always returns host copies, and ``load_state_dict`` takes host arrays on
    either side.
    """

    BUFFERS = ("running_mean", "running_var")
    REPR_KEYWORDS = ("eps", "momentum", "affine", "track_running_stats", "channel_axis")

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        channel_axis: int = 1,
        dtype: Any = np.float32,
        on_nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        self._init_channels(
            num_features, eps, momentum, affine, track_running_stats, channel_axis, dtype,
            on_nonfinite,
        )  # fmt: skip

    def _check_channel_axis(self, channel_axis: Any) -> int:
        # any axis, 0 included: batch_norm_forward checks it against each input
        return int(channel_axis)

    def forward(self, x: Any, training: bool = True, *, out: Any = None) -> Any:
        """Normalize ``x``; in training also update the running statistics.

        Parameters
        ----------
        x : array
            Input with ``num_features`` channels on ``channel_axis``.
        training : bool
            Batch statistics (and a running update) or running statistics.
        out : ndarray, optional
            Where to write the output.

        Returns
        -------
        ndarray
            The normalized, scaled and shifted input.
        """
        self._check_side(x)
        use_batch_stats = bool(training) or not self.track_running_stats
        tracking = self.track_running_stats and bool(training)
        result, bad = forward_with_status(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            training=use_batch_stats,
            momentum=self._running_factor() if tracking else 0.0,
            eps=self.eps,
            channel_axis=self.channel_axis,
            out=out,
            on_nonfinite=self.on_nonfinite,
            warn_stacklevel=3,
        )
        if tracking:
            if bad:
                self.skipped_updates += 1
            else:
                self.num_batches_tracked += 1
        self._saved = (x, result.save_mean, result.save_invstd, use_batch_stats)
        return result.y

    __call__ = forward

    def backward(self, dy: Any, *, out: Any = None) -> Any:
        """Return dx for the last ``forward``; write ``grad_weight``/``grad_bias``.

        Parameters
        ----------
        dy : array
            Gradient of the loss with respect to the last output.
        out : ndarray, optional
            Where to write dx.

        Returns
        -------
        ndarray
            Gradient of the loss with respect to the last input.
        """
        x, save_mean, save_invstd, used_batch_stats = self._saved_input()
        dx, dweight, dbias = batch_norm_backward(
            dy,
            x,
            self.weight,
            save_mean,
            save_invstd,
            training=used_batch_stats,
            channel_axis=self.channel_axis,
            out=out,
        )
        self._set_gradients(dweight, dbias)
        return dx
