"""Telling host arrays from device arrays, without importing CUDA."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_device_array(obj: Any) -> bool:
    """Return True for a CUDA array (anything with ``__cuda_array_interface__``)."""
    return not isinstance(obj, np.ndarray) and hasattr(obj, "__cuda_array_interface__")


def any_device_array(*objs: Any) -> bool:
    """Return True when at least one of ``objs`` is a CUDA array."""
    for obj in objs:
        if obj is not None and type(obj) is not np.ndarray and is_device_array(obj):
            return True
    return False
