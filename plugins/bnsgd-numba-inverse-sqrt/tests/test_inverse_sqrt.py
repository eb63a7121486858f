"""Tests of the inverse_sqrt plugin, run against the installed distribution.

Install first (``pip install -e plugins/bnsgd-numba-inverse-sqrt``): the
plugin must be found through its entry point, so these tests never import
or register it by hand.
"""

from __future__ import annotations

import math

import pytest

import bnsgd_numba
from bnsgd_numba.testing import parametrize_scheduler_checks


def test_found_through_its_entry_point():
    (info,) = [p for p in bnsgd_numba.list_plugins() if p.name == "inverse_sqrt"]
    assert info.origin.startswith("bnsgd-numba-inverse-sqrt ")
    assert info.registered == {"scheduler": ["inverse_sqrt"]}
    assert info.error is None


@parametrize_scheduler_checks(["inverse_sqrt"])
def test_conformance(check, case):
    check(case)


def test_warmup_then_inverse_square_root():
    sched = bnsgd_numba.create_scheduler("inverse_sqrt", base_lr=1.0, warmup_steps=4)
    assert [sched.lr_at(t) for t in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert math.isclose(sched.lr_at(16), 0.5)
    assert math.isclose(sched.lr_at(400), 0.1)


def test_transformer_formula():
    d_model, warmup = 512, 4000
    base_lr = d_model**-0.5 * warmup**-0.5
    sched = bnsgd_numba.create_scheduler("inverse_sqrt", base_lr=base_lr, warmup_steps=warmup)
    for t in (1, 100, 3999, 4000, 4001, 10_000, 100_000):
        expected = d_model**-0.5 * min(t**-0.5, t * warmup**-1.5)
        assert math.isclose(sched.lr_at(t), expected, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"warmup_steps": 0}, ValueError),
        ({"warmup_steps": 2.5}, TypeError),
        ({"warmup_steps": "40"}, TypeError),
        ({"warmup_init_lr": math.nan}, ValueError),
        ({"warmup_init_lr": -1e-3}, ValueError),
        ({"warmup_init_lr": "0"}, TypeError),
    ],
)
def test_rejects_bad_parameters(params, error):
    (name,) = params
    with pytest.raises(error, match=name):
        bnsgd_numba.create_scheduler("inverse_sqrt", base_lr=1.0, **params)


def test_takes_the_optimizers_rate_when_bound():
    class Optimizer:
        lr = 0.5

    sched = bnsgd_numba.create_scheduler("inverse_sqrt", warmup_steps=4).bind(Optimizer())
    assert sched.base_lr == 0.5 and sched.lr_at(16) == 0.25
