"""The SGD optimizer: every parameter of a model in one pass."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bnsgd_numba._core.arrays import check_apart, is_device_array, memory_owner
from bnsgd_numba._core.checks import FLOAT_DTYPES, check_flag, check_non_negative, cpu_tunables
from bnsgd_numba.sgd._common import Hyperparameters, check_hyperparameters, update_mode
from bnsgd_numba.sgd.arena import ParameterArena
from bnsgd_numba.sgd.functional import (
    check_like,
    check_parameter,
    flat_view,
    gpu_backend,
    run_update,
    write_back,
)

STATE_VERSION = 1

_FLOAT32, _FLOAT64 = FLOAT_DTYPES  # the dtype singletons: identity is the cheap test

_HYPERPARAMETER_NAMES = (
    "lr",
    "momentum",
    "dampening",
    "weight_decay",
    "nesterov",
    "decoupled_weight_decay",
    "maximize",
)


def _any_nonfinite(flat: np.ndarray, chunk: int) -> bool:
    from bnsgd_numba.sgd import _cpu

    kernel = _cpu.nonfinite_items.for_size(flat.shape[0])
    return bool(kernel(flat, chunk).any())


def _check_own_buffer(
    buffer: np.ndarray, name: str, like: np.ndarray, like_name: str, same_shape: bool
) -> None:
    # The optimizer's own momentum buffer. momentum_buffers hands out views,
    # but their owner is reachable (view.base) and can be changed in place,
    # as can the parameter; the kernels need the buffer writable and
    # contiguous, with the parameter's size and dtype (and shape when
    # ``same_shape``: an arena's flat buffer).
    if (
        buffer.size != like.size
        or buffer.dtype != like.dtype
        or (same_shape and buffer.shape != like.shape)
    ):
        raise ValueError(
            f"{name}: the optimizer's buffer, {buffer.shape} {buffer.dtype}, no longer matches "
            f"{like_name}, {like.shape} {like.dtype}: one of them was changed in place since "
            "the buffer was made"
        )
    if not (buffer.flags.writeable and buffer.flags.c_contiguous):
        raise ValueError(
            f"{name}: the optimizer's buffer was made read-only or non-contiguous in place; "
            "load a state_dict to replace it"
        )


class SGD:
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    Parameters
    ----------
    params : sequence of numpy.ndarray, or ParameterArena
        The parameters, updated in place: a list of writable float32/float64
        arrays (each its own dtype), or a :class:`~bnsgd_numba.ParameterArena`,
        whose step updates every tensor in one kernel call.
    lr : float
        Learning rate, >= 0. Readable and settable (schedulers set it).
    momentum : float
        Momentum factor, >= 0. Readable and settable.
    dampening : float
        Dampening of the momentum, >= 0. Readable and settable.
    nesterov : bool
        Nesterov momentum (requires momentum > 0 and dampening == 0).
    weight_decay : float
        L2 penalty, >= 0. Readable and settable.
    decoupled_weight_decay : bool
        Decay the parameter directly (SGDW) instead of adding
        ``weight_decay * p`` to the gradient.
    maximize : bool
        Maximize the objective.

    Attributes
    ----------
    params : tuple of numpy.ndarray
        The parameters (an arena's views for an arena).
    arena : ParameterArena or None
        The arena, when built over one.
    momentum_buffers : tuple of numpy.ndarray or None
        One per parameter; None until its first momentum step.
    steps : int
        Steps applied.
    skipped_steps : int
        Steps skipped by ``step(..., skip_if_nonfinite=True)``.

    These are read-only (the hyperparameters are settable): the optimizer's
    buffers are matched to its parameters when they are made, and every
    step checks its arrays (writable, shape, dtype, no overlap between what
    it writes and what it reads) before it writes anything.

    Raises
    ------
    TypeError, ValueError
        Bad hyperparameters, parameters that are not writable float32/float64
        arrays, or two parameters that share memory (the same array listed
        twice would be stepped twice): the message names both indices.

    Notes
    -----
    The update of each parameter is that of :func:`~bnsgd_numba.sgd_step`
    (``torch.optim.SGD``'s for-loop semantics, plus decoupled weight decay);
    over an arena and over the list of its views the results are bitwise
    identical. Each hyperparameter is a scalar shared by every tensor.
    """

    def __init__(
        self,
        params: Sequence[np.ndarray] | ParameterArena,
        *,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
    ) -> None:
        self._hyper = check_hyperparameters(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
        )
        arena: ParameterArena | None = None
        device = False
        if isinstance(params, ParameterArena):
            if len(params) == 0:
                raise ValueError("params: the ParameterArena holds no tensors")
            arena = params
            tensors = tuple(params.params)
            device = is_device_array(params.flat_params)
        else:
            if isinstance(params, np.ndarray) or is_device_array(params):
                raise TypeError(
                    "params: expected a list of arrays or a ParameterArena, got a single "
                    "array (wrap it in a list)"
                )
            if not isinstance(params, Iterable):
                raise TypeError(
                    "params: expected a list of arrays or a ParameterArena, "
                    f"got {type(params).__name__}"
                )
            tensors = tuple(params)
            if not tensors:
                raise ValueError("params: empty list of parameters")
            devices = [is_device_array(param) for param in tensors]
            if any(devices):
                if not all(devices):
                    index = devices.index(False)
                    raise TypeError(
                        f"params[{index}]: a host array among CUDA arrays (all parameters "
                        "must be on one side)"
                    )
                gpu_backend("SGD").check_parameters_apart(tensors)
                device = True
            else:
                for i, param in enumerate(tensors):
                    check_parameter(param, f"params[{i}]")
                check_apart([(f"params[{i}]", param) for i, param in enumerate(tensors)])
        self._arena = arena
        self._device = device
        self._params = tensors
        self._momentum_buffers: list[Any] = [None] * len(tensors)
        self._flat_momentum: Any = None
        self._steps = 0
        self._skipped_steps = 0
        self._written_owners: set[int] | None = None
        if arena is None and not device:
            self._find_written_owners()

    def _find_written_owners(self) -> None:
        # The owners of the memory a list step writes (parameters, momentum
        # buffers): a gradient owned by none of them overlaps none of them,
        # which settles the usual case in a set lookup per gradient. None
        # when an owner is unknown (every step then takes the exact test).
        owners = set()
        for array in (*self._params, *self._momentum_buffers):
            if array is not None:
                owner = memory_owner(array)
                if owner is None:
                    self._written_owners = None
                    return
                owners.add(id(owner))
        self._written_owners = owners

    # hyperparameters -----------------------------------------------------

    def _replace(self, **changes: Any) -> None:
        values = self._hyper.as_dict()
        values.update(changes)
        self._hyper = check_hyperparameters(**values)

    @property
    def params(self) -> tuple[Any, ...]:
        """The parameters, in order (read-only)."""
        return self._params

    @property
    def arena(self) -> ParameterArena | None:
        """The arena this optimizer steps, or None for a list of arrays (read-only)."""
        return self._arena

    @property
    def momentum_buffers(self) -> tuple[Any, ...]:
        """One momentum buffer per parameter, None before its first momentum step.

        Views of the optimizer's own buffers (a CUDA optimizer's buffers
        themselves): values written into them are seen by the next step, but
        a change of their shape, dtype or flags is not. A buffer changed in
        place behind them (through ``.base``: made read-only, reshaped) makes
        the next step raise before it writes anything.
        """
        if self._device:
            return tuple(self._momentum_buffers)
        return tuple(None if buffer is None else buffer.view() for buffer in self._momentum_buffers)

    @property
    def steps(self) -> int:
        """Steps applied (read-only; :meth:`load_state_dict` restores it)."""
        return self._steps

    @property
    def skipped_steps(self) -> int:
        """Steps skipped by ``step(..., skip_if_nonfinite=True)`` (read-only)."""
        return self._skipped_steps

    @property
    def hyperparameters(self) -> Hyperparameters:
        """The current hyperparameters (validated, immutable)."""
        return self._hyper

    @property
    def lr(self) -> float:
        """Learning rate (settable; must stay >= 0)."""
        return self._hyper.lr

    @lr.setter
    def lr(self, value: float) -> None:
        # a scheduler sets it every step: check lr alone (nothing else
        # constrains it; the other fields were checked when they were set)
        self._hyper = dataclasses.replace(self._hyper, lr=check_non_negative(value, "lr"))

    @property
    def momentum(self) -> float:
        """Momentum factor (settable; schedulers that cycle momentum set it)."""
        return self._hyper.momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        self._replace(momentum=value)

    @property
    def dampening(self) -> float:
        """Dampening of the momentum (settable)."""
        return self._hyper.dampening

    @dampening.setter
    def dampening(self, value: float) -> None:
        self._replace(dampening=value)

    @property
    def weight_decay(self) -> float:
        """Weight decay (settable)."""
        return self._hyper.weight_decay

    @weight_decay.setter
    def weight_decay(self, value: float) -> None:
        self._replace(weight_decay=value)

    @property
    def nesterov(self) -> bool:
        """Nesterov momentum (read-only)."""
        return self._hyper.nesterov

    @property
    def decoupled_weight_decay(self) -> bool:
        """Decoupled (SGDW) weight decay (read-only)."""
        return self._hyper.decoupled_weight_decay

    @property
    def maximize(self) -> bool:
        """Maximize the objective (read-only)."""
        return self._hyper.maximize

    # stepping ------------------------------------------------------------

    def step(
        self,
        grads: Sequence[np.ndarray | None] | None = None,
        *,
        skip_if_nonfinite: bool = False,
    ) -> bool:
        """Update every parameter by one SGD step.

        Parameters
        ----------
        grads : sequence of numpy.ndarray or None
            One gradient per parameter, same shape and dtype; a None entry
            leaves that parameter and its momentum untouched (as PyTorch does
            for a parameter without ``.grad``). Omit it for an arena, whose
            step reads the arena's gradients.
        skip_if_nonfinite : bool
            First check every gradient for NaN or infinity; if there is one,
            change nothing and return False (the loss-scaling pattern of
            mixed-precision training).

        Returns
        -------
        bool
            True when the step was applied, False when it was skipped
            (:attr:`skipped_steps` counts those).

        Raises
        ------
        TypeError, ValueError
            Gradients missing, of the wrong number, shape or dtype (the message
            names ``grads[i]``); a gradient overlapping a parameter (other
            than ``grads[i]`` being ``params[i]`` itself) or a momentum
            buffer; a parameter or buffer changed in place since (made
            read-only, reshaped); bad ``config`` work sizes. Everything is
            checked before anything is written: nothing is modified when an
            error is raised.
        """
        if self._device:
            applied = gpu_backend("SGD.step").sgd_optimizer_step(
                self, grads, skip_if_nonfinite=skip_if_nonfinite
            )
        else:
            skip_if_nonfinite = check_flag(skip_if_nonfinite, "skip_if_nonfinite")
            if self._arena is not None:
                applied = self._step_arena(grads, skip_if_nonfinite)
            else:
                applied = self._step_list(grads, skip_if_nonfinite)
        if applied:
            self._steps += 1
        else:
            self._skipped_steps += 1
        return applied

    def _step_arena(self, grads: Any, skip_if_nonfinite: bool) -> bool:
        arena = self._arena
        assert arena is not None
        if grads is not None:
            raise TypeError(
                "grads: an SGD over a ParameterArena steps on the arena's gradients; "
                "write them into arena.grads and call step() without grads"
            )
        flat_params, flat_grads = arena.checked_buffers()
        chunk = cpu_tunables()[0]
        flat_momentum = self._flat_momentum
        if flat_momentum is not None and not (
            flat_momentum.ndim == 1
            and len(flat_momentum) == len(flat_params)
            and flat_momentum.dtype is flat_params.dtype
            and (flags := flat_momentum.flags).writeable
            and flags.c_contiguous
        ):
            _check_own_buffer(
                flat_momentum, "momentum_buffers", flat_params, "arena.flat_params", True
            )
        if skip_if_nonfinite and _any_nonfinite(flat_grads, chunk):
            return False
        mode = update_mode(self._hyper.momentum, flat_momentum is not None)
        if mode == 0:
            buffer = flat_params[:0]
        elif flat_momentum is None:
            buffer = np.empty(arena.size, dtype=arena.dtype)
        else:
            buffer = flat_momentum
        run_update(flat_params, flat_grads, buffer, self._hyper, mode, chunk)
        if mode != 0 and flat_momentum is None:
            # kept only once the kernel has filled it
            self._flat_momentum = buffer
            self._momentum_buffers = list(arena.views(buffer))
        return True

    def _step_list(self, grads: Any, skip_if_nonfinite: bool) -> bool:
        if grads is None:
            raise TypeError("grads: required for an SGD over a list of parameters")
        if isinstance(grads, np.ndarray) or not isinstance(grads, Sequence):
            raise TypeError(f"grads: expected a list of arrays, got {type(grads).__name__}")
        params = self._params
        if len(grads) != len(params):
            raise ValueError(f"grads: {len(grads)} gradients for {len(params)} parameters")
        chunk = cpu_tunables()[0]
        uses_buffers = self._hyper.momentum != 0.0
        owners = self._written_owners
        apart = owners is not None
        work = []
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            if grad is None:
                continue
            buffer = self._momentum_buffers[i] if uses_buffers else None
            # the parameter may have been changed in place since SGD was made
            # (made read-only, given another dtype): checked at every step
            dtype = param.dtype
            if not (
                type(grad) is np.ndarray
                and param.flags.writeable
                and grad.shape == param.shape
                and (dtype is _FLOAT32 or dtype is _FLOAT64)
                and grad.dtype is dtype
                and (
                    buffer is None
                    or (
                        buffer.size == param.size
                        and buffer.dtype is dtype
                        and (flags := buffer.flags).writeable
                        and flags.c_contiguous
                    )
                )
            ):
                check_parameter(param, f"params[{i}]")
                check_like(grad, f"grads[{i}]", param, f"params[{i}]")
                if buffer is not None:
                    _check_own_buffer(
                        buffer, f"momentum_buffers[{i}]", param, f"params[{i}]", False
                    )
            if apart:  # memory_owner(grad) inlined: this runs per tensor and step
                base = grad.base
                if base is None:
                    apart = id(grad) not in owners  # type: ignore[operator]
                else:
                    apart = (
                        type(base) is np.ndarray and base.base is None and id(base) not in owners  # type: ignore[operator]
                    )
            work.append((i, param, grad, buffer))
        if not apart:
            check_apart(
                [(f"params[{i}]", param) for i, param, _, _ in work]
                + [(f"momentum_buffers[{i}]", buffer) for i, _, _, buffer in work],
                [(f"grads[{i}]", grad) for i, _, grad, _ in work],
                {(f"params[{i}]", f"grads[{i}]") for i, _, _, _ in work},
            )
        flats = [flat_view(grad) for _, _, grad, _ in work]
        if skip_if_nonfinite and any(_any_nonfinite(flat, chunk) for flat in flats):
            return False
        hyper = self._hyper
        for (i, param, _, buffer), grad_flat in zip(work, flats, strict=True):
            mode = update_mode(hyper.momentum, buffer is not None)
            param_flat = flat_view(param)
            created = mode != 0 and buffer is None
            if mode == 0:
                buffer_flat = param_flat[:0]
            else:
                if created:
                    buffer = np.empty(param.shape, dtype=param.dtype)
                buffer_flat = buffer.reshape(-1)  # contiguous: checked above
            run_update(param_flat, grad_flat, buffer_flat, hyper, mode, chunk)
            write_back(param, param_flat)
            if created:
                # kept only once the kernel has filled it
                self._momentum_buffers[i] = buffer
                if owners is not None:
                    owners.add(id(buffer))
        return True

    def zero_grad(self) -> None:
        """Set the gradients of the arena to zero.

        Raises
        ------
        TypeError
            For an SGD over a list of arrays, which holds no gradients (they
            are passed to :meth:`step`).
        """
        if self._arena is None:
            raise TypeError(
                "zero_grad(): this SGD was built over a list of arrays and holds no "
                "gradients (they are passed to step()); build it over a ParameterArena"
            )
        self._arena.zero_grad()

    # state ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Return the optimizer's state: hyperparameters, momentum buffers (copies), counters.

        The buffers are in the order of the parameters, None where a parameter
        has had no momentum step yet; the format is the same for a list and
        for an arena, so either can load the other's state.
        """
        return {
            "version": STATE_VERSION,
            "hyperparameters": self._hyper.as_dict(),
            "shapes": [tuple(param.shape) for param in self._params],
            "dtypes": [str(param.dtype) for param in self._params],
            "momentum_buffers": [
                None if buffer is None else np.array(buffer, copy=True)
                for buffer in self._momentum_buffers
            ],
            "steps": self._steps,
            "skipped_steps": self._skipped_steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict`; later steps continue bitwise.

        Raises
        ------
        TypeError, ValueError
            A state that is not such a dict, or that belongs to a different set
            of parameters (count, shape or dtype of a momentum buffer), or
            holds invalid hyperparameters. Nothing is modified then.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
        for key in ("hyperparameters", "momentum_buffers", "steps", "skipped_steps"):
            if key not in state_dict:
                raise ValueError(f"state_dict: missing key {key!r}")
        hyper_values = state_dict["hyperparameters"]
        if not isinstance(hyper_values, dict):
            raise TypeError("state_dict['hyperparameters']: expected a dict")
        unknown = sorted(repr(key) for key in set(hyper_values) - set(_HYPERPARAMETER_NAMES))
        if unknown:
            raise ValueError(f"state_dict['hyperparameters']: unknown keys {', '.join(unknown)}")
        if "lr" not in hyper_values:
            raise ValueError("state_dict['hyperparameters']: missing key 'lr'")
        try:
            hyper = check_hyperparameters(**hyper_values)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"state_dict['hyperparameters']: {exc}") from None
        buffers = state_dict["momentum_buffers"]
        if not isinstance(buffers, Sequence):
            raise TypeError("state_dict['momentum_buffers']: expected a list")
        if len(buffers) != len(self._params):
            raise ValueError(
                f"state_dict: holds {len(buffers)} momentum buffers, this optimizer has "
                f"{len(self._params)} parameters"
            )
        for i, (buffer, param) in enumerate(zip(buffers, self._params, strict=True)):
            if buffer is not None:
                check_like(buffer, f"state_dict['momentum_buffers'][{i}]", param, f"params[{i}]")
        counters = {}
        for key in ("steps", "skipped_steps"):
            value = state_dict[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"state_dict[{key!r}]: expected an int >= 0, got {value!r}")
            counters[key] = int(value)
        present = [buffer is not None for buffer in buffers]
        if self._arena is not None and any(present) and not all(present):
            raise ValueError(
                "state_dict: a ParameterArena keeps momentum for all of its tensors or "
                "none, but this state has buffers for some only"
            )

        self._hyper = hyper
        self._steps = counters["steps"]
        self._skipped_steps = counters["skipped_steps"]
        if self._arena is not None:
            if all(present) and buffers:
                if self._flat_momentum is None:
                    self._flat_momentum = np.empty(self._arena.size, dtype=self._arena.dtype)
                views = self._arena.views(self._flat_momentum)
                for view, buffer in zip(views, buffers, strict=True):
                    view[...] = buffer
                self._momentum_buffers = list(views)
            else:
                self._flat_momentum = None
                self._momentum_buffers = [None] * len(self._params)
        else:
            self._momentum_buffers = [
                None
                if buffer is None
                else np.array(buffer, dtype=param.dtype, order="C", copy=True)
                for buffer, param in zip(buffers, self._params, strict=True)
            ]
            if not self._device:
                self._find_written_owners()

    def __repr__(self) -> str:
        target = repr(self._arena) if self._arena is not None else f"{len(self._params)} arrays"
        settings = ", ".join(f"{k}={v!r}" for k, v in self._hyper.as_dict().items())
        return f"SGD({target}, {settings})"
