"""One SGD step on one tensor: :func:`sgd_step`, and the checks every SGD entry point shares.

The kernels live in :mod:`bnsgd_numba._sgd_cpu`; this module validates input
(everything is checked before anything is written), turns arrays into flat
views, and dispatches CUDA arrays to ``bnsgd_numba.gpu_sgd``.

The GPU module is imported only when a CUDA array is passed, and is expected
to provide ``sgd_step(param, grad, momentum_buffer, **hyperparameters)`` (the
signature of :func:`sgd_step`), ``sgd_optimizer_step(optimizer, grads, *,
skip_if_nonfinite) -> bool`` (called by ``SGD.step`` when the optimizer's
parameters are CUDA arrays), ``clip_grad_norm(grads, max_norm, norm_type,
error_if_nonfinite)`` and ``clip_grad_value(grads, clip_value)``. Until it
exists, a CUDA array raises an ImportError saying CUDA support is not
available.
"""

from __future__ import annotations

import importlib
import math
import numbers
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from bnsgd_numba import config
from bnsgd_numba._arrays import any_device_array

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Hyperparameters:
    """Validated SGD hyperparameters (Python floats and bools)."""

    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    decoupled_weight_decay: bool
    maximize: bool

    def as_dict(self) -> dict[str, Any]:
        """Return the hyperparameters as a plain dict (the keyword arguments of SGD)."""
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
            "decoupled_weight_decay": self.decoupled_weight_decay,
            "maximize": self.maximize,
        }


def check_non_negative(value: Any, name: str) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number >= 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0.0:
        raise ValueError(f"{name} must be a non-negative finite number, got {number!r}")
    return number


def check_flag(value: Any, name: str) -> bool:
    """Return ``value`` as a bool, or raise TypeError if it is not a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_hyperparameters(
    *,
    lr: Any,
    momentum: Any = 0.0,
    dampening: Any = 0.0,
    weight_decay: Any = 0.0,
    nesterov: Any = False,
    decoupled_weight_decay: Any = False,
    maximize: Any = False,
) -> Hyperparameters:
    """Validate SGD's hyperparameters; raise TypeError/ValueError naming the bad one."""
    hyper = Hyperparameters(
        lr=check_non_negative(lr, "lr"),
        momentum=check_non_negative(momentum, "momentum"),
        dampening=check_non_negative(dampening, "dampening"),
        weight_decay=check_non_negative(weight_decay, "weight_decay"),
        nesterov=check_flag(nesterov, "nesterov"),
        decoupled_weight_decay=check_flag(decoupled_weight_decay, "decoupled_weight_decay"),
        maximize=check_flag(maximize, "maximize"),
    )
    if hyper.nesterov and (hyper.momentum <= 0.0 or hyper.dampening != 0.0):
        raise ValueError(
            "nesterov=True requires momentum > 0 and dampening == 0, got "
            f"momentum={hyper.momentum!r}, dampening={hyper.dampening!r}"
        )
    return hyper


def check_parameter(param: Any, name: str) -> np.ndarray:
    """Check that ``param`` is a writable float32/float64 NumPy array."""
    if not isinstance(param, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {type(param).__name__}")
    if param.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{name}: dtype {param.dtype} is not supported (float32 or float64 expected)"
        )
    if not param.flags.writeable:
        raise ValueError(f"{name}: array is not writable")
    return param


def check_like(array: Any, name: str, param: np.ndarray, param_name: str) -> np.ndarray:
    """Check that ``array`` is a NumPy array with the shape and dtype of ``param``."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {type(array).__name__}")
    if array.shape != param.shape:
        raise ValueError(f"{name}: shape {array.shape} does not match {param_name} {param.shape}")
    if array.dtype != param.dtype:
        raise TypeError(f"{name}: dtype {array.dtype} does not match {param_name} {param.dtype}")
    return array


def flat_view(array: np.ndarray) -> np.ndarray:
    """Return a 1-D C-contiguous view of ``array``, or a contiguous copy if none exists."""
    if array.flags.c_contiguous:
        return array.reshape(-1)
    return np.ascontiguousarray(array).reshape(-1)


def write_back(target: np.ndarray, flat: np.ndarray) -> None:
    """Copy ``flat`` into ``target`` when ``flat`` is the copy :func:`flat_view` made."""
    if not target.flags.c_contiguous:
        target[...] = flat.reshape(target.shape)


def gpu_backend(caller: str) -> ModuleType:
    """Import ``bnsgd_numba.gpu_sgd`` for a CUDA array, or raise a clear ImportError."""
    try:
        return importlib.import_module("bnsgd_numba.gpu_sgd")
    except ImportError as exc:
        raise ImportError(
            f"{caller}: got a CUDA array, but CUDA support is not available "
            f"(bnsgd_numba.gpu_sgd could not be imported: {exc}); pass NumPy arrays "
            "to use the CPU kernels"
        ) from exc


def update_mode(momentum: float, buffer_exists: bool) -> int:
    """Kernel mode for a step: plain, first momentum step, or later momentum step."""
    from bnsgd_numba import _sgd_cpu

    if momentum == 0.0:
        return _sgd_cpu.MODE_PLAIN
    return _sgd_cpu.MODE_MOMENTUM if buffer_exists else _sgd_cpu.MODE_FIRST


def run_update(
    param_flat: np.ndarray,
    grad_flat: np.ndarray,
    buffer_flat: np.ndarray,
    hyper: Hyperparameters,
    mode: int,
) -> None:
    """Run the fused update kernel over flat, validated arrays (in place)."""
    from bnsgd_numba import _sgd_cpu

    kernel = _sgd_cpu.sgd_update.for_size(param_flat.shape[0])
    kernel(
        param_flat,
        grad_flat,
        buffer_flat,
        hyper.lr,
        hyper.momentum,
        hyper.dampening,
        hyper.weight_decay,
        mode,
        hyper.nesterov,
        hyper.decoupled_weight_decay,
        hyper.maximize,
        config.CPU_ITEM_ELEMENTS,
    )


def sgd_step(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray | None = None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> np.ndarray | None:
    """Update ``param`` in place by one SGD step, in one fused pass.

    Parameters
    ----------
    param : numpy.ndarray
        The parameter, float32 or float64, writable; updated in place.
        A non-contiguous array works (it is updated through a contiguous copy).
    grad : numpy.ndarray
        Its gradient: same shape and dtype. Not modified.
    momentum_buffer : numpy.ndarray or None
        The buffer returned by the previous step (same shape and dtype), or
        None on the first step. Updated in place when given.
    lr : float
        Learning rate, >= 0.
    momentum : float
        Momentum factor, >= 0 (0 disables momentum).
    dampening : float
        Dampening of the momentum, >= 0 (not applied on the first step).
    nesterov : bool
        Nesterov momentum; requires momentum > 0 and dampening == 0.
    weight_decay : float
        L2 penalty, >= 0.
    decoupled_weight_decay : bool
        Apply the weight decay to the parameter directly (SGDW,
        ``p *= 1 - lr * weight_decay``) instead of adding it to the gradient.
    maximize : bool
        Maximize the objective (step along the gradient).

    Returns
    -------
    numpy.ndarray or None
        The momentum buffer: ``momentum_buffer`` updated in place, a new array
        on the first momentum step (the gradient, undampened, as PyTorch),
        or None when ``momentum == 0`` (``momentum_buffer`` is then left alone).

    Raises
    ------
    TypeError
        A non-NumPy or non-floating array, a dtype that does not match
        ``param``, a hyperparameter of the wrong type.
    ValueError
        A negative or non-finite hyperparameter, nesterov without momentum or
        with dampening, a shape that does not match ``param``, a read-only
        ``param`` or buffer. Nothing is modified when an error is raised.
    ImportError
        A CUDA array was passed and CUDA support is not available.

    Notes
    -----
    The semantics of ``torch.optim.SGD`` (its for-loop path), with ``g`` the
    gradient and ``b`` the momentum buffer::

        g = -grad if maximize else grad
        if weight_decay and not decoupled_weight_decay:
            g = g + weight_decay * p
        if momentum:
            b = g                                   (first step)
            b = momentum * b + (1 - dampening) * g  (later steps)
            g = g + momentum * b if nesterov else b
        if decoupled_weight_decay:
            p = p * (1 - lr * weight_decay)
        p = p - lr * g

    Scalars are rounded to the array's dtype as PyTorch rounds them; the
    arithmetic is done in that dtype (multiply-adds may be fused into FMA, so
    float32 results can differ from PyTorch's in the last bit). Unlike Keras,
    the learning rate is not baked into the momentum buffer: the two
    conventions agree only while the learning rate is constant.
    """
    if any_device_array(param, grad, momentum_buffer):
        return gpu_backend("sgd_step").sgd_step(
            param,
            grad,
            momentum_buffer,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
        )
    hyper = check_hyperparameters(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        decoupled_weight_decay=decoupled_weight_decay,
        maximize=maximize,
    )
    check_parameter(param, "param")
    check_like(grad, "grad", param, "param")
    if momentum_buffer is not None:
        check_like(momentum_buffer, "momentum_buffer", param, "param")
        if not momentum_buffer.flags.writeable:
            raise ValueError("momentum_buffer: array is not writable")

    mode = update_mode(hyper.momentum, momentum_buffer is not None)
    param_flat = flat_view(param)
    grad_flat = flat_view(grad)
    if mode == 0:
        buffer_flat = param_flat[:0]
    elif momentum_buffer is None:
        momentum_buffer = np.empty(param.shape, dtype=param.dtype)
        buffer_flat = momentum_buffer.reshape(-1)
    else:
        buffer_flat = flat_view(momentum_buffer)
    run_update(param_flat, grad_flat, buffer_flat, hyper, mode)
    write_back(param, param_flat)
    if mode == 0:
        return None
    write_back(momentum_buffer, buffer_flat)
    return momentum_buffer
