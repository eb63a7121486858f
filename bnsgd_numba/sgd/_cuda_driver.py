"""SGD on CUDA arrays: the host drivers of :mod:`bnsgd_numba.sgd._cuda`.

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
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnsgd_numba._core import cuda as backend
from bnsgd_numba._core.arrays import is_device_array
from bnsgd_numba._core.checks import FLOAT_DTYPES, check_flag, gpu_threads_per_block
from bnsgd_numba.sgd._common import Hyperparameters, check_hyperparameters, update_mode

MAX_BLOCKS = 4096
"""Most blocks of a grid-stride launch (the grid depends on the size only)."""
NORM_BLOCKS = 1024
"""Most blocks, hence float64 partials, of a norm reduction."""

_PARAM_MAY_BE_GRAD = frozenset({("param", "grad")})


def _threads() -> int:
    return gpu_threads_per_block(backend.WARP_SIZE, backend.MAX_THREADS_PER_BLOCK)


def _grid(size: int) -> tuple[int, int]:
    threads = _threads()
    return max(1, min(MAX_BLOCKS, -(-size // threads))), threads


def _device_tensor(value: Any, name: str, caller: str) -> Any:
    if not is_device_array(value):
        raise TypeError(
            f"{caller}: {name} is a {type(value).__name__}, not a CUDA array: host and device "
            "arrays cannot be mixed in one call"
        )
    array = backend.as_device_array(value)
    dtype = np.dtype(array.dtype)
    if dtype not in FLOAT_DTYPES:
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


def _check_apart(
    written: Sequence[tuple[str, Any]],
    read: Sequence[tuple[str, Any]],
    may_equal: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
) -> None:
    # _core.arrays.check_apart for C-contiguous device arrays
    given = [(name, array) for name, array in written if array is not None]
    writes = len(given)
    given += [(name, array) for name, array in read if array is not None]
    for k, (name, array) in enumerate(given[:writes]):
        for other_name, other in given[k + 1 :]:
            if not backend.overlaps(array, other):
                continue
            if backend.same_memory(array, other):
                if (name, other_name) in may_equal:
                    continue
                how = "are the same array in memory"
            else:
                how = "overlap in memory"
            raise ValueError(
                f"{name} and {other_name} {how}: {name} is written in place, "
                "so they must be separate arrays (pass a copy)"
            )


def check_parameters_apart(params: Sequence[Any]) -> None:
    """Raise ValueError naming both indices when two CUDA parameters share memory."""
    backend.require_cuda("SGD")
    _check_apart([(f"params[{i}]", param) for i, param in enumerate(params)], ())


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
    from bnsgd_numba.sgd import _cuda

    cast = np.dtype(param_flat.dtype).type
    size = int(param_flat.shape[0])
    if size == 0:
        return
    blocks, threads = _grid(size)
    _cuda.sgd_update[blocks, threads](
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
    _check_apart(
        (("param", param), ("momentum_buffer", momentum_buffer if hyper.momentum else None)),
        (("grad", grad),),
        _PARAM_MAY_BE_GRAD,
    )
    _grid(1)  # checks config.GPU_THREADS_PER_BLOCK before anything is written
    mode = update_mode(hyper.momentum, momentum_buffer is not None)
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
    from bnsgd_numba.sgd import _cuda

    flag = backend.to_device(np.zeros(1, dtype=np.int32))
    for flat in flats:
        size = int(flat.shape[0])
        if size:
            blocks, threads = _grid(size)
            _cuda.flag_nonfinite[blocks, threads](flat, flag)
    return bool(flag.copy_to_host()[0])


def sgd_optimizer_step(optimizer: Any, grads: Any, *, skip_if_nonfinite: bool) -> bool:
    """``SGD.step`` for an optimizer whose parameters are CUDA arrays.

    Parameters
    ----------
    optimizer : bnsgd_numba.SGD
        Over a list of CUDA arrays (one launch per tensor), or over a
        :class:`DeviceParameterArena` (one launch for all of them). Its
        momentum state (``_flat_momentum``, ``_momentum_buffers``) is read
        and updated here; ``SGD.step`` counts the step.
    grads : sequence of CUDA arrays or None, or None
        As ``SGD.step``.
    skip_if_nonfinite : bool
        As ``SGD.step`` (one flag read back from the device).

    Returns
    -------
    bool
        True when the step was applied, False when it was skipped.

    Raises
    ------
    TypeError, ValueError
        As the CPU path; everything is checked before anything is written.
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
        flat_params, flat_grads = arena.checked_buffers()
        _grid(1)
        if skip_if_nonfinite and any_nonfinite([flat_grads]):
            return False
        flat_momentum = optimizer._flat_momentum
        if isinstance(flat_momentum, np.ndarray):
            # SGD.load_state_dict builds host buffers; move them to the device once.
            flat_momentum = optimizer._flat_momentum = backend.to_device(flat_momentum)
            optimizer._momentum_buffers = list(arena.views(flat_momentum))
        mode = update_mode(hyper.momentum, flat_momentum is not None)
        if mode == 0:
            buffer = flat_params[:1]
        elif flat_momentum is None:
            buffer = backend.device_empty(arena.size, arena.dtype)
        else:
            buffer = flat_momentum
        if arena.size:
            run_update(flat_params, flat_grads, buffer, hyper, mode)
        if mode != 0 and flat_momentum is None:
            optimizer._flat_momentum = buffer
            optimizer._momentum_buffers = list(arena.views(buffer))
        return True

    if grads is None:
        raise TypeError("grads: required for an SGD over a list of parameters")
    if is_device_array(grads) or isinstance(grads, np.ndarray) or not isinstance(grads, Sequence):
        raise TypeError(f"grads: expected a list of arrays, got {type(grads).__name__}")
    params = optimizer.params
    if len(grads) != len(params):
        raise ValueError(f"grads: {len(grads)} gradients for {len(params)} parameters")
    uses_buffers = hyper.momentum != 0.0
    work = []
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        if grad is None:
            continue
        param_array = _device_tensor(param, f"params[{i}]", "SGD.step")
        _writable(param, f"params[{i}]")
        grad_array = _device_tensor(grad, f"grads[{i}]", "SGD.step")
        _like(grad_array, f"grads[{i}]", param_array, f"params[{i}]")
        buffer = optimizer._momentum_buffers[i] if uses_buffers else None
        if buffer is not None and not isinstance(buffer, np.ndarray):
            buffer = _device_tensor(buffer, f"momentum_buffers[{i}]", "SGD.step")
            _like(buffer, f"momentum_buffers[{i}]", param_array, f"params[{i}]")
        work.append((i, param_array, grad_array, buffer))
    _check_apart(
        [(f"params[{i}]", param) for i, param, _, _ in work]
        + [
            (f"momentum_buffers[{i}]", buffer)
            for i, _, _, buffer in work
            if not isinstance(buffer, np.ndarray)
        ],
        [(f"grads[{i}]", grad) for i, _, grad, _ in work],
        {(f"params[{i}]", f"grads[{i}]") for i, _, _, _ in work},
    )
    _grid(1)
    if skip_if_nonfinite and any_nonfinite([_flat(grad) for _, _, grad, _ in work]):
        return False
    for i, param, grad, buffer in work:
        if isinstance(buffer, np.ndarray):  # from SGD.load_state_dict
            buffer = backend.to_device(buffer)
            optimizer._momentum_buffers[i] = buffer
        mode = update_mode(hyper.momentum, buffer is not None)
        param_flat = _flat(param)
        created = mode != 0 and buffer is None
        if mode == 0:
            buffer_flat = param_flat[:1] if param_flat.shape[0] else param_flat
        else:
            if created:
                buffer = backend.device_empty(tuple(param.shape), param.dtype)
            buffer_flat = _flat(buffer)
        run_update(param_flat, _flat(grad), buffer_flat, hyper, mode)
        if created:
            optimizer._momentum_buffers[i] = buffer
    return True


# --- clipping ----------------------------------------------------------------


class DeviceGradients:
    """Device gradients for :mod:`bnsgd_numba.sgd.clipping`: flat views, Nones dropped.

    Each tensor is reduced by one launch into at most ``NORM_BLOCKS`` float64
    partials, fixed by its size and ``config.GPU_THREADS_PER_BLOCK``.
    """

    def __init__(self, grads: Any, name: str, caller: str) -> None:
        backend.require_cuda(caller)
        _threads()
        if hasattr(grads, "flat_grads"):
            self.flats = [grads.checked_buffers()[1]]
            return
        if is_device_array(grads):
            array = _device_tensor(grads, name, caller)
            _writable(grads, name)
            self.flats = [_flat(array)]
            return
        if not isinstance(grads, Sequence) or isinstance(grads, (str, bytes)):
            raise TypeError(
                f"{name}: expected an array, a list of arrays or a ParameterArena, "
                f"got {type(grads).__name__}"
            )
        named = []
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            array = _device_tensor(grad, f"{name}[{i}]", caller)
            _writable(grad, f"{name}[{i}]")
            named.append((f"{name}[{i}]", array))
        _check_apart(named, ())
        self.flats = [_flat(array) for _, array in named]

    def norm_partials(self, kind: int, order: float) -> np.ndarray:
        """float64 partials of the norm, copied to the host."""
        from bnsgd_numba.sgd import _cuda

        values = [np.zeros(0)]
        threads = _threads()
        for flat in self.flats:
            size = int(flat.shape[0])
            if size:
                blocks = max(1, min(NORM_BLOCKS, -(-size // threads)))
                partials = backend.device_empty(blocks, np.float64)
                _cuda.norm_partials[blocks, threads](flat, kind, order, partials)
                values.append(partials.copy_to_host())
        return np.concatenate(values)

    def scale(self, factor: float) -> None:
        """Multiply every gradient by ``factor`` in place."""
        from bnsgd_numba.sgd import _cuda

        for flat in self.flats:
            size = int(flat.shape[0])
            if size:
                blocks, threads = _grid(size)
                _cuda.scale[blocks, threads](flat, np.dtype(flat.dtype).type(factor))

    def clamp(self, limit: float) -> None:
        """Clamp every gradient to ``[-limit, limit]`` in place."""
        from bnsgd_numba.sgd import _cuda

        for flat in self.flats:
            size = int(flat.shape[0])
            if size:
                cast = np.dtype(flat.dtype).type
                blocks, threads = _grid(size)
                _cuda.clamp[blocks, threads](flat, cast(limit), -cast(limit))


def fill_zero(flat: Any) -> None:
    """Set a flat device array to zero (one launch)."""
    from bnsgd_numba.sgd import _cuda

    size = int(flat.shape[0])
    if size:
        blocks, threads = _grid(size)
        _cuda.fill[blocks, threads](flat, np.dtype(flat.dtype).type(0))
