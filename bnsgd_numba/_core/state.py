"""Loading a layer's ``state_dict``: check every entry, then copy in place."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def load_checked_state(
    layer: Any, state: dict[str, Any], array_keys: Iterable[str], on_device: bool
) -> None:
    """Copy ``state`` into ``layer``'s arrays in place, after checking all of it.

    Parameters
    ----------
    layer : object
        Has ``state_dict()``, ``dtype``, the arrays named in ``array_keys``
        (NumPy or device arrays) and, when its state has it,
        ``num_batches_tracked``.
    state : dict
        What to load.
    array_keys : iterable of str
        The keys of ``state`` that are arrays of the layer.
    on_device : bool
        Whether the layer's arrays are device arrays.

    Raises
    ------
    KeyError
        When a key is missing or unexpected.
    ValueError, TypeError
        When an entry has the wrong shape or dtype. Nothing is modified.
    """
    expected = set(layer.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
    arrays = {}
    for key in array_keys:
        value = np.asarray(state[key])
        target = getattr(layer, key)
        if value.shape != tuple(target.shape):
            raise ValueError(
                f"state_dict[{key!r}]: expected shape {target.shape}, got {value.shape}"
            )
        if value.dtype != layer.dtype:
            raise TypeError(f"state_dict[{key!r}]: expected dtype {layer.dtype}, got {value.dtype}")
        arrays[key] = value
    tracked = None
    if "num_batches_tracked" in expected:
        tracked = np.asarray(state["num_batches_tracked"])
        if tracked.shape != () or tracked.dtype.kind not in "iu" or tracked < 0:
            raise ValueError("state_dict['num_batches_tracked'] must be a non-negative integer")
    for key, value in arrays.items():
        if on_device:
            getattr(layer, key).copy_to_device(np.ascontiguousarray(value))
        else:
            np.copyto(getattr(layer, key), value)
    if tracked is not None:
        layer.num_batches_tracked = int(tracked)
