"""Test cases for the conformance checks, built from the registry's ``examples``.

A scheduler plugin registers ``examples`` (a list of parameter dicts) with each
name: ``register("inverse_sqrt", InverseSqrt, examples=[{"warmup_steps": 40}])``.
Each example becomes one :class:`SchedulerCase`, created with ``base_lr=0.1``
unless the example sets ``base_lr`` itself (``"base_lr": None``: do not pass
one, for schedules that derive it, like ``one_cycle``).

A normalization plugin registers ``standardizes=True`` when its training
output has zero mean and unit variance per channel (before the affine
transform), and optionally ``examples`` of constructor parameters,
``batch_statistics=False`` when its training statistics do not span the batch
(LayerNorm, GroupNorm, a frozen BatchNorm: one sample is valid input), and
``min_rank`` when it needs inputs of a higher rank than 2 (InstanceNorm: 3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_BASE_LR = 0.1
DEFAULT_STEPS = 300


def default_metrics(steps: int, seed: int = 0) -> tuple[float, ...]:
    """Return a deterministic validation-loss-like sequence: decreasing, with plateaus.

    Parameters
    ----------
    steps : int
        Length of the sequence.
    seed : int
        Seed of the noise.

    Returns
    -------
    tuple of float
        ``steps`` positive values.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(steps)
    trend = 1.0 / (1.0 + 0.05 * np.minimum(t, steps // 3)) + 0.01 * (t > 2 * steps // 3)
    noise = 0.002 * rng.standard_normal(steps)
    return tuple(float(v) for v in trend + noise)


@dataclass(frozen=True)
class SchedulerCase:
    """One scheduler configuration to check.

    Attributes
    ----------
    id : str
        Readable test id, e.g. ``"cosine[1]"``.
    factory : callable
        Returns a new scheduler at step 0.
    steps : int
        Steps to run (capped at the schedule's ``max_step``).
    metrics : tuple of float
        Metrics given to ``step`` when the schedule requires one.
    """

    id: str
    factory: Callable[[], Any]
    steps: int = DEFAULT_STEPS
    metrics: tuple[float, ...] = field(default=(), repr=False)

    def make(self) -> Any:
        """Return a new scheduler."""
        return self.factory()

    def metric(self, step: int) -> float:
        """Return the metric for the ``step``-th call of ``step()`` (1-based)."""
        metrics = self.metrics or default_metrics(max(self.steps, 1))
        return metrics[(step - 1) % len(metrics)]


def _scheduler_factory(name: str, example: Mapping[str, Any]) -> Callable[[], Any]:
    params = dict(example)
    base_lr = params.pop("base_lr", DEFAULT_BASE_LR)

    def factory() -> Any:
        from bnsgd_numba.registry import create_scheduler

        kwargs = {} if base_lr is None else {"base_lr": base_lr}
        return create_scheduler(name, **kwargs, **params)

    return factory


def scheduler_cases(
    names: Iterable[str] | None = None, *, steps: int = DEFAULT_STEPS
) -> list[SchedulerCase]:
    """Return one :class:`SchedulerCase` per registered example.

    Parameters
    ----------
    names : iterable of str, optional
        Registered scheduler names; all of them by default.
    steps : int
        Steps each case runs.

    Returns
    -------
    list of SchedulerCase
        Ids ``name[i]``; a scheduler without examples gets ``name[default]``
        (created with no parameters besides ``base_lr``).
    """
    from bnsgd_numba.registry import available_schedulers, scheduler_registration

    cases = []
    for name in names if names is not None else available_schedulers():
        examples = list(scheduler_registration(name).metadata.get("examples", ()))
        labelled = list(enumerate(examples)) if examples else [("default", {})]
        for label, example in labelled:
            factory = _scheduler_factory(name, example)
            try:
                max_step = factory().max_step
            except Exception:  # reported by the checks, which build it again
                max_step = None
            n = steps if max_step is None else min(steps, max_step)
            cases.append(SchedulerCase(f"{name}[{label}]", factory, n, default_metrics(n)))
    return cases


@dataclass(frozen=True)
class NormalizationCase:
    """One normalization configuration to check.

    Attributes
    ----------
    id : str
        Readable test id, e.g. ``"batch_norm[0]"``.
    factory : callable
        ``factory(num_features, *, dtype, channel_axis, **params)`` returns a
        layer with ``forward(x, training)``, ``backward(dy)``,
        ``state_dict()`` and ``load_state_dict()``.
    params : mapping
        Extra constructor parameters of this case.
    standardizes : bool
        Whether training output promises zero mean and unit variance.
    batch_statistics : bool
        Whether training normalizes with statistics over the batch, so that
        one value per channel is bad input.
    min_rank : int
        The lowest input rank the layer accepts.
    """

    id: str
    factory: Callable[..., Any]
    params: Mapping[str, Any] = field(default_factory=dict)
    standardizes: bool = False
    batch_statistics: bool = True
    min_rank: int = 2

    def make(self, num_features: int, *, dtype: Any = np.float64, channel_axis: int = 1) -> Any:
        """Return a new layer for ``num_features`` channels."""
        return self.factory(num_features, dtype=dtype, channel_axis=channel_axis, **self.params)


def normalization_cases(names: Iterable[str] | None = None) -> list[NormalizationCase]:
    """Return one :class:`NormalizationCase` per registered example of each name.

    Parameters
    ----------
    names : iterable of str, optional
        Registered normalization names; all of them by default.

    Returns
    -------
    list of NormalizationCase
        Ids ``name[i]`` (``name[default]`` without examples).
    """
    from bnsgd_numba.registry import available_normalizations, normalization_registration

    cases = []
    for name in names if names is not None else available_normalizations():
        registration = normalization_registration(name)
        examples = list(registration.metadata.get("examples", ()))
        labelled = list(enumerate(examples)) if examples else [("default", {})]
        metadata = registration.metadata
        standardizes = bool(metadata.get("standardizes", False))
        batch_statistics = bool(metadata.get("batch_statistics", True))
        min_rank = int(metadata.get("min_rank", 2))
        for label, example in labelled:
            cases.append(
                NormalizationCase(
                    f"{name}[{label}]",
                    registration.factory,
                    dict(example),
                    standardizes,
                    batch_statistics,
                    min_rank,
                )
            )
    return cases
