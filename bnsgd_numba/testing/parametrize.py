"""Turn the conformance checks into pytest cases with readable ids.

Use in a plugin's test suite::

    from bnsgd_numba.testing import parametrize_scheduler_checks

    @parametrize_scheduler_checks(["inverse_sqrt"])
    def test_conformance(check, case):
        check(case)

Ids read ``inverse_sqrt[0]-lr_at_matches_step``. Cases come from the
``examples`` the plugin registered (see :mod:`bnsgd_numba.testing.cases`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest

from bnsgd_numba.testing.cases import normalization_cases, scheduler_cases
from bnsgd_numba.testing.checks import NORMALIZATION_CHECKS, SCHEDULER_CHECKS, check_standardizes


def _id(case: Any, check: Callable[..., None]) -> str:
    return f"{case.id}-{check.__name__.removeprefix('check_')}"


def parametrize_scheduler_checks(
    names: Iterable[str] | None = None,
    *,
    checks: Sequence[Callable[..., None]] = SCHEDULER_CHECKS,
    steps: int = 300,
) -> Any:
    """Return ``pytest.mark.parametrize("check, case", ...)`` over schedulers and checks.

    Parameters
    ----------
    names : iterable of str, optional
        Registered scheduler names; all registered ones by default.
    checks : sequence of callables
        The checks to run; :data:`~bnsgd_numba.testing.checks.SCHEDULER_CHECKS`.
    steps : int
        Steps per case.

    Returns
    -------
    pytest.MarkDecorator
        Parametrizes the arguments ``check`` and ``case``.
    """
    pairs = [(check, case) for case in scheduler_cases(names, steps=steps) for check in checks]
    return pytest.mark.parametrize(
        ("check", "case"), pairs, ids=[_id(case, check) for check, case in pairs]
    )


def parametrize_normalization_checks(
    names: Iterable[str] | None = None,
    *,
    checks: Sequence[Callable[..., None]] = NORMALIZATION_CHECKS,
) -> Any:
    """Return ``pytest.mark.parametrize("check, case", ...)`` over normalizations and checks.

    ``check_standardizes`` is applied only to variants registered with
    ``standardizes=True``.

    Parameters
    ----------
    names : iterable of str, optional
        Registered normalization names; all registered ones by default.
    checks : sequence of callables
        The checks to run;
        :data:`~bnsgd_numba.testing.checks.NORMALIZATION_CHECKS`.

    Returns
    -------
    pytest.MarkDecorator
        Parametrizes the arguments ``check`` and ``case``.
    """
    pairs = [
        (check, case)
        for case in normalization_cases(names)
        for check in checks
        if check is not check_standardizes or case.standardizes
    ]
    return pytest.mark.parametrize(
        ("check", "case"), pairs, ids=[_id(case, check) for check, case in pairs]
    )
