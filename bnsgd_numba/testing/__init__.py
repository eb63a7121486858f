"""The conformance kit: checks, cases and Hypothesis strategies for plugins.

- :mod:`~bnsgd_numba.testing.checks`: check functions for any registered
  scheduler or normalization (:data:`SCHEDULER_CHECKS`,
  :data:`NORMALIZATION_CHECKS`).
- :mod:`~bnsgd_numba.testing.cases`: the cases they run on, built from the
  ``examples`` a plugin registers.
- :mod:`~bnsgd_numba.testing.strategies`: Hypothesis strategies (needs
  ``hypothesis``).
- :func:`parametrize_scheduler_checks` / :func:`parametrize_normalization_checks`:
  pytest parametrization with readable ids (needs ``pytest``).

Names are loaded on first use, so importing this package needs neither
pytest nor Hypothesis.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY_NAMES = {
    "SchedulerCase": "cases",
    "NormalizationCase": "cases",
    "scheduler_cases": "cases",
    "normalization_cases": "cases",
    "SCHEDULER_CHECKS": "checks",
    "NORMALIZATION_CHECKS": "checks",
    "parametrize_scheduler_checks": "parametrize",
    "parametrize_normalization_checks": "parametrize",
}

__all__ = sorted(_LAZY_NAMES)


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'bnsgd_numba.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
