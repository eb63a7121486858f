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
from collections.abc import Mapping, Sequence
from typing import Any, Union

from bnsgd_numba.hookspecs import Register, hookimpl
from bnsgd_numba.schedulers.base import Scheduler

#: A child: a Scheduler, a registered name, or ``(name, params)``.
ChildSpec = Union[Scheduler, str, tuple[str, Mapping[str, Any]]]  # noqa: UP007 (py3.10 alias)


def _build_child(spec: ChildSpec, base_lr: float, index: int) -> Scheduler:
    if isinstance(spec, Scheduler):
        if spec.base_lr != base_lr:
            raise ValueError(
                f"schedulers[{index}] has base_lr={spec.base_lr!r}, the composite "
                f"base_lr={base_lr!r}; they share one learning rate as in torch"
            )
        return spec
    from bnsgd_numba.registry import create_scheduler

    if isinstance(spec, str):
        return create_scheduler(spec, base_lr=base_lr)
    if isinstance(spec, Sequence) and len(spec) == 2 and isinstance(spec[0], str):
        name, params = spec
        return create_scheduler(name, base_lr=base_lr, **dict(params))
    raise TypeError(
        f"schedulers[{index}] must be a Scheduler, a name or (name, params), got {spec!r}"
    )


class _Composite(Scheduler):
    """Children evaluated at local steps; state is the children's state."""

    def __init__(self, *, base_lr: float, schedulers: Sequence[ChildSpec]) -> None:
        if isinstance(schedulers, (str, Scheduler)) or len(schedulers) < 1:
            raise ValueError("schedulers must be a non-empty list")
        self.schedulers = [_build_child(s, float(base_lr), i) for i, s in enumerate(schedulers)]
        # a composite with a metric-driven child needs step(metric) on every step
        self.requires_metric = any(s.requires_metric for s in self.schedulers)  # type: ignore[misc]
        super().__init__(base_lr=base_lr)

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
        children = state.get("schedulers", [])
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
    base_lr : float
        Learning rate shared by the children.
    schedulers : list
        Schedulers, registered names, or ``(name, params)`` pairs (created
        with this ``base_lr``); ``len(milestones) + 1`` of them.
    milestones : list of int
        Increasing steps at which the next scheduler takes over; 0 allowed.

    Notes
    -----
    ``lr_at(t) = schedulers[i].lr_at(t - milestones[i-1])`` where ``i`` is
    the number of milestones <= ``t``. A ``reduce_on_plateau`` child (for
    example after a warmup) is stepped with the metric only while active.
    """

    def __init__(
        self,
        *,
        base_lr: float,
        schedulers: Sequence[ChildSpec],
        milestones: Sequence[int],
    ) -> None:
        self.milestones = [int(m) for m in milestones]
        if len(self.milestones) != len(schedulers) - 1:
            raise ValueError(
                f"expected {len(schedulers) - 1} milestones for {len(schedulers)} schedulers, "
                f"got {len(self.milestones)}"
            )
        if any(m < 0 for m in self.milestones) or self.milestones != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing and >= 0, got {self.milestones}")
        super().__init__(base_lr=base_lr, schedulers=schedulers)

    def _locate(self, step: int) -> tuple[Scheduler, int]:
        index = bisect_right(self.milestones, step)
        start = self.milestones[index - 1] if index > 0 else 0
        return self.schedulers[index], step - start

    def lr_at(self, step: int) -> float:
        child, local = self._locate(step)
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
    base_lr : float
        Learning rate shared by the children (must be > 0).
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

    def __init__(self, *, base_lr: float, schedulers: Sequence[ChildSpec]) -> None:
        if float(base_lr) <= 0:
            raise ValueError(f"chained needs base_lr > 0, got {base_lr!r}")
        super().__init__(base_lr=base_lr, schedulers=schedulers)

    def _product(self, step: int, metric: float | None, stepping: bool) -> float:
        lr = self.base_lr
        for child in self.schedulers:
            lr *= self._child_lr(child, step, metric, stepping) / self.base_lr
        return lr

    def lr_at(self, step: int) -> float:
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
