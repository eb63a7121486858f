"""The conformance kit applied to every built-in scheduler and to batch_norm."""

from __future__ import annotations

from bnsgd_numba.testing import parametrize_normalization_checks, parametrize_scheduler_checks


@parametrize_scheduler_checks()
def test_builtin_scheduler_conforms(check, case):
    check(case)


@parametrize_normalization_checks(["batch_norm"])
def test_batch_norm_conforms(check, case):
    check(case)
