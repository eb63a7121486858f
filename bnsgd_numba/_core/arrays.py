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


def check_out(out: Any, x: np.ndarray, name: str, others: tuple[Any, ...]) -> None:
    """Raise unless ``out`` is a writable NumPy array like ``x`` that overlaps none of them."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name}: shape {out.shape} does not match x {x.shape}")
    if out.dtype != x.dtype:
        raise TypeError(f"{name}: dtype {out.dtype} does not match x ({x.dtype})")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    # Memory owned by two different NumPy arrays cannot overlap: a cheap test
    # first (the per-call cost matters for tiny inputs), NumPy's exact one
    # only when it cannot tell.
    owner = out if out.base is None else out.base
    plain = type(owner) is np.ndarray and owner.base is None
    for index, other in enumerate((x, *others)):
        if other is None:
            continue
        if plain:
            other_owner = other if other.base is None else other.base
            if (
                other_owner is not owner
                and type(other_owner) is np.ndarray
                and other_owner.base is None
            ):
                continue
        if np.shares_memory(out, other):
            what = "the input x" if index == 0 else "another argument"
            raise ValueError(f"{name} overlaps {what}; pass a separate array")
