"""The base class of every learning-rate scheduler."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from bnsgd_numba.schedulers._checks import MAX_STEP, check_rate, check_step

#: The keys every ``state_dict`` has; the rest is a schedule's extra state.
STATE_KEYS = ("scheduler", "last_step", "lr", "base_lr")


class Scheduler:
    """A learning-rate schedule that can drive an optimizer.

    Parameters
    ----------
    base_lr : float, optional
        The learning rate the schedule scales (PyTorch's ``initial_lr``), a
        finite number >= 0. Keyword only. Left out, the schedule takes the
        optimizer's ``lr`` when it is bound (:meth:`bind`), as a PyTorch
        scheduler takes its optimizer's; until then it has no rate.

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

    The contract: every rate a schedule gives is a finite float >= 0, at
    every step it accepts (steps run from 0 to ``max_step``, or to
    ``MAX_STEP = 2**63 - 1``). A schedule that cannot give one at some step
    (an exponential growth that overflows) raises ``ValueError`` there. The
    methods that change a scheduler (:meth:`step`, :meth:`bind`,
    :meth:`load_state_dict`) either succeed or raise and leave the scheduler,
    and the bound optimizer's ``lr`` and ``momentum``, as they were: a rate
    the optimizer refuses does not advance the schedule.
    """

    #: Whether :meth:`step` needs a metric (then :meth:`lr_at` has no closed form).
    requires_metric: ClassVar[bool] = False
    #: The last step the schedule defines (``one_cycle``'s ``total_steps``); None: no end.
    max_step: int | None = None

    def __init__(self, *, base_lr: float | None = None) -> None:
        self._base_lr: float | None = None
        self._lr: float | None = None
        self.last_step = 0
        self.optimizer: Any = None
        if base_lr is not None:
            self._set_base_lr(check_rate(base_lr, "base_lr"))

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
        return self.lr_at(self.last_step)

    def _extra_state(self) -> dict[str, Any]:
        """Return state beyond the step count (metric-driven schedules)."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` returned."""

    def _check_base_lr(self, base_lr: float) -> None:
        """Raise ValueError if this schedule cannot scale ``base_lr`` (``chained``: 0)."""

    # -- what the base provides --------------------------------------------------------
    @property
    def base_lr(self) -> float:
        """The learning rate the schedule scales; TypeError until it has one."""
        if self._base_lr is None:
            raise TypeError(self._no_base_lr())
        return self._base_lr

    @property
    def lr(self) -> float:
        """The current learning rate."""
        if self._lr is None:
            raise TypeError(self._no_base_lr())
        return self._lr

    def get_last_lr(self) -> list[float]:
        """Return ``[lr]``, the current learning rate, as PyTorch's schedulers do.

        Returns
        -------
        list of float
            One rate per parameter group, as in PyTorch; the optimizers here
            have a single group, so the list has one element.
        """
        return [self.lr]

    @property
    def momentum(self) -> float | None:
        """The current momentum, or None if this schedule does not cycle momentum."""
        return self.momentum_at(self.last_step)

    def step(self, metric: float | None = None) -> float:
        """Advance one step and return the new learning rate.

        Parameters
        ----------
        metric : float, optional
            The monitored quantity, a real number; required by schedules with
            ``requires_metric`` and ignored by the others.

        Returns
        -------
        float
            The learning rate after this step (also set on a bound optimizer).

        Raises
        ------
        TypeError
            ``metric`` is missing or not a number, or the schedule has no
            ``base_lr`` yet.
        ValueError
            The schedule ends (``max_step``), or it cannot give a valid rate
            at the next step; a bound optimizer's own error passes through.
            Nothing has changed then.
        """
        value = self._checked_metric(metric)
        if self._base_lr is None:
            raise TypeError(self._no_base_lr())
        last = MAX_STEP if self.max_step is None else min(self.max_step, MAX_STEP)
        if self.last_step >= last:
            raise ValueError(f"{type(self).__name__} was stepped past its last step {last}")
        with self._transaction():
            self.last_step += 1
            self._lr = self._checked_lr(self._advance(value), self.last_step)
            self._apply()
        return self._lr

    def bind(self, optimizer: Any) -> Scheduler:
        """Drive ``optimizer``: set its ``lr`` (and momentum) now and on every step.

        Parameters
        ----------
        optimizer : object
            Anything with a settable ``lr`` attribute; a ``momentum``
            attribute too when this schedule cycles momentum. A scheduler
            created without ``base_lr`` takes ``optimizer.lr`` as its
            ``base_lr`` (once: a later bind keeps it).

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
        with self._transaction(optimizer):
            if self._base_lr is None:
                self._set_base_lr(check_rate(optimizer.lr, "optimizer.lr"))
            self.optimizer = optimizer
            self._apply()
        return self

    def unbind(self) -> None:
        """Stop driving the bound optimizer."""
        self.optimizer = None

    def state_dict(self) -> dict[str, Any]:
        """Return the state needed to resume this schedule (not its parameters).

        Returns
        -------
        dict
            ``scheduler`` (class name), ``last_step``, ``lr``, ``base_lr``
            and any extra state of metric-driven schedules. Plain Python
            values only.
        """
        return {
            "scheduler": type(self).__name__,
            "last_step": self.last_step,
            "lr": self.lr,
            "base_lr": self.base_lr,
            **self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the following steps are identical.

        Parameters
        ----------
        state : dict
            A dict from ``state_dict()`` of a scheduler of the same class
            constructed with the same parameters. A scheduler created
            without ``base_lr`` takes the state's.

        Raises
        ------
        TypeError, ValueError
            ``state`` is not such a dict (a key missing, a value of the
            wrong type or out of range, another class or ``base_lr``);
            nothing is loaded then.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
        for key in STATE_KEYS[:3]:
            if key not in state:
                raise ValueError(f"state_dict: missing key {key!r}")
        kind = state["scheduler"]
        if kind != type(self).__name__:
            raise ValueError(f"state_dict is for scheduler {kind!r}, not {type(self).__name__!r}")
        last_step = check_step(state["last_step"], self.max_step, "state_dict['last_step']")
        lr = check_rate(state["lr"], "state_dict['lr']")
        base_lr = state.get("base_lr")
        if base_lr is not None:
            base_lr = check_rate(base_lr, "state_dict['base_lr']")
            if self._base_lr is not None and base_lr != self._base_lr:
                raise ValueError(
                    f"state_dict is for base_lr={base_lr!r}, this scheduler has "
                    f"base_lr={self._base_lr!r}"
                )
        elif self._base_lr is None:
            raise ValueError(
                "state_dict has no 'base_lr' and this scheduler has none: "
                "create it with base_lr=... or bind() it first"
            )
        extra = {k: v for k, v in state.items() if k not in STATE_KEYS}
        with self._transaction():
            if self._base_lr is None:
                self._set_base_lr(base_lr)  # type: ignore[arg-type]
            try:
                self._load_extra_state(extra)
            except KeyError as exc:
                raise ValueError(f"state_dict: missing key {exc}") from None
            self.last_step = last_step
            self._lr = lr
            self._apply()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_lr={self._base_lr!r}, last_step={self.last_step})"

    # -- internals ------------------------------------------------------------------------
    def _no_base_lr(self) -> str:
        return (
            f"{type(self).__name__} has no base_lr yet: create it with base_lr=... "
            "or bind() it to an optimizer, whose lr it then takes"
        )

    def _set_base_lr(self, base_lr: float) -> None:
        """Fix the rate the schedule scales, at construction or from the bound optimizer."""
        self._check_base_lr(base_lr)
        with self._transaction():
            self._base_lr = base_lr
            self._lr = self._checked_lr(self.lr_at(self.last_step), self.last_step)

    def _checked_metric(self, metric: Any) -> float | None:
        if metric is None:
            if self.requires_metric:
                raise TypeError(f"{type(self).__name__}.step() needs a metric, e.g. step(val_loss)")
            return None
        if isinstance(metric, (str, bytes, bool)) or getattr(metric, "ndim", 0) != 0:
            raise TypeError(f"metric must be a real number, got {type(metric).__name__} {metric!r}")
        try:
            return float(metric)
        except (TypeError, ValueError):
            raise TypeError(
                f"metric must be a real number, got {type(metric).__name__} {metric!r}"
            ) from None

    def _checked_lr(self, value: Any, step: int) -> float:
        name = type(self).__name__
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"{name} gave {type(value).__name__} {value!r} as the learning rate at step {step}"
            )
        lr = float(value)
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(
                f"{name} gives the learning rate {lr!r} at step {step}; "
                "a schedule's rates must be finite and >= 0"
            )
        return lr

    def _apply(self) -> None:
        if self.optimizer is None:
            return
        momentum = self.momentum_at(self.last_step)
        if momentum is not None:
            momentum = check_rate(momentum, f"{type(self).__name__}.momentum_at({self.last_step})")
        self.optimizer.lr = self._lr
        if momentum is not None:
            self.optimizer.momentum = momentum

    def _snapshot(self) -> Any:
        """What :meth:`_restore` needs to undo a failed change (composites add children)."""
        return dict(vars(self))

    def _restore(self, snapshot: Any) -> None:
        vars(self).clear()
        vars(self).update(snapshot)

    @contextlib.contextmanager
    def _transaction(self, optimizer: Any = None) -> Iterator[None]:
        """Undo every change to this scheduler and to the optimizer's rates if the block raises."""
        target = self.optimizer if optimizer is None else optimizer
        saved = self._snapshot()
        rates = {}
        if target is not None:
            rates = {a: getattr(target, a) for a in ("lr", "momentum") if hasattr(target, a)}
        try:
            yield
        except BaseException:
            self._restore(saved)
            for attr, value in rates.items():
                if getattr(target, attr) is not value:
                    setattr(target, attr, value)
            raise


def resolve_alias(base_lr: float | None, alias: str, value: float | None) -> float | None:
    """Return the one learning rate given as ``base_lr`` or under an Optax-style name.

    Parameters
    ----------
    base_lr, value : float or None
        ``base_lr`` and the value of the parameter named ``alias``.
    alias : str
        The other name of the same quantity (``peak_value``, ``init_value``).

    Returns
    -------
    float or None
        The learning rate, checked (finite, >= 0); None if neither is given
        (the schedule then takes the optimizer's rate at ``bind``); an error
        if they disagree.
    """
    if value is None:
        return None if base_lr is None else check_rate(base_lr, "base_lr")
    checked = check_rate(value, alias)
    if base_lr is not None and check_rate(base_lr, "base_lr") != checked:
        raise ValueError(f"base_lr={base_lr!r} and {alias}={value!r} name one value; give one")
    return checked
