"""Built-in plugin ``rms_norm``: :class:`RMSNorm` (torch.nn.RMSNorm)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bnsgd_numba.normalizations._base import registration_hook
from bnsgd_numba.normalizations.layer_norm import RowNorm


class RMSNorm(RowNorm):
    """Root Mean Square Normalization (Zhang & Sennrich 2019), as ``torch.nn.RMSNorm``.

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing dimensions each sample is normalized over.
    eps : float, optional
        Added to the mean square; ``None`` (default) is the machine epsilon
        of the dtype, as in PyTorch.
    elementwise_affine : bool, default True
        Learn ``weight`` (init 1) of shape ``normalized_shape``; no bias.
    channel_axis : int, optional
        Normalize this one axis instead of the trailing ones.
    dtype : float32 or float64
        The dtype of the parameter and of the inputs.

    Notes
    -----
    Per row of D values, with r = 1/sqrt(mean(x**2) + eps) (the mean square
    summed in float64)::

        y = x * r * weight
        dx = r * (g - x * r**2 * mean(g * x)),  g = dy * weight
        grad_weight = sum over rows of dy * x * r
    """

    CENTERED = False
    PARAMETERS = ("weight",)

    def __init__(
        self,
        normalized_shape: Any,
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        channel_axis: int | None = None,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, False, channel_axis, dtype)


def rms_norm(*args: Any, **kwargs: Any) -> RMSNorm:
    """Create an :class:`RMSNorm` (arguments as ``torch.nn.RMSNorm``, plus ``dtype``)."""
    return RMSNorm(*args, **kwargs)


bnsgd_register_normalizations = registration_hook(
    "rms_norm",
    rms_norm,
    standardizes=False,
    batch_statistics=False,
    examples=[{}, {"elementwise_affine": False}, {"eps": 1e-3}],
)
