"""Built-in plugin: registers :class:`bnsgd_numba.BatchNorm` as ``batch_norm``."""

from __future__ import annotations

from typing import Any

from bnsgd_numba.normalizations._base import registration_hook


def batch_norm(*args: Any, **kwargs: Any) -> Any:
    """Create a :class:`bnsgd_numba.BatchNorm`; numba is imported only on this call.

    Parameters
    ----------
    *args, **kwargs
        Arguments of ``BatchNorm(num_features, *, eps, momentum, affine,
        track_running_stats, channel_axis, dtype)``.

    Returns
    -------
    BatchNorm
        The layer.
    """
    from bnsgd_numba.batch_norm.layer import BatchNorm

    return BatchNorm(*args, **kwargs)


bnsgd_register_normalizations = registration_hook(
    "batch_norm",
    batch_norm,
    standardizes=True,
    examples=[
        {},
        {"affine": False},
        {"momentum": None, "eps": 1e-3},
        {"track_running_stats": False},
    ],
)
