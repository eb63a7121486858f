"""The conformance kit applied to every built-in normalization variant."""

from __future__ import annotations

from bnsgd_numba.testing import parametrize_normalization_checks

VARIANTS = [
    "layer_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
    "batch_renorm",
    "ghost_batch_norm",
    "frozen_batch_norm",
]


@parametrize_normalization_checks(VARIANTS)
def test_variant_conforms(check, case):
    check(case)
