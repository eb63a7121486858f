"""Built-in plugin ``frozen_batch_norm``: :class:`FrozenBatchNorm` (torchvision's)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bnsgd_numba._core.layer import NormLayer
from bnsgd_numba.normalizations import _bn_support as support
from bnsgd_numba.normalizations._base import registration_hook


class FrozenBatchNorm(NormLayer):
    """BatchNorm with fixed statistics and affine parameters, for fine-tuning.

    As ``torchvision.ops.FrozenBatchNorm2d``: ``weight``, ``bias``,
    ``running_mean`` and ``running_var`` are buffers (loaded from a trained
    BatchNorm's ``state_dict``, whose ``num_batches_tracked`` is not needed),
    and every call normalizes with them, in training as in eval.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    eps : float, default 1e-5
        Added to ``running_var``.
    channel_axis : int, default 1
        The channel axis (-1: channels-last).
    dtype : float32 or float64
        The dtype of the buffers and of the inputs.

    Notes
    -----
    ``y = x * scale + (bias - running_mean * scale)`` with
    ``scale = weight / sqrt(running_var + eps)``, computed as BatchNorm's
    eval (``((x - running_mean) * invstd) * weight + bias``, float64
    constants). :meth:`parameters` is empty: nothing is trained.
    ``backward`` returns ``dx = dy * scale`` and, for inspection, still
    fills ``grad_weight = sum(dy * x_hat)`` and ``grad_bias = sum(dy)``.
    """

    PARAMETERS = ()
    BUFFERS = ("weight", "bias", "running_mean", "running_var")
    TRACKS_BATCHES = False
    REPR_KEYWORDS = ("eps",)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        channel_axis: int = 1,
        dtype: Any = np.float32,
    ) -> None:
        self._init_channels(num_features, eps, 0.0, True, True, channel_axis, dtype, "raise")

    def forward(self, x: Any, training: bool = True) -> np.ndarray:
        """Return ``x`` normalized with the frozen statistics (``training`` is ignored).

        Parameters
        ----------
        x : ndarray of the layer's dtype
            ``num_features`` channels on ``channel_axis``.
        training : bool
            Accepted for the common layer API; nothing is updated.

        Returns
        -------
        ndarray
            Shaped like ``x``.
        """
        x, axis = self._checked_input(x)
        result = support.running_forward(self, x, axis)
        self._saved = (x, axis, result.save_mean, result.save_invstd)
        return result.y

    def backward(self, dy: Any) -> np.ndarray:
        """Return ``dy * scale``; fill ``grad_weight``/``grad_bias`` for inspection.

        Parameters
        ----------
        dy : ndarray
            Gradient of the loss with respect to the last output.

        Returns
        -------
        ndarray
            Gradient with respect to the last input.
        """
        x, axis, mean, invstd = self._saved_input()
        return support.running_backward(self, dy, x, axis, mean, invstd)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load ``weight``, ``bias``, ``running_mean``, ``running_var``; check them first.

        A BatchNorm's ``num_batches_tracked`` is ignored (torchvision drops
        it too), so a trained BatchNorm's ``state_dict`` loads as it is.
        """
        state = {k: v for k, v in state.items() if k != "num_batches_tracked"}
        super().load_state_dict(state)


def frozen_batch_norm(*args: Any, **kwargs: Any) -> FrozenBatchNorm:
    """Create a :class:`FrozenBatchNorm`."""
    return FrozenBatchNorm(*args, **kwargs)


bnsgd_register_normalizations = registration_hook(
    "frozen_batch_norm",
    frozen_batch_norm,
    standardizes=False,
    batch_statistics=False,
    examples=[{}, {"eps": 1e-3}],
)
