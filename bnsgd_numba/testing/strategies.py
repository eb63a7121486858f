"""Hypothesis strategies for testing normalization and scheduler plugins.

The arrays are the ones that break normalization code: tiny batches,
channels-last layouts, constant channels, and per-channel offsets much
larger than the spread (catastrophic cancellation in ``E[x^2] - E[x]^2``).
Magnitudes are bounded per dtype so a correct float32 kernel stays within
tolerances scaled by the condition ``|mean| / std``: offsets up to 1e2 with
spreads down to 1e-1 in float32 (condition <= 1e3), up to 1e4 and 1e-3 in
float64 (condition <= 1e7).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_OFFSETS = {
    np.dtype(np.float32): (0.0, 1.0, -3.0, 1e2, -1e2),
    np.dtype(np.float64): (0.0, 1.0, -3.0, 1e2, 1e4, -1e4),
}
_CHANNEL_COUNTS = st.integers(1, 4)
_SPREADS = {
    np.dtype(np.float32): (1.0, 10.0, 0.1, 0.0),
    np.dtype(np.float64): (1.0, 10.0, 1e-3, 0.0),
}


def float_dtypes() -> st.SearchStrategy[np.dtype]:
    """Return float32 or float64."""
    return st.sampled_from(FLOAT_DTYPES)


@st.composite
def batch_shapes(
    draw: st.DrawFn,
    num_features: int | st.SearchStrategy[int] = _CHANNEL_COUNTS,
    *,
    min_rank: int = 2,
    max_rank: int = 4,
    channel_axis: int = 1,
    max_side: int = 5,
) -> tuple[int, ...]:
    """Return a shape with ``num_features`` channels on ``channel_axis``, >= 2 values each.

    Parameters
    ----------
    num_features : int or strategy
        Channel count.
    min_rank, max_rank : int
        Bounds of the rank.
    channel_axis : int
        Where the channel axis goes (1, or -1 for channels-last).
    max_side : int
        Largest size of any other axis.

    Returns
    -------
    tuple of int
        The shape.
    """
    c = num_features if isinstance(num_features, int) else draw(num_features)
    rank = draw(st.integers(min_rank, max_rank))
    others = draw(st.lists(st.integers(1, max_side), min_size=rank - 1, max_size=rank - 1))
    if int(np.prod(others)) < 2:
        others[0] = 2
    axis = channel_axis % rank
    return tuple(others[:axis] + [c] + others[axis:])


@st.composite
def normalization_inputs(
    draw: st.DrawFn,
    num_features: int | st.SearchStrategy[int] = _CHANNEL_COUNTS,
    *,
    dtype: Any = None,
    channel_axis: int = 1,
    max_rank: int = 4,
) -> np.ndarray:
    """Return an input batch with an ill-conditioned offset and spread per channel.

    Parameters
    ----------
    num_features : int or strategy
        Channel count.
    dtype : float32 or float64, optional
        Drawn from :func:`float_dtypes` when None.
    channel_axis : int
        Channel axis of the result.
    max_rank : int
        Largest rank.

    Returns
    -------
    ndarray
        ``offset[c] + spread[c] * z`` with ``z`` in [-1, 1] (a spread of 0
        gives a constant channel), computed in float64 then cast once.
    """
    dt = np.dtype(dtype) if dtype is not None else draw(float_dtypes())
    shape = draw(batch_shapes(num_features, channel_axis=channel_axis, max_rank=max_rank))
    axis = channel_axis % len(shape)
    c = shape[axis]
    width = 32 if dt == np.float32 else 64
    z = draw(
        hnp.arrays(
            np.float64,
            shape,
            elements=st.floats(-1, 1, width=width, allow_subnormal=False),
        )
    )
    offsets = np.array(draw(st.lists(st.sampled_from(_OFFSETS[dt]), min_size=c, max_size=c)))
    spreads = np.array(draw(st.lists(st.sampled_from(_SPREADS[dt]), min_size=c, max_size=c)))
    view = [1] * len(shape)
    view[axis] = c
    return (offsets.reshape(view) + spreads.reshape(view) * z).astype(dt)


def learning_rates() -> st.SearchStrategy[float]:
    """Return base learning rates from 1e-6 to 10."""
    return st.floats(1e-6, 10.0, allow_nan=False, allow_infinity=False)


def scheduler_params(name: str) -> st.SearchStrategy[Mapping[str, Any]]:
    """Return one of the parameter sets scheduler ``name`` registered as ``examples``.

    Parameters
    ----------
    name : str
        Registered scheduler name.

    Returns
    -------
    strategy of dict
        Parameter dicts (possibly with ``base_lr``).
    """
    from bnsgd_numba.registry import scheduler_registration

    examples = list(scheduler_registration(name).metadata.get("examples", ())) or [{}]
    return st.sampled_from(examples).map(dict)


def metric_sequences(min_size: int = 1, max_size: int = 100) -> st.SearchStrategy[list[float]]:
    """Return sequences of finite metrics, with repeats and plateaus likely.

    Parameters
    ----------
    min_size, max_size : int
        Bounds of the length.

    Returns
    -------
    strategy of list of float
    """
    value = st.one_of(
        st.floats(0.0, 10.0, allow_nan=False),
        st.sampled_from([0.0, 1.0, 1.0 - 1e-5, 0.5]),
    )
    return st.lists(value, min_size=min_size, max_size=max_size)
