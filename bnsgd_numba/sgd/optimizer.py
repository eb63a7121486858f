"""The SGD optimizer: every parameter of a model in one pass."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bnsgd_numba import config
from bnsgd_numba._core.arrays import is_device_array
from bnsgd_numba._core.checks import check_flag
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

_HYPERPARAMETER_NAMES = (
    "lr",
    "momentum",
    "dampening",
    "weight_decay",
    "nesterov",
    "decoupled_weight_decay",
    "maximize",
)


def _any_nonfinite(flat: np.ndarray) -> bool:
    from bnsgd_numba.sgd import _cpu

    kernel = _cpu.nonfinite_items.for_size(flat.shape[0])
    return bool(kernel(flat, config.CPU_ITEM_ELEMENTS).any())


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
    params : list of numpy.ndarray
        The parameters (an arena's views for an arena).
    momentum_buffers : list of numpy.ndarray or None
        One per parameter; None until its first momentum step.
    steps : int
        Steps applied.
    skipped_steps : int
        Steps skipped by ``step(..., skip_if_nonfinite=True)``.

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
        self.arena: ParameterArena | None = None
        self._device = False
        if isinstance(params, ParameterArena):
            if len(params) == 0:
                raise ValueError("params: the ParameterArena holds no tensors")
            self.arena = params
            self.params = list(params.params)
            self._device = is_device_array(params.flat_params)
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
            self.params = list(params)
            if not self.params:
                raise ValueError("params: empty list of parameters")
            devices = [is_device_array(param) for param in self.params]
            if any(devices):
                if not all(devices):
                    index = devices.index(False)
                    raise TypeError(
                        f"params[{index}]: a host array among CUDA arrays (all parameters "
                        "must be on one side)"
                    )
                self._device = True
            else:
                for i, param in enumerate(self.params):
                    check_parameter(param, f"params[{i}]")
        self.momentum_buffers: list[np.ndarray | None] = [None] * len(self.params)
        self._flat_momentum: np.ndarray | None = None
        self.steps = 0
        self.skipped_steps = 0

    # hyperparameters -----------------------------------------------------

    def _replace(self, **changes: Any) -> None:
        values = self._hyper.as_dict()
        values.update(changes)
        self._hyper = check_hyperparameters(**values)

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
        self._replace(lr=value)

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
            names ``grads[i]``). Nothing is modified when an error is raised.
        """
        if self._device:
            return gpu_backend("SGD.step").sgd_optimizer_step(
                self, grads, skip_if_nonfinite=skip_if_nonfinite
            )
        skip_if_nonfinite = check_flag(skip_if_nonfinite, "skip_if_nonfinite")
        if self.arena is not None:
            return self._step_arena(grads, skip_if_nonfinite)
        return self._step_list(grads, skip_if_nonfinite)

    def _step_arena(self, grads: Any, skip_if_nonfinite: bool) -> bool:
        arena = self.arena
        assert arena is not None
        if grads is not None:
            raise TypeError(
                "grads: an SGD over a ParameterArena steps on the arena's gradients; "
                "write them into arena.grads and call step() without grads"
            )
        if skip_if_nonfinite and _any_nonfinite(arena.flat_grads):
            self.skipped_steps += 1
            return False
        mode = update_mode(self._hyper.momentum, self._flat_momentum is not None)
        if mode == 0:
            buffer = arena.flat_params[:0]
        else:
            if self._flat_momentum is None:
                self._flat_momentum = np.empty(arena.size, dtype=arena.dtype)
                self.momentum_buffers = list(arena.views(self._flat_momentum))
            buffer = self._flat_momentum
        run_update(arena.flat_params, arena.flat_grads, buffer, self._hyper, mode)
        self.steps += 1
        return True

    def _step_list(self, grads: Any, skip_if_nonfinite: bool) -> bool:
        if grads is None:
            raise TypeError("grads: required for an SGD over a list of parameters")
        if isinstance(grads, np.ndarray) or not isinstance(grads, Sequence):
            raise TypeError(f"grads: expected a list of arrays, got {type(grads).__name__}")
        if len(grads) != len(self.params):
            raise ValueError(f"grads: {len(grads)} gradients for {len(self.params)} parameters")
        flats: list[tuple[int, np.ndarray] | None] = []
        for i, (param, grad) in enumerate(zip(self.params, grads, strict=True)):
            if grad is None:
                continue
            check_like(grad, f"grads[{i}]", param, f"params[{i}]")
            flats.append((i, flat_view(grad)))
        if skip_if_nonfinite and any(_any_nonfinite(grad_flat) for _, grad_flat in flats):
            self.skipped_steps += 1
            return False
        hyper = self._hyper
        for i, grad_flat in flats:
            param = self.params[i]
            buffer = self.momentum_buffers[i]
            mode = update_mode(hyper.momentum, buffer is not None)
            param_flat = flat_view(param)
            if mode == 0:
                buffer_flat = param_flat[:0]
            else:
                if buffer is None:
                    buffer = np.empty(param.shape, dtype=param.dtype)
                    self.momentum_buffers[i] = buffer
                buffer_flat = buffer.reshape(-1)
            run_update(param_flat, grad_flat, buffer_flat, hyper, mode)
            write_back(param, param_flat)
        self.steps += 1
        return True

    def zero_grad(self) -> None:
        """Set the gradients of the arena to zero.

        Raises
        ------
        TypeError
            For an SGD over a list of arrays, which holds no gradients (they
            are passed to :meth:`step`).
        """
        if self.arena is None:
            raise TypeError(
                "zero_grad(): this SGD was built over a list of arrays and holds no "
                "gradients (they are passed to step()); build it over a ParameterArena"
            )
        self.arena.zero_grad()

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
            "shapes": [tuple(param.shape) for param in self.params],
            "dtypes": [str(param.dtype) for param in self.params],
            "momentum_buffers": [
                None if buffer is None else np.array(buffer, copy=True)
                for buffer in self.momentum_buffers
            ],
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
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
        unknown = sorted(set(hyper_values) - set(_HYPERPARAMETER_NAMES))
        if unknown:
            raise ValueError(f"state_dict['hyperparameters']: unknown keys {unknown}")
        if "lr" not in hyper_values:
            raise ValueError("state_dict['hyperparameters']: missing key 'lr'")
        try:
            hyper = check_hyperparameters(**hyper_values)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"state_dict['hyperparameters']: {exc}") from None
        buffers = state_dict["momentum_buffers"]
        if not isinstance(buffers, Sequence):
            raise TypeError("state_dict['momentum_buffers']: expected a list")
        if len(buffers) != len(self.params):
            raise ValueError(
                f"state_dict: holds {len(buffers)} momentum buffers, this optimizer has "
                f"{len(self.params)} parameters"
            )
        for i, (buffer, param) in enumerate(zip(buffers, self.params, strict=True)):
            if buffer is not None:
                check_like(buffer, f"state_dict['momentum_buffers'][{i}]", param, f"params[{i}]")
        counters = {}
        for key in ("steps", "skipped_steps"):
            value = state_dict[key]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"state_dict[{key!r}]: expected an int >= 0, got {value!r}")
            counters[key] = int(value)
        present = [buffer is not None for buffer in buffers]
        if self.arena is not None and any(present) and not all(present):
            raise ValueError(
                "state_dict: a ParameterArena keeps momentum for all of its tensors or "
                "none, but this state has buffers for some only"
            )

        self._hyper = hyper
        self.steps = counters["steps"]
        self.skipped_steps = counters["skipped_steps"]
        if self.arena is not None:
            if all(present) and buffers:
                if self._flat_momentum is None:
                    self._flat_momentum = np.empty(self.arena.size, dtype=self.arena.dtype)
                views = self.arena.views(self._flat_momentum)
                for view, buffer in zip(views, buffers, strict=True):
                    view[...] = buffer
                self.momentum_buffers = list(views)
            else:
                self._flat_momentum = None
                self.momentum_buffers = [None] * len(self.params)
        else:
            self.momentum_buffers = [
                None
                if buffer is None
                else np.array(buffer, dtype=param.dtype, order="C", copy=True)
                for buffer, param in zip(buffers, self.params, strict=True)
            ]

    def __repr__(self) -> str:
        target = repr(self.arena) if self.arena is not None else f"{len(self.params)} arrays"
        settings = ", ".join(f"{k}={v!r}" for k, v in self._hyper.as_dict().items())
        return f"SGD({target}, {settings})"
