"""Built-in plugin: ``sequential`` and ``chained``, composed from closed forms.

PyTorch composes schedulers by letting each one step the optimizer's
learning rate in place; a milestone at step 0, nesting one composite in
another, or resuming from a checkpoint then gives wrong values, and
ReduceLROnPlateau cannot be part of a SequentialLR. Here each child is
evaluated at its own local step (closed form where it has one), so those
cases are exact, and a metric-driven child is stepped only while it is
active.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from bnsgd_numba.hookspecs import Register, hookimpl
from bnsgd_numba.schedulers._checks import check_integer, check_rate, check_step, finite_rate
from bnsgd_numba.schedulers.base import Scheduler

#: A child: a Scheduler, a registered name, or ``(name, params)``.
ChildSpec = Union[Scheduler, str, tuple[str, Mapping[str, Any]]]  # noqa: UP007 (py3.10 alias)


def _create_child(index: int, name: str, base_lr: float | None, params: Mapping[str, Any]) -> Any:
    from bnsgd_numba.registry import create_scheduler

    if "base_lr" in params:
        raise ValueError(
            f"schedulers[{index}] ({name!r}): the children share the composite's base_lr; "
            "give base_lr to the composite only"
        )
    try:
        if base_lr is None:
            return create_scheduler(name, **params)
        return create_scheduler(name, base_lr=base_lr, **params)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"schedulers[{index}] ({name!r}): {exc}") from exc


def _build_child(spec: ChildSpec, base_lr: float | None, index: int) -> Scheduler:
    if isinstance(spec, Scheduler):
        if base_lr is not None and spec._base_lr is not None and spec._base_lr != base_lr:
            raise ValueError(
                f"schedulers[{index}] has base_lr={spec._base_lr!r}, the composite "
                f"base_lr={base_lr!r}; they share one learning rate as in torch"
            )
        return spec
    if isinstance(spec, str):
        return _create_child(index, spec, base_lr, {})
    if (
        isinstance(spec, Sequence)
        and len(spec) == 2
        and isinstance(spec[0], str)
        and isinstance(spec[1], Mapping)
    ):
        return _create_child(index, spec[0], base_lr, spec[1])
    raise TypeError(
        f"schedulers[{index}] must be a Scheduler, a name or (name, params), got {spec!r}"
    )


class _Composite(Scheduler):
    """Children evaluated at local steps; state is the children's state."""

    def __init__(self, *, base_lr: float | None, schedulers: Sequence[ChildSpec]) -> None:
        if (
            isinstance(schedulers, (str, bytes, Scheduler, Mapping))
            or not isinstance(schedulers, Sequence)
            or len(schedulers) < 1
        ):
            raise TypeError(f"schedulers must be a non-empty list, got {schedulers!r}")
        base = None if base_lr is None else check_rate(base_lr, "base_lr")
        children = [_build_child(s, base, i) for i, s in enumerate(schedulers)]
        known = sorted({c._base_lr for c in children if c._base_lr is not None})
        if base is None and len(known) > 1:
            raise ValueError(
                f"schedulers have different base_lr {known}; they share one learning rate"
            )
        self.schedulers = children
        # a composite with a metric-driven child needs step(metric) on every step
        self.requires_metric = any(s.requires_metric for s in self.schedulers)  # type: ignore[misc]
        super().__init__(base_lr=base if base is not None or not known else known[0])

    def _set_base_lr(self, base_lr: float) -> None:
        self._check_base_lr(base_lr)
        with self._transaction():
            for child in self.schedulers:
                if child._base_lr is None:
                    child._set_base_lr(base_lr)
            super()._set_base_lr(base_lr)

    def _snapshot(self) -> Any:
        return super()._snapshot(), [child._snapshot() for child in self.schedulers]

    def _restore(self, snapshot: Any) -> None:
        own, children = snapshot
        super()._restore(own)
        for child, saved in zip(self.schedulers, children, strict=True):
            child._restore(saved)

    @staticmethod
    def _child_lr(child: Scheduler, local: int, metric: float | None, stepping: bool) -> float:
        if not child.requires_metric:
            return float(child.lr_at(local))
        if stepping and local > 0:
            return child.step(metric)
        return child.lr_at(local)

    def _extra_state(self) -> dict[str, Any]:
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        children = state["schedulers"]
        if isinstance(children, (str, bytes, Mapping)) or not isinstance(children, Sequence):
            raise TypeError(
                f"state_dict['schedulers'] must be a list, got {type(children).__name__}"
            )
        if len(children) != len(self.schedulers):
            raise ValueError(
                f"state_dict has {len(children)} schedulers, this one {len(self.schedulers)}"
            )
        for child, child_state in zip(self.schedulers, children, strict=True):
            child.load_state_dict(child_state)


class SequentialLR(_Composite):
    """Run ``schedulers[i]`` from ``milestones[i-1]`` on, from its own step 0 (torch SequentialLR).

    Parameters
    ----------
    base_lr : float, optional
        Learning rate shared by the children; by default the children's
        (when given as schedulers) or the bound optimizer's.
    schedulers : list
        Schedulers, registered names, or ``(name, params)`` pairs (created
        with this ``base_lr``); ``len(milestones) + 1`` of them.
    milestones : list of int
        Non-decreasing steps (>= 0) at which the next scheduler takes over.

    Notes
    -----
    ``lr_at(t) = schedulers[i].lr_at(t - milestones[i-1])`` where ``i`` is
    the number of milestones <= ``t``. A ``reduce_on_plateau`` child (for
    example after a warmup) is stepped with the metric only while active.
    """

    def __init__(
        self,
        *,
        base_lr: float | None = None,
        schedulers: Sequence[ChildSpec],
        milestones: Sequence[int],
    ) -> None:
        if isinstance(milestones, (str, bytes, Mapping)) or not isinstance(milestones, Iterable):
            raise TypeError(f"milestones must be a list of integers, got {milestones!r}")
        self.milestones = [check_integer(m, f"milestones[{i}]") for i, m in enumerate(milestones)]
        if self.milestones != sorted(self.milestones):
            raise ValueError(f"milestones must be non-decreasing, got {self.milestones}")
        count = len(schedulers) if isinstance(schedulers, Sequence) else None
        if count is not None and len(self.milestones) != count - 1:
            raise ValueError(
                f"expected {count - 1} milestones for {count} schedulers, "
                f"got {len(self.milestones)}"
            )
        super().__init__(base_lr=base_lr, schedulers=schedulers)

    def _locate(self, step: int) -> tuple[Scheduler, int]:
        index = bisect_right(self.milestones, step)
        start = self.milestones[index - 1] if index > 0 else 0
        return self.schedulers[index], step - start

    def lr_at(self, step: int) -> float:
        child, local = self._locate(check_step(step))
        if child.requires_metric and local != child.last_step:
            raise ValueError(f"step {step} falls in a metric-driven schedule: no closed form")
        return self._child_lr(child, local, None, stepping=False)

    def _advance(self, metric: float | None) -> float:
        child, local = self._locate(self.last_step)
        return self._child_lr(child, local, metric, stepping=True)


class ChainedScheduler(_Composite):
    """Apply every child's factor at once (torch ChainedScheduler).

    Parameters
    ----------
    base_lr : float, optional
        Learning rate shared by the children (must be > 0); by default the
        children's (when given as schedulers) or the bound optimizer's.
    schedulers : list
        Schedulers, registered names, or ``(name, params)`` pairs.

    Notes
    -----
    ``lr_at(t) = base_lr * prod(s.lr_at(t) / base_lr)``. For torch's
    chainable schedules (those whose step multiplies the current rate:
    constant, linear, step, multistep, exponential, polynomial,
    multiplicative, cosine with ``eta_min=0``) this is what
    ChainedScheduler computes; for the others it is the natural product
    and torch's order-dependent in-place updates differ.
    """

    def __init__(self, *, base_lr: float | None = None, schedulers: Sequence[ChildSpec]) -> None:
        super().__init__(base_lr=base_lr, schedulers=schedulers)

    def _check_base_lr(self, base_lr: float) -> None:
        if base_lr <= 0:
            raise ValueError(f"chained needs base_lr > 0 (it divides by it), got {base_lr!r}")

    def _product(self, step: int, metric: float | None, stepping: bool) -> float:
        lr = self.base_lr
        for child in self.schedulers:
            lr *= self._child_lr(child, step, metric, stepping) / self.base_lr
        return finite_rate(lr, f"ChainedScheduler at step {step}")

    def lr_at(self, step: int) -> float:
        step = check_step(step)
        if self.requires_metric and step != self.last_step:
            raise ValueError("a chained schedule with a metric-driven child has no closed form")
        return self._product(step, None, stepping=False)

    def _advance(self, metric: float | None) -> float:
        return self._product(self.last_step, metric, stepping=True)


@hookimpl
def bnsgd_register_schedulers(register: Register) -> None:
    """Register ``sequential`` and ``chained``."""
    register(
        "sequential",
        SequentialLR,
        examples=[
            {
                "schedulers": [
                    ("linear", {"start_factor": 0.1, "total_iters": 10}),
                    ("cosine", {"T_max": 200}),
                ],
                "milestones": [10],
            },
            {
                "schedulers": [("exponential", {"gamma": 0.9}), ("step", {"step_size": 20})],
                "milestones": [0],
            },
            {
                "schedulers": [
                    ("linear", {"start_factor": 0.2, "total_iters": 5}),
                    ("reduce_on_plateau", {"patience": 3}),
                ],
                "milestones": [5],
            },
        ],
    )
    register(
        "chained",
        ChainedScheduler,
        examples=[
            {
                "schedulers": [
                    ("constant", {"factor": 0.1, "total_iters": 2}),
                    ("exponential", {"gamma": 0.9}),
                ]
            },
            {"schedulers": [("linear", {}), ("step", {"step_size": 30, "gamma": 0.5})]},
        ],
    )
