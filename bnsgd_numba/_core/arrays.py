"""Telling host arrays from device arrays (without importing CUDA), and host arrays apart."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
from numpy.lib.array_utils import byte_bounds


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


def memory_owner(array: np.ndarray) -> np.ndarray | None:
    """The NumPy array that allocated ``array``'s memory, or None when unknown.

    An array whose base is None owns its memory; memory from a buffer, a
    memmap, numba or an ``as_strided`` view has an unknown owner. Memory
    allocated by two different NumPy arrays cannot overlap: comparing owners
    costs a few attribute reads (the per-call cost matters for tiny inputs),
    and settles the common case without NumPy's exact test.
    """
    base = array.base
    if base is None:
        return array
    if type(base) is np.ndarray and base.base is None:
        return base
    return None


def apart(written: tuple[Any, ...], read: tuple[Any, ...] = ()) -> bool:
    """True when owners prove that no written array (None skipped) overlaps another array.

    The written arrays must have distinct owners (:func:`memory_owner`),
    none of them a read array's owner; read arrays may share one (a layer's
    weight and bias are often views of one buffer). False means only
    "unknown": :func:`check_apart` decides, and names the arrays. The
    owner test is inlined, with identity tests on a short list: a tiny call
    pays for every attribute read here. Many written arrays (a model's
    gradients) go through a set instead.
    """
    if len(written) > _FEW_WRITTEN:
        return _apart_by_id(written, read)
    owners: list[np.ndarray] = []
    for array in written:
        if array is None:
            continue
        base = array.base
        if base is not None:
            if type(base) is not np.ndarray or base.base is not None:
                return False
            array = base
        for seen in owners:
            if seen is array:
                return False
        owners.append(array)
    if not owners:
        return True
    for array in read:
        if array is None:
            continue
        base = array.base
        if base is not None:
            if type(base) is not np.ndarray or base.base is not None:
                return False
            array = base
        for seen in owners:
            if seen is array:
                return False
    return True


_FEW_WRITTEN = 8


def _apart_by_id(written: tuple[Any, ...], read: tuple[Any, ...]) -> bool:
    # apart() for many arrays: a set of owner ids, linear in their number
    owners = set()
    for array in written:
        if array is not None:
            owner = memory_owner(array)
            if owner is None or id(owner) in owners:
                return False
            owners.add(id(owner))
    for array in read:
        if array is not None:
            owner = memory_owner(array)
            if owner is None or id(owner) in owners:
                return False
    return True


def overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two NumPy arrays have an element in common in memory.

    Exact (NumPy's test, when the owners do not tell); strides too complex
    for it count as overlapping.
    """
    owner = memory_owner(a)
    if owner is not None:
        other = memory_owner(b)
        if other is not None and other is not owner:
            return False
    try:
        return bool(np.shares_memory(a, b, max_work=_MAX_OVERLAP_WORK))
    except np.exceptions.TooHardError:
        return True


_MAX_OVERLAP_WORK = 10_000


def same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two NumPy arrays map every index to the same address (a full overlap)."""
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.dtype == b.dtype
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def check_apart(
    written: Sequence[tuple[str, Any]],
    read: Sequence[tuple[str, Any]] = (),
    may_equal: Collection[tuple[str, str]] = (),
) -> None:
    """Raise ValueError naming both when an array written in place overlaps another one.

    Parameters
    ----------
    written, read : sequence of (name, NumPy array or None)
        The arrays a call writes and those it only reads (None is skipped).
        Read arrays may overlap each other.
    may_equal : collection of (name, name)
        Pairs (a written array first) that may be the very same memory, as
        PyTorch allows ``p.add_(p)`` but not a partial overlap.

    Notes
    -----
    Distinct owners (:func:`apart`) settle the common case;
    otherwise the byte extents are sorted and only arrays whose extents meet
    get NumPy's exact test, so many views of one buffer cost n log n.
    """
    if apart(tuple(array for _, array in written), tuple(array for _, array in read)):
        return
    for name, array in written:
        if array is not None and any(
            stride == 0 and n > 1 for stride, n in zip(array.strides, array.shape, strict=True)
        ):
            raise ValueError(
                f"{name} has elements that share one memory location (a stride of 0): it is "
                "written in place, so pass a copy"
            )
    entries = [(name, array, True) for name, array in written if array is not None]
    entries += [(name, array, False) for name, array in read if array is not None]
    spans = sorted(
        (*byte_bounds(array), k) for k, (_, array, _) in enumerate(entries) if array.size
    )
    active: list[tuple[int, int]] = []
    for low, high, k in spans:
        active = [(end, j) for end, j in active if end > low]
        name, array, writes = entries[k]
        for _, j in active:
            other_name, other, other_writes = entries[j]
            if not (writes or other_writes) or not overlaps(array, other):
                continue
            first, second = (k, j) if writes and (not other_writes or k < j) else (j, k)
            written_name, other_name = entries[first][0], entries[second][0]
            if same_memory(array, other):
                if (written_name, other_name) in may_equal:
                    continue
                how = "are the same array in memory"
            else:
                how = "overlap in memory"
            raise ValueError(
                f"{written_name} and {other_name} {how}: {written_name} is written in place, "
                "so they must be separate arrays (pass a copy)"
            )
        active.append((high, k))


def check_out(
    out: Any, x: np.ndarray, name: str, others: tuple[Any, ...], known_apart: bool = False
) -> None:
    """Raise unless ``out`` is a writable NumPy array like ``x`` that overlaps none of them.

    ``known_apart``: the caller's :func:`apart` already proved that ``out``
    overlaps none of them (one owner test for all of a call's arrays).
    """
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name}: shape {out.shape} does not match x {x.shape}")
    if out.dtype != x.dtype:
        raise TypeError(f"{name}: dtype {out.dtype} does not match x ({x.dtype})")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if known_apart:
        return
    # the test of memory_owner, inlined: a tiny call pays for every attribute read
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
        if overlaps(out, other):
            what = "the input x" if index == 0 else "another argument"
            raise ValueError(f"{name} overlaps {what}; pass a separate array")
