"""Gradient clipping with PyTorch semantics: by total norm and by value."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnsgd_numba import config
from bnsgd_numba._arrays import is_device_array
from bnsgd_numba.arena import ParameterArena, work_items
from bnsgd_numba.sgd import check_parameter, flat_view, gpu_backend, write_back

Gradients = np.ndarray | Sequence[np.ndarray | None] | ParameterArena

_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ adds it to the total norm


def _is_device_input(grads: Any) -> bool:
    if isinstance(grads, ParameterArena):
        return is_device_array(grads.flat_grads)
    if isinstance(grads, np.ndarray):
        return False
    if is_device_array(grads):
        return True
    return isinstance(grads, Sequence) and any(is_device_array(g) for g in grads)


def _gradient_list(grads: Any, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validate ``grads`` and return (array, flat view or copy) pairs, Nones dropped."""
    if isinstance(grads, ParameterArena):
        return [(grads.flat_grads, grads.flat_grads)]
    if isinstance(grads, np.ndarray):
        return [(check_parameter(grads, name), flat_view(grads))]
    if not isinstance(grads, Sequence) or isinstance(grads, (str, bytes)):
        raise TypeError(
            f"{name}: expected an array, a list of arrays or a ParameterArena, "
            f"got {type(grads).__name__}"
        )
    pairs = []
    for i, grad in enumerate(grads):
        if grad is None:
            continue
        check_parameter(grad, f"{name}[{i}]")
        pairs.append((grad, flat_view(grad)))
    return pairs


def _norm_type(norm_type: Any) -> float:
    if isinstance(norm_type, (bool, np.bool_)):
        raise TypeError(f"norm_type must be a number or 'inf', got {norm_type!r}")
    try:
        order = float(norm_type)
    except (TypeError, ValueError):
        raise TypeError(f"norm_type must be a number or 'inf', got {norm_type!r}") from None
    if not order > 0.0:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type!r}")
    return order


def _limit(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if math.isnan(number) or number < 0.0:
        raise ValueError(f"{name} must be >= 0 (inf allowed), got {number!r}")
    return number


def _total_norm(pairs: list[tuple[np.ndarray, np.ndarray]], grads: Any, order: float) -> float:
    from bnsgd_numba import _sgd_cpu

    if order == 2.0:
        kind = _sgd_cpu.NORM_L2
    elif order == 1.0:
        kind = _sgd_cpu.NORM_L1
    elif math.isinf(order):
        kind = _sgd_cpu.NORM_INF
    else:
        kind = _sgd_cpu.NORM_P
    chunk = config.CPU_ITEM_ELEMENTS
    partials = []
    for _, flat in pairs:
        if isinstance(grads, ParameterArena):
            starts, stops = grads.work_items(chunk)
        else:
            starts, stops = work_items([flat.shape[0]], [0], chunk)
        kernel = _sgd_cpu.norm_partials.for_size(flat.shape[0])
        partials.append(kernel(flat, starts, stops, kind, order))
    values = np.concatenate(partials) if partials else np.zeros(0)
    if values.size == 0:
        return 0.0
    if np.isnan(values).any():
        return math.nan
    if kind == _sgd_cpu.NORM_INF:
        return float(values.max())
    try:
        # fsum is exact, so the total depends on the partials only, not on
        # the order or grouping in which they are added.
        total = math.fsum(values.tolist())
    except OverflowError:
        total = math.inf
    if kind == _sgd_cpu.NORM_L2:
        return math.sqrt(total)
    if kind == _sgd_cpu.NORM_L1:
        return total
    return total ** (1.0 / order)


def clip_grad_norm(
    grads: Gradients,
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
) -> float:
    """Scale gradients in place so that their total norm is at most ``max_norm``.

    Parameters
    ----------
    grads : numpy.ndarray, sequence of numpy.ndarray or None, or ParameterArena
        The gradients (writable float32/float64 arrays; None entries are
        ignored). For an arena, its gradients, reduced and scaled in one
        kernel call each.
    max_norm : float
        The largest total norm allowed, >= 0 (inf disables clipping).
    norm_type : float or 'inf'
        Order of the norm, > 0, or inf for the largest absolute value.
    error_if_nonfinite : bool
        Raise instead of scaling when the total norm is NaN or infinite.

    Returns
    -------
    float
        The total norm of the gradients before clipping (a Python float).

    Raises
    ------
    TypeError, ValueError
        Bad arguments (the message names the argument and the index of a
        gradient in a list); nothing is modified.
    RuntimeError
        ``error_if_nonfinite`` and a NaN or infinite total norm (as PyTorch);
        nothing is modified.

    Notes
    -----
    As ``torch.nn.utils.clip_grad_norm_``::

        total = (sum over all gradients of sum(|g| ** norm_type)) ** (1 / norm_type)
        coef  = min(max_norm / (total + 1e-6), 1)
        g     = g * coef            (for every gradient, when coef < 1)

    The sums are accumulated in float64 (float32 gradients too), in work items
    of ``config.CPU_ITEM_ELEMENTS`` elements per tensor whose partials are
    added exactly (``math.fsum``): the result does not depend on the number of
    threads, and is the same for an arena and for the list of its views. The
    coefficient is rounded to each gradient's dtype. A NaN total with
    ``error_if_nonfinite=False`` makes every gradient NaN, as in PyTorch.
    Differences from PyTorch: negative ``max_norm`` and ``norm_type <= 0``
    are rejected with ValueError; the total norm is returned as a float.
    """
    if _is_device_input(grads):
        return gpu_backend("clip_grad_norm").clip_grad_norm(
            grads, max_norm, norm_type, error_if_nonfinite
        )
    limit = _limit(max_norm, "max_norm")
    order = _norm_type(norm_type)
    if not isinstance(error_if_nonfinite, (bool, np.bool_)):
        raise TypeError(f"error_if_nonfinite must be a bool, got {error_if_nonfinite!r}")
    pairs = _gradient_list(grads, "grads")
    total = _total_norm(pairs, grads, order)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {order} for gradients is non-finite, so it cannot "
            "be clipped. To disable this error and scale the gradients by the non-finite "
            "norm anyway, set error_if_nonfinite=False"
        )
    coef = limit / (total + _EPS)
    if coef > 1.0:
        coef = 1.0
    if coef != 1.0:  # also true for NaN, which poisons the gradients as in PyTorch
        _apply(pairs, "scale", coef)
    return total


def clip_grad_value(grads: Gradients, clip_value: float) -> None:
    """Clamp gradients in place to ``[-clip_value, clip_value]``.

    Parameters
    ----------
    grads : numpy.ndarray, sequence of numpy.ndarray or None, or ParameterArena
        The gradients (writable float32/float64 arrays; None entries ignored).
    clip_value : float
        The largest absolute value allowed, >= 0 (inf changes nothing).

    Raises
    ------
    TypeError, ValueError
        Bad arguments; nothing is modified.

    Notes
    -----
    As ``torch.nn.utils.clip_grad_value_``: ``g = min(max(g, -c), c)`` with
    ``c`` rounded to the gradient's dtype; NaN stays NaN. A negative
    ``clip_value`` is rejected (PyTorch would set every gradient to it).
    """
    if _is_device_input(grads):
        return gpu_backend("clip_grad_value").clip_grad_value(grads, clip_value)
    limit = _limit(clip_value, "clip_value")
    pairs = _gradient_list(grads, "grads")
    if not math.isinf(limit):
        _apply(pairs, "clamp", limit)
    return None


def _apply(pairs: list[tuple[np.ndarray, np.ndarray]], kernel_name: str, value: float) -> None:
    from bnsgd_numba import _sgd_cpu

    kernel_pair = getattr(_sgd_cpu, kernel_name)
    for array, flat in pairs:
        kernel_pair.for_size(flat.shape[0])(flat, value, config.CPU_ITEM_ELEMENTS)
        write_back(array, flat)
