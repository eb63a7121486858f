"""The ``BatchNorm`` layer: parameters, running statistics, forward and backward."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from bnsgd_numba._core.arrays import is_device_array
from bnsgd_numba._core.checks import (
    check_float_dtype,
    check_nonfinite_policy,
    check_positive_eps,
    check_positive_int,
    check_unit_momentum,
)
from bnsgd_numba._core.state import load_checked_state
from bnsgd_numba.batch_norm.functional import batch_norm_backward, forward_with_status

STATE_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_ARRAY_KEYS = ("weight", "bias", "grad_weight", "grad_bias", "running_mean", "running_var")


class BatchNorm:
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
        num_features = check_positive_int(num_features, "num_features")
        dtype = check_float_dtype(dtype)
        check_nonfinite_policy(on_nonfinite)
        self.num_features = num_features
        self.eps = check_positive_eps(eps)
        self.momentum = None if momentum is None else check_unit_momentum(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.channel_axis = int(channel_axis)
        self.dtype = dtype
        self.on_nonfinite = on_nonfinite
        self.weight = np.ones(num_features, dtype) if affine else None
        self.bias = np.zeros(num_features, dtype) if affine else None
        self.grad_weight = np.zeros(num_features, dtype) if affine else None
        self.grad_bias = np.zeros(num_features, dtype) if affine else None
        self.running_mean = np.zeros(num_features, dtype) if track_running_stats else None
        self.running_var = np.ones(num_features, dtype) if track_running_stats else None
        self.num_batches_tracked = 0
        self.skipped_updates = 0
        self._saved: tuple[Any, np.ndarray, np.ndarray, bool] | None = None
        self._on_device = False

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
        if is_device_array(x) != self.on_device:
            where = "the GPU" if self.on_device else "the host"
            move = "to_host()" if self.on_device else "to_device()"
            raise TypeError(
                f"BatchNorm: the layer's arrays are on {where} but x is not; move x, or "
                f"call the layer's {move}"
            )
        use_batch_stats = bool(training) or not self.track_running_stats
        tracking = bool(training) and self.track_running_stats
        factor = self.momentum
        if tracking and factor is None:
            factor = 1.0 / (self.num_batches_tracked + 1)
        result, bad = forward_with_status(
            x,
            self.weight,
            self.bias,
            self.running_mean if (tracking or not use_batch_stats) else None,
            self.running_var if (tracking or not use_batch_stats) else None,
            training=use_batch_stats,
            momentum=0.0 if factor is None else factor,
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
        if self._saved is None:
            raise RuntimeError("backward() called before forward()")
        x, save_mean, save_invstd, used_batch_stats = self._saved
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
        if self.affine:
            if self.on_device:
                self.grad_weight.copy_to_device(dweight)
                self.grad_bias.copy_to_device(dbias)
            else:
                self.grad_weight[...] = dweight
                self.grad_bias[...] = dbias
        return dx

    @property
    def on_device(self) -> bool:
        """Whether the layer's arrays are CUDA device arrays (see :meth:`to_device`)."""
        return self._on_device

    def to_device(self) -> BatchNorm:
        """Move parameters, gradients and running statistics to the GPU; return self.

        Raises
        ------
        CudaUnavailableError
            When CUDA kernels cannot run here (no GPU, no simulator).
        """
        from bnsgd_numba._core import cuda as backend

        backend.require_cuda("BatchNorm.to_device")
        if not self._on_device:
            for key in _ARRAY_KEYS:
                value = getattr(self, key)
                if value is not None:
                    setattr(self, key, backend.to_device(value))
            self._on_device = True
            self._saved = None
        return self

    def to_host(self) -> BatchNorm:
        """Move the layer's arrays back to the host (NumPy arrays); return self."""
        if self._on_device:
            for key in _ARRAY_KEYS:
                value = getattr(self, key)
                if value is not None:
                    setattr(self, key, value.copy_to_host())
            self._on_device = False
            self._saved = None
        return self

    def parameters(self) -> list[np.ndarray]:
        """Return ``[weight, bias]`` (empty without ``affine``)."""
        return [self.weight, self.bias] if self.affine else []

    def gradients(self) -> list[np.ndarray]:
        """Return ``[grad_weight, grad_bias]``, aligned with :meth:`parameters`."""
        return [self.grad_weight, self.grad_bias] if self.affine else []

    def state_dict(self) -> dict[str, np.ndarray]:
        """Return copies of the parameters and running statistics (PyTorch's keys)."""
        state = {}
        for key in STATE_KEYS[:4]:
            value = getattr(self, key)
            if value is not None:
                state[key] = value.copy_to_host() if self.on_device else np.array(value, copy=True)
        if self.track_running_stats:
            state["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy ``state`` into the layer, in place; check all of it first.

        Raises
        ------
        KeyError
            When a key is missing or unexpected.
        ValueError, TypeError
            When an entry has the wrong shape or dtype. Nothing is modified.
        """
        load_checked_state(
            self, state, sorted(set(self.state_dict()) - {"num_batches_tracked"}), self.on_device
        )

    def __repr__(self) -> str:
        return (
            f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}, "
            f"channel_axis={self.channel_axis}, dtype={self.dtype.name})"
        )
