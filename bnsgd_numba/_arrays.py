"""Telling host arrays from device arrays, without importing CUDA."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_device_array(obj: Any) -> bool:
    """Return True for a CUDA array.

    That is anything with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA
    tensors, numba device arrays) or numba's ``__cuda_ndarray__`` marker,
    which the CUDA simulator's arrays carry instead of the interface.
    """
    if isinstance(obj, np.ndarray):
        return False
    return getattr(type(obj), "__cuda_ndarray__", False) is True or hasattr(
        obj, "__cuda_array_interface__"
    )


def any_device_array(*objs: Any) -> bool:
    """Return True when at least one of ``objs`` is a CUDA array."""
    for obj in objs:
        if obj is not None and type(obj) is not np.ndarray and is_device_array(obj):
            return True
    return False
