"""SGD on CUDA arrays: the host drivers of :mod:`bnsgd_numba._sgd_gpu`.

:func:`bnsgd_numba.sgd_step`, ``SGD.step``, :func:`~bnsgd_numba.clip_grad_norm`
and :func:`~bnsgd_numba.clip_grad_value` hand CUDA arrays here (numba device
arrays, or anything with ``__cuda_array_interface__``, updated in place
without copying). Arguments are checked with the CPU path's rules before any
kernel runs; host and device arrays mixed in one call are a TypeError.

:class:`DeviceParameterArena` keeps a model's parameters and gradients in two
flat device buffers; ``SGD`` over it updates every tensor in one grid-stride
launch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bnsgd_numba import _cuda_backend as backend
from bnsgd_numba import config
from bnsgd_numba._arrays import is_device_array
from bnsgd_numba.arena import ParameterArena
from bnsgd_numba.sgd import (
    SUPPORTED_DTYPES,
    Hyperparameters,
    check_flag,
    check_hyperparameters,
)

MAX_BLOCKS = 4096
"""Most blocks of a grid-stride launch (the grid depends on the size only)."""
NORM_BLOCKS = 1024
"""Most blocks, hence float64 partials, of a norm reduction."""
_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ adds it to the total norm


def _grid(size: int) -> tuple[int, int]:
    threads = int(config.GPU_THREADS_PER_BLOCK)
    return max(1, min(MAX_BLOCKS, -(-size // threads))), threads


def _device_tensor(value: Any, name: str, caller: str) -> Any:
    if not is_device_array(value):
        raise TypeError(
            f"{caller}: {name} is a {type(value).__name__}, not a CUDA array: host and device "
            "arrays cannot be mixed in one call"
        )
    array = backend.as_device_array(value)
    dtype = np.dtype(array.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: dtype {dtype} is not supported (float32 or float64 expected)")
    if not array.is_c_contiguous():
        raise ValueError(f"{name}: a CUDA array must be C-contiguous")
    return array


def _writable(value: Any, name: str) -> None:
    if backend.readonly(value):
        raise ValueError(f"{name}: array is not writable")


def _like(array: Any, name: str, param: Any, param_name: str) -> None:
    if tuple(array.shape) != tuple(param.shape):
        raise ValueError(
            f"{name}: shape {tuple(array.shape)} does not match {param_name} {tuple(param.shape)}"
        )
    if np.dtype(array.dtype) != np.dtype(param.dtype):
        raise TypeError(
            f"{name}: dtype {np.dtype(array.dtype)} does not match {param_name} "
            f"{np.dtype(param.dtype)}"
        )


def _flat(array: Any) -> Any:
    return array.reshape(math.prod(tuple(array.shape)))


def _mode(momentum: float, buffer_exists: bool) -> int:
    if momentum == 0.0:
        return 0
    return 2 if buffer_exists else 1


def run_update(
    param_flat: Any, grad_flat: Any, buffer_flat: Any, hyper: Hyperparameters, mode: int
) -> None:
    """Launch the fused update over flat device arrays (one grid-stride launch).

    Parameters
    ----------
    param_flat, grad_flat : device array
        1-D, same size and dtype; ``param_flat`` is updated in place.
    buffer_flat : device array
        The momentum buffer (any one-element array in mode 0).
    hyper : Hyperparameters
        Validated hyperparameters.
    mode : int
        0 plain, 1 first momentum step, 2 later momentum steps.
    """
    from bnsgd_numba import _sgd_gpu

    cast = np.dtype(param_flat.dtype).type
    size = int(param_flat.shape[0])
    if size == 0:
        return
    blocks, threads = _grid(size)
    _sgd_gpu.sgd_update[blocks, threads](
        param_flat, grad_flat, buffer_flat, cast(hyper.lr), cast(hyper.momentum),
        cast(1.0 - hyper.dampening), cast(hyper.weight_decay),
        cast(1.0 - hyper.lr * hyper.weight_decay), cast(-1.0) if hyper.maximize else cast(1.0),
        mode, hyper.nesterov, hyper.weight_decay != 0.0 and not hyper.decoupled_weight_decay,
        hyper.decoupled_weight_decay,
    )  # fmt: skip


def sgd_step(
    param: Any,
    grad: Any,
    momentum_buffer: Any = None,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
) -> Any:
    """:func:`bnsgd_numba.sgd_step` on CUDA arrays: one fused launch, in place.

    Parameters
    ----------
    param, grad, momentum_buffer : CUDA arrays
        C-contiguous, same shape and dtype (float32 or float64).
    lr, momentum, dampening, nesterov, weight_decay, decoupled_weight_decay, maximize
        As :func:`bnsgd_numba.sgd_step`.

    Returns
    -------
    device array or None
        The momentum buffer (a new numba device array on the first momentum
        step), or None when ``momentum == 0``.

    Raises
    ------
    TypeError, ValueError
        As the CPU path, and for host and device arrays mixed; nothing is
        modified.
    CudaUnavailableError
        CUDA kernels cannot run here.
    """
    backend.require_cuda("sgd_step")
    hyper = check_hyperparameters(
        lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
        nesterov=nesterov, decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
    )  # fmt: skip
    param_in = param
    param = _device_tensor(param, "param", "sgd_step")
    grad = _device_tensor(grad, "grad", "sgd_step")
    _like(grad, "grad", param, "param")
    _writable(param_in, "param")
    if momentum_buffer is not None:
        buffer_in = momentum_buffer
        momentum_buffer = _device_tensor(momentum_buffer, "momentum_buffer", "sgd_step")
        _like(momentum_buffer, "momentum_buffer", param, "param")
        _writable(buffer_in, "momentum_buffer")
    mode = _mode(hyper.momentum, momentum_buffer is not None)
    param_flat = _flat(param)
    if mode == 0:
        buffer_flat = param_flat[:1] if param_flat.shape[0] else param_flat
    else:
        if momentum_buffer is None:
            momentum_buffer = backend.device_empty(tuple(param.shape), param.dtype)
        buffer_flat = _flat(momentum_buffer)
    run_update(param_flat, _flat(grad), buffer_flat, hyper, mode)
    return None if mode == 0 else momentum_buffer


def any_nonfinite(flats: Sequence[Any]) -> bool:
    """Whether any of the flat device arrays holds a NaN or an infinity (one read-back)."""
    from bnsgd_numba import _sgd_gpu

    flag = backend.to_device(np.zeros(1, dtype=np.int32))
    for flat in flats:
        size = int(flat.shape[0])
        if size:
            blocks, threads = _grid(size)
            _sgd_gpu.flag_nonfinite[blocks, threads](flat, flag)
    return bool(flag.copy_to_host()[0])


def sgd_optimizer_step(optimizer: Any, grads: Any, *, skip_if_nonfinite: bool) -> bool:
    """``SGD.step`` for an optimizer whose parameters are CUDA arrays.

    Parameters
    ----------
    optimizer : bnsgd_numba.SGD
        Over a list of CUDA arrays (one launch per tensor), or over a
        :class:`DeviceParameterArena` (one launch for all of them).
    grads : sequence of CUDA arrays or None, or None
        As ``SGD.step``.
    skip_if_nonfinite : bool
        As ``SGD.step`` (one flag read back from the device).

    Returns
    -------
    bool
        True when the step was applied.
    """
    backend.require_cuda("SGD.step")
    skip_if_nonfinite = check_flag(skip_if_nonfinite, "skip_if_nonfinite")
    hyper: Hyperparameters = optimizer.hyperparameters
    arena = optimizer.arena
    if arena is not None:
        if grads is not None:
            raise TypeError(
                "grads: an SGD over a ParameterArena steps on the arena's gradients; "
                "write them into arena.grads and call step() without grads"
            )
        if skip_if_nonfinite and any_nonfinite([arena.flat_grads]):
            optimizer.skipped_steps += 1
            return False
        if isinstance(optimizer._flat_momentum, np.ndarray):
            # SGD.load_state_dict builds host buffers; move them to the device once.
            optimizer._flat_momentum = backend.to_device(optimizer._flat_momentum)
            optimizer.momentum_buffers = list(arena.views(optimizer._flat_momentum))
        mode = _mode(hyper.momentum, optimizer._flat_momentum is not None)
        if mode == 0:
            buffer = arena.flat_params[:1]
        else:
            if optimizer._flat_momentum is None:
                optimizer._flat_momentum = backend.device_empty(arena.size, arena.dtype)
                optimizer.momentum_buffers = list(arena.views(optimizer._flat_momentum))
            buffer = optimizer._flat_momentum
        if arena.size:
            run_update(arena.flat_params, arena.flat_grads, buffer, hyper, mode)
        optimizer.steps += 1
        return True

    if grads is None:
        raise TypeError("grads: required for an SGD over a list of parameters")
    if is_device_array(grads) or isinstance(grads, np.ndarray) or not isinstance(grads, Sequence):
        raise TypeError(f"grads: expected a list of arrays, got {type(grads).__name__}")
    params = optimizer.params
    if len(grads) != len(params):
        raise ValueError(f"grads: {len(grads)} gradients for {len(params)} parameters")
    work = []
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        if grad is None:
            continue
        param_array = _device_tensor(param, f"params[{i}]", "SGD.step")
        _writable(param, f"params[{i}]")
        grad_array = _device_tensor(grad, f"grads[{i}]", "SGD.step")
        _like(grad_array, f"grads[{i}]", param_array, f"params[{i}]")
        work.append((i, param_array, grad_array))
    if skip_if_nonfinite and any_nonfinite([_flat(grad) for _, _, grad in work]):
        optimizer.skipped_steps += 1
        return False
    for i, param, grad in work:
        buffer = optimizer.momentum_buffers[i]
        if isinstance(buffer, np.ndarray):  # from SGD.load_state_dict
            buffer = backend.to_device(buffer)
            optimizer.momentum_buffers[i] = buffer
        mode = _mode(hyper.momentum, buffer is not None)
        param_flat = _flat(param)
        if mode == 0:
            buffer_flat = param_flat[:1] if param_flat.shape[0] else param_flat
        else:
            if buffer is None:
                buffer = backend.device_empty(tuple(param.shape), param.dtype)
                optimizer.momentum_buffers[i] = buffer
            buffer_flat = _flat(backend.as_device_array(buffer))
        run_update(param_flat, _flat(grad), buffer_flat, hyper, mode)
    optimizer.steps += 1
    return True


# --- clipping ----------------------------------------------------------------


def _gradient_flats(grads: Any, caller: str) -> list[Any]:
    if isinstance(grads, ParameterArena):
        return [grads.flat_grads]
    if is_device_array(grads):
        array = _device_tensor(grads, "grads", caller)
        _writable(grads, "grads")
        return [_flat(array)]
    if not isinstance(grads, Sequence) or isinstance(grads, (str, bytes)):
        raise TypeError(
            f"grads: expected an array, a list of arrays or a ParameterArena, "
            f"got {type(grads).__name__}"
        )
    flats = []
    for i, grad in enumerate(grads):
        if grad is None:
            continue
        array = _device_tensor(grad, f"grads[{i}]", caller)
        _writable(grad, f"grads[{i}]")
        flats.append(_flat(array))
    return flats


def clip_grad_norm(
    grads: Any,
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
) -> float:
    """:func:`bnsgd_numba.clip_grad_norm` on CUDA arrays.

    Parameters
    ----------
    grads : CUDA array, sequence of CUDA arrays or None, or DeviceParameterArena
        The gradients, scaled in place.
    max_norm, norm_type, error_if_nonfinite
        As :func:`bnsgd_numba.clip_grad_norm`.

    Returns
    -------
    float
        The total norm before clipping.

    Notes
    -----
    Each tensor is reduced by one launch into at most ``NORM_BLOCKS`` float64
    partials (fixed by its size and ``config.GPU_THREADS_PER_BLOCK``), which
    the host adds exactly (``math.fsum``): bitwise reproducible. The split
    differs from the CPU's work items, so the two agree to rounding only.
    """
    from bnsgd_numba import _sgd_gpu
    from bnsgd_numba.clipping import _limit, _norm_type

    backend.require_cuda("clip_grad_norm")
    limit = _limit(max_norm, "max_norm")
    order = _norm_type(norm_type)
    if not isinstance(error_if_nonfinite, (bool, np.bool_)):
        raise TypeError(f"error_if_nonfinite must be a bool, got {error_if_nonfinite!r}")
    flats = _gradient_flats(grads, "clip_grad_norm")
    if order == 2.0:
        kind = 0
    elif order == 1.0:
        kind = 1
    elif math.isinf(order):
        kind = 2
    else:
        kind = 3
    values: list[np.ndarray] = []
    for flat in flats:
        size = int(flat.shape[0])
        if size == 0:
            continue
        threads = int(config.GPU_THREADS_PER_BLOCK)
        blocks = max(1, min(NORM_BLOCKS, -(-size // threads)))
        partials = backend.device_empty(blocks, np.float64)
        _sgd_gpu.norm_partials[blocks, threads](flat, kind, order, partials)
        values.append(partials.copy_to_host())
    merged = np.concatenate(values) if values else np.zeros(0)
    if merged.size == 0:
        total = 0.0
    elif np.isnan(merged).any():
        total = math.nan
    elif kind == 2:
        total = float(merged.max())
    else:
        try:
            total = math.fsum(merged.tolist())
        except OverflowError:
            total = math.inf
        if kind == 0:
            total = math.sqrt(total)
        elif kind == 3:
            total = total ** (1.0 / order)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {order} for gradients is non-finite, so it cannot "
            "be clipped. To disable this error and scale the gradients by the non-finite "
            "norm anyway, set error_if_nonfinite=False"
        )
    coef = limit / (total + _EPS)
    if coef > 1.0:
        coef = 1.0
    if coef != 1.0:
        for flat in flats:
            size = int(flat.shape[0])
            if size:
                blocks, threads = _grid(size)
                _sgd_gpu.scale[blocks, threads](flat, np.dtype(flat.dtype).type(coef))
    return total


def clip_grad_value(grads: Any, clip_value: float) -> None:
    """:func:`bnsgd_numba.clip_grad_value` on CUDA arrays: clamp in place.

    Parameters
    ----------
    grads : CUDA array, sequence of CUDA arrays or None, or DeviceParameterArena
        The gradients.
    clip_value : float
        As :func:`bnsgd_numba.clip_grad_value`.
    """
    from bnsgd_numba import _sgd_gpu
    from bnsgd_numba.clipping import _limit

    backend.require_cuda("clip_grad_value")
    limit = _limit(clip_value, "clip_value")
    flats = _gradient_flats(grads, "clip_grad_value")
    if math.isinf(limit):
        return None
    for flat in flats:
        size = int(flat.shape[0])
        if size:
            cast = np.dtype(flat.dtype).type
            blocks, threads = _grid(size)
            _sgd_gpu.clamp[blocks, threads](flat, cast(limit), -cast(limit))
    return None


# --- arena -------------------------------------------------------------------


class DeviceParameterArena(ParameterArena):
    """A :class:`~bnsgd_numba.ParameterArena` whose two buffers live on the GPU.

    Parameters
    ----------
    shapes : iterable of tuple of int (or int)
        The shape of each parameter tensor, in order.
    dtype : numpy dtype
        float32 (default) or float64.

    Notes
    -----
    ``params``, ``grads``, ``flat_params`` and ``flat_grads`` are numba
    device arrays (the views share the flat buffers). ``SGD(arena, ...)``
    updates every tensor in one grid-stride launch over the flat buffers.
    Build one from host arrays with :meth:`from_arrays` or from a host arena
    with :meth:`from_host`; :meth:`to_host` copies it back.
    """

    def __init__(self, shapes: Iterable[Any], dtype: Any = np.float32) -> None:
        backend.require_cuda("DeviceParameterArena")
        host = ParameterArena(shapes, dtype)
        self._adopt(host)

    def _adopt(self, host: ParameterArena) -> None:
        self.dtype = host.dtype
        self.shapes = host.shapes
        self.sizes = host.sizes
        self.offsets = host.offsets
        self.size = host.size
        self.flat_params = backend.to_device(host.flat_params)
        self.flat_grads = backend.to_device(host.flat_grads)
        self.params = self.views(self.flat_params)
        self.grads = self.views(self.flat_grads)
        self._work_items = {}

    @classmethod
    def from_host(cls, arena: ParameterArena) -> DeviceParameterArena:
        """Return a device copy of a host arena (parameters and gradients)."""
        backend.require_cuda("DeviceParameterArena.from_host")
        device = cls.__new__(cls)
        device._adopt(arena)
        return device

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], dtype: Any = None) -> DeviceParameterArena:
        """Return a device arena holding copies of host ``arrays`` as its parameters."""
        return cls.from_host(ParameterArena.from_arrays(arrays, dtype))

    def to_host(self) -> ParameterArena:
        """Return a host :class:`~bnsgd_numba.ParameterArena` with copies of both buffers."""
        host = ParameterArena(self.shapes, self.dtype)
        host.flat_params[...] = self.flat_params.copy_to_host()
        host.flat_grads[...] = self.flat_grads.copy_to_host()
        return host

    def views(self, flat: Any) -> list[Any]:
        """Return device views of ``flat`` (a buffer of :attr:`size` elements) in this layout."""
        if tuple(flat.shape) != (self.size,):
            raise ValueError(f"flat: shape {tuple(flat.shape)} is not ({self.size},)")
        return [
            flat[offset : offset + size].reshape(shape)
            for offset, size, shape in zip(self.offsets, self.sizes, self.shapes, strict=True)
        ]

    def zero_grad(self) -> None:
        """Set every gradient to zero (one launch)."""
        from bnsgd_numba import _sgd_gpu

        if self.size:
            blocks, threads = _grid(self.size)
            _sgd_gpu.fill[blocks, threads](self.flat_grads, self.dtype.type(0))

    def __repr__(self) -> str:
        return (
            f"DeviceParameterArena({len(self)} tensors, {self.size} elements, dtype={self.dtype})"
        )
