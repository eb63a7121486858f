"""The base class of every learning-rate scheduler."""

from __future__ import annotations

import math
from typing import Any, ClassVar


class Scheduler:
    """A learning-rate schedule that can drive an optimizer.

    Parameters
    ----------
    base_lr : float
        The learning rate the schedule scales (PyTorch's ``initial_lr``).
        Keyword only.

    Notes
    -----
    A subclass stores its parameters and then calls ``super().__init__``, and
    implements :meth:`lr_at`, the learning rate after ``step`` calls of
    :meth:`step`, in closed form. Step 0 is the value right after
    construction, as in PyTorch where the constructor applies the first value.

    A schedule that depends on a metric (``reduce_on_plateau``) sets
    ``requires_metric = True`` and overrides :meth:`_advance`; its state goes
    through :meth:`_extra_state` / :meth:`_load_extra_state`.

    Binding: :meth:`bind` attaches an optimizer, any object with a settable
    ``lr`` attribute (``bnsgd_numba.SGD``). The scheduler writes its current
    learning rate into ``optimizer.lr`` when bound and on every :meth:`step`,
    and its momentum into ``optimizer.momentum`` when the schedule cycles
    momentum (:meth:`momentum_at` is not ``None``).
    """

    #: Whether :meth:`step` needs a metric (then :meth:`lr_at` has no closed form).
    requires_metric: ClassVar[bool] = False
    #: The last step the schedule defines (``one_cycle``'s ``total_steps``); None: no end.
    max_step: int | None = None

    def __init__(self, *, base_lr: float) -> None:
        base_lr = float(base_lr)
        if not math.isfinite(base_lr) or base_lr < 0:
            raise ValueError(f"base_lr must be a finite number >= 0, got {base_lr!r}")
        self.base_lr = base_lr
        self.last_step = 0
        self.optimizer: Any = None
        self._lr = float(self.lr_at(0))

    # -- what a subclass implements -------------------------------------------------
    def lr_at(self, step: int) -> float:
        """Return the learning rate after ``step`` calls of :meth:`step`.

        Parameters
        ----------
        step : int
            Number of steps taken, >= 0.

        Returns
        -------
        float
            The learning rate.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement lr_at(step)")

    def momentum_at(self, step: int) -> float | None:
        """Return the optimizer momentum at ``step``, or None if momentum is not scheduled."""
        return None

    def _advance(self, metric: float | None) -> float:
        """Compute the learning rate for ``self.last_step`` (already incremented)."""
        return float(self.lr_at(self.last_step))

    def _extra_state(self) -> dict[str, Any]:
        """Return state beyond the step count (metric-driven schedules)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` returned."""

    # -- what the base provides --------------------------------------------------------
    @property
    def lr(self) -> float:
        """The current learning rate."""
        return self._lr

    @property
    def momentum(self) -> float | None:
        """The current momentum, or None if this schedule does not cycle momentum."""
        return self.momentum_at(self.last_step)

    def step(self, metric: float | None = None) -> float:
        """Advance one step and return the new learning rate.

        Parameters
        ----------
        metric : float, optional
            The monitored quantity; required by schedules with
            ``requires_metric`` and ignored by the others.

        Returns
        -------
        float
            The learning rate after this step (also set on a bound optimizer).
        """
        if self.requires_metric and metric is None:
            raise TypeError(f"{type(self).__name__}.step() needs a metric, e.g. step(val_loss)")
        if self.max_step is not None and self.last_step >= self.max_step:
            raise ValueError(
                f"{type(self).__name__} was stepped past its last step {self.max_step}"
            )
        self.last_step += 1
        self._lr = float(self._advance(None if metric is None else float(metric)))
        self._apply()
        return self._lr

    def bind(self, optimizer: Any) -> Scheduler:
        """Drive ``optimizer``: set its ``lr`` (and momentum) now and on every step.

        Parameters
        ----------
        optimizer : object
            Anything with a settable ``lr`` attribute; a ``momentum``
            attribute too when this schedule cycles momentum.

        Returns
        -------
        Scheduler
            ``self``, so ``create_scheduler(...).bind(opt)`` reads naturally.
        """
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"cannot bind {type(optimizer).__name__}: it has no 'lr' attribute")
        if self.momentum is not None and not hasattr(optimizer, "momentum"):
            raise ValueError(
                f"{type(self).__name__} cycles momentum (cycle_momentum=True) but "
                f"{type(optimizer).__name__} has no 'momentum' attribute"
            )
        self.optimizer = optimizer
        self._apply()
        return self

    def unbind(self) -> None:
        """Stop driving the bound optimizer."""
        self.optimizer = None

    def _apply(self) -> None:
        if self.optimizer is None:
            return
        self.optimizer.lr = self._lr
        momentum = self.momentum
        if momentum is not None:
            self.optimizer.momentum = momentum

    def state_dict(self) -> dict[str, Any]:
        """Return the state needed to resume this schedule (not its parameters).

        Returns
        -------
        dict
            ``scheduler`` (class name), ``last_step``, ``lr`` and any extra
            state of metric-driven schedules. Plain Python values only.
        """
        return {
            "scheduler": type(self).__name__,
            "last_step": self.last_step,
            "lr": self._lr,
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the following steps are identical.

        Parameters
        ----------
        state : dict
            A dict from ``state_dict()`` of a scheduler of the same class
            constructed with the same parameters.
        """
        kind = state.get("scheduler")
        if kind != type(self).__name__:
            raise ValueError(f"state_dict is for scheduler {kind!r}, not {type(self).__name__!r}")
        last_step = int(state["last_step"])
        if last_step < 0:
            raise ValueError(f"state_dict has a negative last_step {last_step}")
        extra = {k: v for k, v in state.items() if k not in ("scheduler", "last_step", "lr")}
        self._load_extra_state(extra)
        self.last_step = last_step
        self._lr = float(state["lr"])
        self._apply()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_lr={self.base_lr!r}, last_step={self.last_step})"


def resolve_alias(base_lr: float | None, alias: str, value: float | None) -> float:
    """Return the one learning rate given as ``base_lr`` or under an Optax-style name.

    Parameters
    ----------
    base_lr, value : float or None
        ``base_lr`` and the value of the parameter named ``alias``.
    alias : str
        The other name of the same quantity (``peak_value``, ``init_value``).

    Returns
    -------
    float
        The learning rate; an error if neither is given or they disagree.
    """
    if base_lr is None and value is None:
        raise TypeError(f"give base_lr or {alias}")
    if base_lr is not None and value is not None and float(base_lr) != float(value):
        raise ValueError(f"base_lr={base_lr!r} and {alias}={value!r} name one value; give one")
    return float(value if value is not None else base_lr)  # type: ignore[arg-type]
