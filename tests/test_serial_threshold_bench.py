"""The serial-threshold benchmark: what it times, its crossovers and its suggestion.

Timings are replaced by fixed ones, so the test checks the logic on tiny
sizes without depending on the machine.
"""

from __future__ import annotations

import pytest

from bnsgd_numba import config
from bnsgd_numba.bench import serial_threshold
from bnsgd_numba.bench.serial_threshold import Point


def test_each_build_is_timed_under_its_own_threshold_and_the_setting_is_restored(monkeypatch):
    seen = []

    def fixed_seconds(functions, repeat, settle):
        times = {}
        for name, function in functions.items():
            function()
            seen.append((name, config.CPU_SERIAL_BELOW))
            times[name] = 2e-3 if name == "serial" else 1e-3
        return times

    monkeypatch.setattr(serial_threshold, "interleaved_best_seconds", fixed_seconds)
    before = config.CPU_SERIAL_BELOW
    points = serial_threshold.measure(serial_threshold.FAMILIES, (1024, 2048), rounds=1)
    assert config.CPU_SERIAL_BELOW == before
    assert set(seen) == {("serial", serial_threshold.ALL_SERIAL), ("parallel", 0)}
    assert [p.family for p in points] == [f for f in serial_threshold.FAMILIES for _ in range(2)]
    # the elements the kernels count: whole rows of 784 or whole 64x16x16 samples
    assert {p.elements for p in points} >= {2 * 784, 16384, 1024, 2048}
    assert all(p.speedup == pytest.approx(2.0) for p in points)


def _points(family, speedups):
    return [Point(family, 1000 * 2**k, s * 1.0, 1.0) for k, s in enumerate(speedups)]


def test_a_crossover_needs_the_parallel_build_faster_at_every_larger_size():
    points = (
        _points("a", [0.5, 1.2, 0.9, 1.1, 1.5])  # a dip at 4000: crosses at 8000
        + _points("b", [1.1, 1.3, 1.4, 1.8, 2.0])
        + _points("c", [0.5, 0.6, 0.7, 0.8, 1.0])  # never faster: 1.0 is not
    )
    assert serial_threshold.crossovers(points) == {"a": 8000, "b": 1000, "c": None}
    assert serial_threshold.suggestion(points) is None
    assert serial_threshold.suggestion([p for p in points if p.family != "c"]) == 8000
    report = serial_threshold.format_report(points, 131072)
    assert "| a | 4,000 | 0.9000 | 1.0000 | 0.90 |" in report
    assert "- a: parallel faster from 8,000" in report
    assert "- c: parallel faster never, up to the largest size" in report
    assert "above 16,000" in report and "current 131,072" in report
    clean = serial_threshold.format_report([p for p in points if p.family != "c"], 131072)
    assert "Suggested config.CPU_SERIAL_BELOW = 8,000 (the largest crossover)" in clean


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--sizes", "1,x"], ["--sizes", "0"]])
def test_bad_options_are_refused_with_their_name(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        serial_threshold.main(argv)
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err
