"""Gradient clipping with PyTorch semantics: by total norm and by value.

One implementation for host and device gradients: the arguments are checked
and the total norm is formed here; a gradient set (host arrays here, CUDA
arrays in :mod:`bnsgd_numba.sgd._cuda_driver`) computes float64 partials of
the norm and scales or clamps in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnsgd_numba._core.arrays import apart, check_apart, is_device_array
from bnsgd_numba._core.checks import check_flag, cpu_tunables
from bnsgd_numba.sgd._common import NORM_INF, NORM_L1, NORM_L2, check_limit, check_norm_type
from bnsgd_numba.sgd.arena import ParameterArena, work_items
from bnsgd_numba.sgd.functional import check_parameter, flat_view, gpu_backend, write_back

Gradients = np.ndarray | Sequence[np.ndarray | None] | ParameterArena

_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ adds it to the total norm


class _HostGradients:
    """Host gradients as (array, flat view or contiguous copy) pairs, Nones dropped."""

    def __init__(self, grads: Any, name: str) -> None:
        self.chunk = cpu_tunables()[0]
        self.arena = grads if isinstance(grads, ParameterArena) else None
        if self.arena is not None:
            flat = grads.checked_buffers()[1]
            if not flat.flags.writeable:
                raise ValueError(f"{name}: the arena's flat_grads is not writable")
            self.pairs = [(flat, flat)]
            return
        if isinstance(grads, np.ndarray):
            self.pairs = [(check_parameter(grads, name), flat_view(grads))]
            return
        if not isinstance(grads, Sequence) or isinstance(grads, (str, bytes)):
            raise TypeError(
                f"{name}: expected an array, a list of arrays or a ParameterArena, "
                f"got {type(grads).__name__}"
            )
        for i, grad in enumerate(grads):
            if grad is not None:
                check_parameter(grad, f"{name}[{i}]")
        # each gradient is scaled in place once: one listed twice would be scaled twice
        if not apart(tuple(grads)):
            check_apart([(f"{name}[{i}]", grad) for i, grad in enumerate(grads)])
        self.pairs = [(grad, flat_view(grad)) for grad in grads if grad is not None]

    def norm_partials(self, kind: int, order: float) -> np.ndarray:
        """float64 partials of the norm, one per work item of ``config.CPU_ITEM_ELEMENTS``."""
        from bnsgd_numba.sgd import _cpu

        chunk = self.chunk
        partials = [np.zeros(0)]
        for _, flat in self.pairs:
            if self.arena is not None:
                starts, stops = self.arena.work_items(chunk)
            else:
                starts, stops = work_items([flat.shape[0]], [0], chunk)
            kernel = _cpu.norm_partials.for_size(flat.shape[0])
            partials.append(kernel(flat, starts, stops, kind, order))
        return np.concatenate(partials)

    def scale(self, factor: float) -> None:
        """Multiply every gradient by ``factor`` in place."""
        self._apply("scale", factor)

    def clamp(self, limit: float) -> None:
        """Clamp every gradient to ``[-limit, limit]`` in place."""
        self._apply("clamp", limit)

    def _apply(self, kernel_name: str, value: float) -> None:
        from bnsgd_numba.sgd import _cpu

        kernel_pair = getattr(_cpu, kernel_name)
        for array, flat in self.pairs:
            kernel_pair.for_size(flat.shape[0])(flat, value, self.chunk)
            write_back(array, flat)


def _gradient_set(grads: Any, caller: str) -> Any:
    """The host or device gradient set of ``grads``, checked (nothing written yet)."""
    if isinstance(grads, ParameterArena):
        on_device = is_device_array(grads.flat_grads)
    elif isinstance(grads, np.ndarray):
        on_device = False
    else:
        on_device = is_device_array(grads) or (
            isinstance(grads, Sequence) and any(is_device_array(g) for g in grads)
        )
    if on_device:
        return gpu_backend(caller).DeviceGradients(grads, "grads", caller)
    return _HostGradients(grads, "grads")


def _total_norm(partials: np.ndarray, kind: int, order: float) -> float:
    # The partials are added exactly (math.fsum), so the total depends on the
    # partials only, not on the order or grouping in which they are added.
    if partials.size == 0:
        return 0.0
    if np.isnan(partials).any():
        return math.nan
    if kind == NORM_INF:
        return float(partials.max())
    try:
        total = math.fsum(partials.tolist())
    except OverflowError:
        total = math.inf
    if kind == NORM_L2:
        return math.sqrt(total)
    if kind == NORM_L1:
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
    grads : array, sequence of arrays or None, or ParameterArena
        The gradients: writable float32/float64 NumPy arrays, or CUDA arrays
        (or a :class:`~bnsgd_numba.DeviceParameterArena`), not mixed; None
        entries are ignored. For an arena, its gradients, reduced and scaled
        in one kernel call each.
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
        gradient in a list), gradients that share memory (one listed twice
        would be scaled twice); nothing is modified.
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
    coefficient is rounded to each gradient's dtype. On the GPU each tensor is
    reduced by one launch into float64 partials fixed by its size and
    ``config.GPU_THREADS_PER_BLOCK``, added exactly on the host: bitwise
    reproducible, equal to the CPU's total to rounding. A NaN total with
    ``error_if_nonfinite=False`` makes every gradient NaN, as in PyTorch.
    Differences from PyTorch: negative ``max_norm`` and ``norm_type <= 0``
    are rejected with ValueError; the total norm is returned as a float.
    """
    limit = check_limit(max_norm, "max_norm")
    kind, order = check_norm_type(norm_type)
    error_if_nonfinite = check_flag(error_if_nonfinite, "error_if_nonfinite")
    gradients = _gradient_set(grads, "clip_grad_norm")
    total = _total_norm(gradients.norm_partials(kind, order), kind, order)
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
        gradients.scale(coef)
    return total


def clip_grad_value(grads: Gradients, clip_value: float) -> None:
    """Clamp gradients in place to ``[-clip_value, clip_value]``.

    Parameters
    ----------
    grads : array, sequence of arrays or None, or ParameterArena
        The gradients: NumPy or CUDA arrays, not mixed (None entries ignored).
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
    limit = check_limit(clip_value, "clip_value")
    gradients = _gradient_set(grads, "clip_grad_value")
    if not math.isinf(limit):
        gradients.clamp(limit)
