"""One SGD step on one tensor: :func:`sgd_step`, and the checks every SGD entry point shares.

The kernels live in :mod:`bnsgd_numba.sgd._cpu`; this module validates input
(everything is checked before anything is written), turns arrays into flat
views, and dispatches CUDA arrays to ``bnsgd_numba.sgd._cuda_driver``.

The GPU module is imported only when a CUDA array is passed, and is expected
to provide ``sgd_step(param, grad, momentum_buffer, **hyperparameters)`` (the
signature of :func:`sgd_step`), ``sgd_optimizer_step(optimizer, grads, *,
skip_if_nonfinite) -> bool`` (called by ``SGD.step`` when the optimizer's
parameters are CUDA arrays; ``SGD.step`` counts the step),
``check_parameters_apart(params)`` (called by ``SGD`` on a list of CUDA
arrays) and ``DeviceGradients(grads, name, caller)`` (the clipping
functions' device gradients). Without it, a CUDA array raises an ImportError
saying CUDA support is not available.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np

from bnsgd_numba._core.arrays import any_device_array, apart, check_apart
from bnsgd_numba._core.checks import FLOAT_DTYPES, cpu_tunables
from bnsgd_numba.sgd._common import Hyperparameters, check_hyperparameters, update_mode

_PARAM_MAY_BE_GRAD = frozenset({("param", "grad")})


def check_parameter(param: Any, name: str) -> np.ndarray:
    """Check that ``param`` is a writable float32/float64 NumPy array."""
    if not isinstance(param, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array, got {type(param).__name__}")
    if param.dtype not in FLOAT_DTYPES:
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
    """Import ``bnsgd_numba.sgd._cuda_driver`` for a CUDA array, or raise a clear ImportError."""
    try:
        return importlib.import_module("bnsgd_numba.sgd._cuda_driver")
    except ImportError as exc:
        raise ImportError(
            f"{caller}: got a CUDA array, but CUDA support is not available "
            f"(bnsgd_numba.sgd._cuda_driver could not be imported: {exc}); pass NumPy arrays "
            "to use the CPU kernels"
        ) from exc


def run_update(
    param_flat: np.ndarray,
    grad_flat: np.ndarray,
    buffer_flat: np.ndarray,
    hyper: Hyperparameters,
    mode: int,
    chunk: int,
) -> None:
    """Run the fused update kernel over flat, validated arrays (in place).

    ``chunk`` is ``config.CPU_ITEM_ELEMENTS``, checked by the caller
    (:func:`~bnsgd_numba._core.checks.cpu_tunables`) before anything is written.
    """
    from bnsgd_numba.sgd import _cpu

    kernel = _cpu.sgd_update.for_size(param_flat.shape[0])
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
        chunk,
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
        ``param`` or buffer, arrays that overlap in memory (``grad`` may be
        ``param`` itself, as in PyTorch, but not overlap it in part; the
        momentum buffer must overlap neither). Nothing is modified when an
        error is raised.
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
    written_buffer = momentum_buffer if hyper.momentum else None
    if not apart((param, written_buffer), (grad,)):
        check_apart(
            (("param", param), ("momentum_buffer", written_buffer)),
            (("grad", grad),),
            _PARAM_MAY_BE_GRAD,
        )
    chunk = cpu_tunables()[0]

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
    run_update(param_flat, grad_flat, buffer_flat, hyper, mode, chunk)
    write_back(param, param_flat)
    if mode == 0:
        return None
    write_back(momentum_buffer, buffer_flat)
    return momentum_buffer
