"""The before-and-after kernel benchmark: its cases, its bit comparison and its report.

The working tree's kernel module stands in for both versions (loading a
revision is checked without compiling it), and timings are fixed, so the
test runs on kernels the rest of the suite has already compiled.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnsgd_numba.batch_norm import _cpu
from bnsgd_numba.bench import kernel_ab


def fixed_seconds(functions, repeat, settle):
    """Run every contender once; the old versions take twice the new ones' time.

    The third round is disturbed: everything takes 10x longer, which moves
    neither the best rounds nor the paired ratios.
    """
    for function in functions.values():
        function()
    base = {name: 2e-3 if name.startswith("before") else 1e-3 for name in functions}
    return {name: [t, t, 10 * t, t][:repeat] for name, t in base.items()}


def test_cases_parse_shapes_and_channel_axes():
    case = kernel_ab.parse_case("256x32x32x64:-1", "float64")
    assert (case.shape, case.channel_axis, case.dtype) == ((256, 32, 32, 64), -1, np.float64)
    assert kernel_ab.parse_case("32x784").channel_axis == 1
    for bad in ("32", "32x0", "32xa", "8x4:2", "8x4:-3"):
        with pytest.raises(ValueError, match="case"):
            kernel_ab.parse_case(bad)


def test_a_revision_loads_as_its_own_module(tmp_path):
    module = kernel_ab.load_revision("HEAD", tmp_path)
    assert module is not _cpu
    assert set(module.FUSED_PASSES) == set(_cpu.FUSED_PASSES)
    with pytest.raises(ValueError, match="--before no-such-revision"):
        kernel_ab.load_revision("no-such-revision", tmp_path)


@pytest.mark.parametrize("case", ["12x5", "3x4x2x5", "2x3x4:-1"])
def test_every_operation_is_timed_and_its_bits_compared(monkeypatch, case):
    monkeypatch.setattr(kernel_ab, "interleaved_round_seconds", fixed_seconds)
    rows = kernel_ab.compare(_cpu, _cpu, [kernel_ab.parse_case(case)], rounds=4)
    assert [row.operation for row in rows] == list(kernel_ab.OPERATIONS)
    assert all(row.same_bits for row in rows)
    assert all(row.speedup == pytest.approx(2.0) for row in rows)
    assert all(row.paired == pytest.approx((2.0, 2.0, 2.0)) for row in rows)
    assert all(row.before_ms == pytest.approx(2.0) for row in rows)
    report = kernel_ab.format_report(rows, "HEAD~1")
    assert "HEAD~1 (before) against the working tree (after)" in report
    assert report.count("| 2.00 | 2.00 (2.00-2.00) |") == 3
    assert "Geometric mean of before / after: 2.000." in report


def test_bits_that_differ_anywhere_are_reported():
    a = np.zeros((2, 3), np.float32)
    b = a.copy()
    assert kernel_ab._same_bits((a, b), (a.copy(), b.copy()))
    b[1, 2] = -0.0  # equal as a number, not as bits
    assert not kernel_ab._same_bits((a, b), (a, a))
    row = kernel_ab.Row("c", "backward", 1.0, 1.0, 1.0, same_bits=False)
    assert "| NO |" in kernel_ab.format_report([row], "HEAD")
