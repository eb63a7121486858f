"""The benchmark's bookkeeping: shapes, columns, targets, report and plot.

Timings are replaced by fixed seconds per contender (each contender still
runs once), so every derived figure is checked exactly and quickly.
"""

from __future__ import annotations

import json
import re

import pytest

from bnsgd_numba.bench import batch_norm, normalizations, report

SECONDS = {"ours": 2e-3, "copy": 1e-3, "torch": 4e-3, "numpy": 8e-3, "allocating": 3e-3}
STARTUP = {"import_s": 0.1, "first_call_warm_cache_s": 0.5}


def fixed_seconds(functions, repeat=7):
    """Run every contender once; return fixed times (contenders of the scaling: by prefix)."""
    for function in functions.values():
        function()
    return {name: SECONDS.get(name.split()[0], 1e-3) for name in functions}


@pytest.fixture
def fixed_timing(monkeypatch):
    for module in (batch_norm, normalizations, report):
        monkeypatch.setattr(module, "interleaved_best_seconds", fixed_seconds)


def bn_row(case, operation, megabytes=0.1, speedup=3.0, percent_of_copy=90.0):
    return batch_norm.Row(
        case=case, operation=operation, megabytes=megabytes, ours_ms=1.0,
        torch_ms=speedup, numpy_ms=None, copy_ms=0.5, gb_per_s=1.0, percent_of_probe=50.0,
        percent_of_same_size_copy=percent_of_copy, speedup_vs_torch=speedup,
    )  # fmt: skip


def variant_row(case, operation, megabytes=16.0, speedup=1.2, torch_percent=90.0):
    return normalizations.Row(
        case=case, operation=operation, megabytes=megabytes, ours_ms=1.0,
        ours_allocating_ms=1.5, torch_ms=speedup, copy_ms=0.5, gb_per_s=1.0,
        percent_of_probe=50.0, percent_of_same_size_copy=80.0,
        torch_percent_of_same_size_copy=torch_percent, speedup_vs_torch=speedup,
    )  # fmt: skip


def table_cells(table: str) -> list[list[str]]:
    rows = [line for line in table.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in rows]


def test_the_bench_covers_the_seed_shapes_the_wide_batches_and_the_sweep():
    cases = {name: shape for name, shape, _ in batch_norm.DEFAULT_CASES + batch_norm.BATCH_SWEEP}
    for name, shape in [("(32,784)", (32, 784)), ("(32,64)", (32, 64)),
                        ("(256,784)", (256, 784)), ("(1024,4096)", (1024, 4096)),
                        ("(8,256,56,56) NCHW", (8, 256, 56, 56)),
                        ("(32,64,56,56) NCHW", (32, 64, 56, 56))]:  # fmt: skip
        assert cases[name] == shape
    assert [s[0] for _, s, _ in batch_norm.BATCH_SWEEP] == [32, 64, 128, 256, 512, 1024, 2048, 4096]
    assert {s[1] for _, s, _ in batch_norm.BATCH_SWEEP} == {784}
    default = batch_norm.run.__defaults__[0]
    assert default == batch_norm.DEFAULT_CASES + batch_norm.BATCH_SWEEP


def test_batch_norm_rows_report_the_size_and_the_same_size_copy(fixed_timing):
    cases = (("(32,64)", (32, 64), 1), ("(40,784)", (40, 784), 1))
    rows, probe = batch_norm.run(cases, probe=1e9, repeat=1)
    assert probe == 1e9
    assert [(r.case, r.operation) for r in rows] == [
        (case, operation) for case, _, _ in cases for operation in batch_norm.TRAFFIC
    ]
    for r in rows:
        nbytes = 4 * (32 * 64 if r.case == "(32,64)" else 40 * 784)
        assert r.megabytes == pytest.approx(nbytes / 1e6)
        assert r.copy_ms == pytest.approx(1.0)
        traffic = batch_norm.TRAFFIC[r.operation]
        assert r.percent_of_same_size_copy == pytest.approx(100 * traffic / 2 / 2)
        assert r.speedup_vs_torch == pytest.approx(2.0)
        # NumPy only on the default cases (the sweep is not timed with it).
        with_numpy = r.case == "(32,64)" and r.operation != "backward"
        assert (r.numpy_ms is not None) == with_numpy


def test_the_batch_norm_table_has_a_size_and_a_copy_column():
    rows = [bn_row("(32,784)", "backward", megabytes=0.100352)]
    rows[0].copy_ms = 0.0125
    header, _, line = table_cells(batch_norm.format_table(rows, 1e10))
    assert len(header) == len(line)
    assert line[header.index("MB")] == "0.10"
    assert line[header.index("copy ms")] == "0.013"
    assert line[header.index("% of copy")] == "90%"


def test_a_variant_at_pytorchs_roofline_must_be_within_10_percent_of_it():
    close = variant_row("layer_norm", "backward", speedup=0.95)
    behind = variant_row("layer_norm", "backward", speedup=0.85)
    below_roofline = variant_row("layer_norm", "backward", speedup=0.85, torch_percent=60.0)
    small = variant_row("layer_norm", "backward", megabytes=0.5, speedup=0.85)
    assert normalizations.verdict(close) == "speed-up MISSED, within 10% at the roofline"
    assert normalizations.verdict(behind) == "speed-up MISSED, more than 10% behind"
    assert normalizations.verdict(below_roofline) == "speed-up MISSED"
    assert normalizations.verdict(small) == "speed-up MISSED"
    assert normalizations.verdict(variant_row("group_norm", "forward")) == (
        "speed-up met, within 10% at the roofline"
    )
    header, _, line = table_cells(normalizations.format_table([close], 1e10))
    assert len(header) == len(line)
    assert line[header.index("copy ms")] == "0.500"
    assert line[header.index("PyTorch % of copy")] == "90%"


def test_the_targets_of_the_issue_are_checked():
    bn_rows = [
        bn_row("(256,64,32,32) NCHW", "forward-train", megabytes=67.0, percent_of_copy=85.0),
        bn_row("(256,64,32,32) NCHW", "backward", megabytes=67.0, percent_of_copy=74.0),
        bn_row("(32,784)", "forward-train", speedup=2.5),
        bn_row("(32,784)", "backward", speedup=1.9),
        bn_row("(32,64)", "forward-train", speedup=2.0),
        bn_row("(32,64)", "backward", speedup=4.0),
        bn_row("(32,64)", "forward-eval", speedup=1.5),
        bn_row("(1024,4096)", "forward-train", megabytes=16.8, percent_of_copy=60.0),
    ]
    variants = [variant_row("layer_norm (4096, 1024)", "backward", speedup=0.95)]
    checks = {name: (value, ok) for name, value, ok in report.targets(bn_rows, [], STARTUP)}
    headline = "BN forward-train (256,64,32,32) >= 80% of a same-size copy (2 reads + 1 write)"
    assert checks[headline] == ("85% (50% of the probe)", True)
    assert checks["BN backward (256,64,32,32) >= 75% of a same-size copy (4 reads + 1 write)"] == (
        "74%", False
    )  # fmt: skip
    assert checks["seed's (32,784) forward-train, whole call, >= 2x PyTorch"] == ("2.50x", True)
    assert checks["seed's (32,784) backward, whole call, >= 2x PyTorch"] == ("1.90x", False)
    assert checks["seed's (32,64) forward-train, whole call, >= 2x PyTorch"] == ("2.00x", True)
    assert checks["seed's (32,64) backward, whole call, >= 2x PyTorch"] == ("4.00x", True)
    assert checks["no BatchNorm or variant row slower than PyTorch"] == (
        "slowest 1.50x ((32,64), forward-eval)", True
    )  # fmt: skip
    assert checks["BN rows of 1 MB or more >= 80% of a same-size copy"] == (
        "lowest 60% ((1024,4096), forward-train)", False
    )  # fmt: skip
    with_variants = report.targets(bn_rows, [], STARTUP, variants)
    checks = {name: (value, ok) for name, value, ok in with_variants}
    assert checks["no BatchNorm or variant row slower than PyTorch"] == (
        "slowest 0.95x (layer_norm (4096, 1024), backward)", False
    )  # fmt: skip
    roofline = "variants within 10% of PyTorch where PyTorch is at the copy roofline (1 MB or more)"
    assert checks[roofline] == ("slowest 0.95x (layer_norm (4096, 1024), backward)", True)


def test_the_report_puts_the_batch_sweep_in_its_own_table_and_lists_the_targets(
    monkeypatch, tmp_path
):
    sweep = [name for name, _, _ in batch_norm.BATCH_SWEEP]
    bn_rows = [bn_row("(32,64)", "backward")] + [bn_row(name, "backward") for name in sweep]
    variants = [variant_row("layer_norm (4096, 1024)", "forward")]
    monkeypatch.setattr(report, "machine_description", lambda: {"cpu": "test"})
    monkeypatch.setattr(report, "copy_bandwidth", lambda: 1e10)
    monkeypatch.setattr(batch_norm, "run", lambda probe, repeat: (bn_rows, probe))
    monkeypatch.setattr(batch_norm, "startup_seconds", lambda: STARTUP)
    monkeypatch.setattr(normalizations, "run", lambda repeat: (variants, 1e10))
    from bnsgd_numba.bench import sgd

    monkeypatch.setattr(sgd, "run", lambda probe, repeat: ([], probe))
    from bnsgd_numba.bench import training

    monkeypatch.setattr(training, "DEFAULT_DATA", tmp_path / "no-mnist.npz")
    results, figures = tmp_path / "RESULTS.md", tmp_path / "bench.json"
    assert report.main(["--quick", "--results", str(results), "--json", str(figures)]) == 0
    text = results.read_text()
    main_table, sweep_table = text.split("### BatchNorm1d batch sweep, (N, 784)")
    assert "| (32,64) |" in main_table and "| (32,784) |" not in main_table
    sweep_table = sweep_table.split("## SGD step")[0]
    assert "| (32,64) |" not in sweep_table
    assert re.findall(r"^\| (\(\d+,784\)) \|", sweep_table, re.M) == sweep
    assert "| layer_norm (4096, 1024) | forward |" in text
    assert "## Training the seed's network on MNIST" in text and "Not measured: no MNIST" in text
    assert "| no BatchNorm or variant row slower than PyTorch | slowest 1.20x" in text
    saved = json.loads(figures.read_text())
    assert {"megabytes", "copy_ms"} <= saved["batch_norm"][0].keys()
    # every figure of the report: the variants' rows, and no training rows without MNIST
    assert [row["case"] for row in saved["variants"]] == ["layer_norm (4096, 1024)"]
    assert saved["training"] == []


def test_the_scaling_series_are_4d_and_2d_with_the_copy_and_the_plot_draws_them(
    fixed_timing, monkeypatch, tmp_path
):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(batch_norm, "SWEEP_BATCHES", (32, 64))
    points = report.scaling(sizes=(2048, 4096), repeat=1)
    assert [(p["series"], p["elements"]) for p in points] == [
        ("4-D (N,16,8,8)", 2048), ("4-D (N,16,8,8)", 4096),
        ("2-D (N,784)", 32 * 784), ("2-D (N,784)", 64 * 784),
    ]  # fmt: skip
    for p in points:
        assert {"copy", "ours bn_forward", "ours bn_backward"} <= p.keys()
        assert ("ours sgd_step" in p) == p["series"].startswith("4-D")
    path = tmp_path / "scaling.png"
    report.plot_scaling(points, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_contender_starts_after_a_settle_pause(monkeypatch):
    # PyTorch's idle OpenMP workers spin for ~10 ms after a call: without the
    # pause, whoever ran next in a round was timed against them
    from bnsgd_numba.bench import timing

    events = []
    monkeypatch.setattr(timing.time, "sleep", lambda seconds: events.append(("sleep", seconds)))
    monkeypatch.setattr(
        timing, "best_seconds", lambda function, repeat: events.append(function()) or 1.0
    )
    timing.interleaved_best_seconds({"a": lambda: "a", "b": lambda: "b"}, repeat=2, settle=0.01)
    assert events == [("sleep", 0.01), "a", ("sleep", 0.01), "b"] * 2
    assert timing.SETTLE_SECONDS >= 0.03


def test_round_seconds_keep_every_round_in_order_and_best_seconds_their_minimum(monkeypatch):
    from bnsgd_numba.bench import timing

    times = iter([3.0, 5.0, 1.0, 4.0, 2.0, 6.0])  # a, b, a, b, a, b
    monkeypatch.setattr(timing.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(timing, "best_seconds", lambda function, repeat: next(times))
    functions = {"a": lambda: None, "b": lambda: None}
    rounds = timing.interleaved_round_seconds(functions, repeat=3, settle=0.0)
    assert rounds == {"a": [3.0, 1.0, 2.0], "b": [5.0, 4.0, 6.0]}
    times = iter([3.0, 5.0, 1.0, 4.0, 2.0, 6.0])
    assert timing.interleaved_best_seconds(functions, repeat=3, settle=0.0) == {"a": 1.0, "b": 4.0}
