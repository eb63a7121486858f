"""Built-in plugin ``batch_renorm``: :class:`BatchRenorm` (Ioffe 2017)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from bnsgd_numba._core.checks import check_real
from bnsgd_numba._core.layer import NormLayer, matching_dy
from bnsgd_numba.batch_norm.functional import batch_norm_backward
from bnsgd_numba.normalizations import _bn_support as support
from bnsgd_numba.normalizations._base import registration_hook


def _steps(value: Any, name: str) -> int:
    import operator

    try:
        steps = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if steps < 0:
        raise ValueError(f"{name} must be >= 0, got {steps}")
    return steps


class BatchRenorm(NormLayer):
    """Batch Renormalization (Ioffe 2017), with the paper's warm-up of r_max and d_max.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    eps : float, default 1e-5
        Added to the variances.
    momentum : float or None, default 0.1
        Weight of the NEW batch in the running averages (PyTorch's
        convention; tf.keras' ``renorm_momentum=0.99`` is ``momentum=0.01``).
    affine : bool, default True
        Learn a per-channel ``weight`` and ``bias``.
    r_max : float >= 1, default 3.0
        Final clip of r to ``[1/r_max, r_max]``.
    d_max : float >= 0, default 5.0
        Final clip of d to ``[-d_max, d_max]``.
    warmup_steps : int, default 5000
        Training batches with ``r_max = 1`` and ``d_max = 0`` (plain BatchNorm).
    r_max_ramp_steps, d_max_ramp_steps : int, default 35000 and 20000
        Batches over which the clips then grow linearly to ``r_max`` and
        ``d_max`` (the paper reaches 3 at 40k and 5 at 25k steps); 0 jumps.
    channel_axis, dtype, on_nonfinite
        As :class:`bnsgd_numba.BatchNorm`.

    Notes
    -----
    In training, with the batch's mean and sigma_B = sqrt(var_B + eps), and
    sigma = sqrt(running_var + eps) from before this batch's update::

        r = clip(sigma_B / sigma, 1/r_max, r_max)
        d = clip((mean_B - running_mean) / sigma, -d_max, d_max)
        y = weight * ((x - mean_B) / sigma_B * r + d) + bias

    r and d are constants for the gradient (stop_gradient, as in the paper
    and tf.keras' ``renorm=True``): dx is BatchNorm's with weight * r, and
    ``grad_weight = r * sum(dy * x_hat) + d * sum(dy)``. The running
    statistics are BatchNorm's (unbiased variance); eval uses them. The step
    counting the warm-up is ``num_batches_tracked`` (part of the state).
    With ``r_max=1, d_max=0`` the layer is BatchNorm, bit for bit.
    """

    BUFFERS = ("running_mean", "running_var")
    REPR_KEYWORDS = ("eps", "momentum", "r_max", "d_max", "warmup_steps")

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        *,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 5000,
        r_max_ramp_steps: int = 35000,
        d_max_ramp_steps: int = 20000,
        channel_axis: int = 1,
        dtype: Any = np.float32,
        on_nonfinite: Literal["raise", "skip"] = "raise",
    ) -> None:
        self.r_max = check_real(r_max, "r_max", minimum=1.0)
        self.d_max = check_real(d_max, "d_max", minimum=0.0)
        self.warmup_steps = _steps(warmup_steps, "warmup_steps")
        self.r_max_ramp_steps = _steps(r_max_ramp_steps, "r_max_ramp_steps")
        self.d_max_ramp_steps = _steps(d_max_ramp_steps, "d_max_ramp_steps")
        self._init_channels(
            num_features, eps, momentum, affine, True, channel_axis, dtype, on_nonfinite
        )

    def clipping_at(self, step: int) -> tuple[float, float]:
        """Return ``(r_max, d_max)`` in force for the training batch after ``step`` batches."""
        after = step - self.warmup_steps
        if after < 0:
            return 1.0, 0.0

        def ramp(final: float, start: float, steps: int) -> float:
            if steps == 0 or after >= steps:
                return final
            return start + (final - start) * (after / steps)

        return ramp(self.r_max, 1.0, self.r_max_ramp_steps), ramp(
            self.d_max, 0.0, self.d_max_ramp_steps
        )

    def forward(self, x: Any, training: bool = True) -> np.ndarray:
        """Renormalize ``x`` (training) or normalize it with the running statistics.

        Parameters
        ----------
        x : ndarray of the layer's dtype
            ``num_features`` channels on ``channel_axis``.
        training : bool
            Batch statistics corrected by r and d, and a running update; or
            running statistics.

        Returns
        -------
        ndarray
            Shaped like ``x``.
        """
        x, axis = self._checked_input(x)
        if not training:
            result = support.running_forward(self, x, axis)
            self._saved = (x, axis, result.save_mean, result.save_invstd, None, None)
            return result.y
        if support.per_channel_count(x.shape, axis) <= 1:
            raise ValueError(
                f"x: expected more than 1 value per channel when training, got shape {x.shape}"
            )
        if self._on_device:
            return self._forward_device(x, axis)
        layout = support.layout_of(x, axis)
        x_view = support.view(x, axis, layout)
        moments = support.Moments(x_view, layout, self.eps)
        skip = False
        if moments.bad:
            skip = support.refuse_nonfinite(
                moments.nonfinite_channels(), self.on_nonfinite, "batch"
            )
        r_max, d_max = self.clipping_at(self.num_batches_tracked)
        sigma = np.sqrt(self.running_var.astype(np.float64) + self.eps)
        sigma_batch = np.sqrt(moments.m2 / moments.count + self.eps)
        with np.errstate(invalid="ignore"):
            r = np.clip(sigma_batch / sigma, 1.0 / r_max, r_max)
            d = np.clip((moments.mean - self.running_mean) / sigma, -d_max, d_max)
        w, b = self._affine64()
        shifted_bias = support.as_dtype(b + w * d, self.dtype)
        y = support.empty_output(x, axis, layout)
        support.normalize(
            x_view, y, axis, layout, moments.mean, moments.invstd * r,
            self._vector(self.weight), shifted_bias,
        )  # fmt: skip
        if skip:
            self.skipped_updates += 1
        else:
            support.update_running(
                self.running_mean, self.running_var, moments.mean, moments.m2, moments.count,
                self._running_factor(),
            )  # fmt: skip
            self.num_batches_tracked += 1
        self._saved = (
            x, axis, moments.mean.astype(self.dtype), moments.invstd.astype(self.dtype), r, d
        )  # fmt: skip
        return y

    def _forward_device(self, x: Any, axis: int) -> Any:
        # Channel statistics by a CUDA kernel (one block per channel, Welford +
        # Chan), r and d and the per-channel constants on the host (C values),
        # then one elementwise kernel: the CPU path's arithmetic.
        import math

        from bnsgd_numba._core import cuda as backend
        from bnsgd_numba.normalizations import _cuda_driver

        if axis != 1:
            raise ValueError(
                f"x: on the GPU the channels must be on axis 1 (channel_axis={self.channel_axis})"
            )
        x = _cuda_driver.contiguous(x, "x", "(N, C, ...)")
        shape = tuple(x.shape)
        x3 = x.reshape(shape[0], shape[1], math.prod(shape[2:]))
        mean, m2 = _cuda_driver.channel_moments(x3)
        count = float(shape[0] * x3.shape[2])
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            var = m2 / count
            invstd = 1.0 / np.sqrt(var + self.eps)
        bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(var)))
        skip = bool(bad.size) and support.refuse_nonfinite(bad, self.on_nonfinite, "batch")
        running_mean = self.running_mean.copy_to_host().astype(np.float64)
        running_var = self.running_var.copy_to_host().astype(np.float64)
        r_max, d_max = self.clipping_at(self.num_batches_tracked)
        sigma = np.sqrt(running_var + self.eps)
        with np.errstate(invalid="ignore"):
            r = np.clip(np.sqrt(var + self.eps) / sigma, 1.0 / r_max, r_max)
            d = np.clip((mean - running_mean) / sigma, -d_max, d_max)
        w, b = self._affine64()
        hi = mean.astype(self.dtype)
        constants = (
            hi,
            (mean - hi.astype(np.float64)).astype(self.dtype),
            (w * (invstd * r)).astype(self.dtype),
            (b + w * d).astype(self.dtype),
        )
        y = backend.device_empty(shape, self.dtype)
        _cuda_driver.channel_normalize(x3, y.reshape(*x3.shape), constants)
        if skip:
            self.skipped_updates += 1
        else:
            self._blend_running(mean, m2 / (count - 1.0), (running_mean, running_var))
        self._saved = (
            x, axis, backend.to_device(hi), backend.to_device(invstd.astype(self.dtype)), r, d,
        )  # fmt: skip
        return y

    def _affine64(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.num_features
        w = np.ones(c) if self.weight is None else self._host_copy(self.weight).astype(np.float64)
        b = np.zeros(c) if self.bias is None else self._host_copy(self.bias).astype(np.float64)
        return w, b

    def backward(self, dy: Any) -> np.ndarray:
        """Return dx for the last ``forward``; write ``grad_weight``/``grad_bias``.

        Parameters
        ----------
        dy : ndarray
            Gradient of the loss with respect to the last output.

        Returns
        -------
        ndarray
            Gradient with respect to the last input.
        """
        x, axis, mean, invstd, r, d = self._saved_input()
        if r is None:
            return support.running_backward(self, dy, x, axis, mean, invstd)
        dy = matching_dy(dy, x)
        w, _ = self._affine64()
        scaled_weight = support.as_dtype(w * r, self.dtype)
        if self._on_device:
            from bnsgd_numba._core import cuda as backend

            scaled_weight = backend.to_device(scaled_weight)
        dx, dweight, dbias = batch_norm_backward(
            dy, x, scaled_weight, mean, invstd, training=True, channel_axis=axis
        )
        bias_grad = self._host_copy(dbias).astype(np.float64)
        weight_grad = self._host_copy(dweight).astype(np.float64)
        self._set_gradients(r * weight_grad + d * bias_grad, bias_grad)
        return dx


def batch_renorm(*args: Any, **kwargs: Any) -> BatchRenorm:
    """Create a :class:`BatchRenorm`."""
    return BatchRenorm(*args, **kwargs)


bnsgd_register_normalizations = registration_hook(
    "batch_renorm",
    batch_renorm,
    standardizes=False,
    examples=[
        {},
        {"r_max": 1.0, "d_max": 0.0, "warmup_steps": 0},
        {"affine": False, "momentum": None},
    ],
)
