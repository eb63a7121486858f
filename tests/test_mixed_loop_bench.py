"""The mixed-loop benchmark (BLAS and the kernels in one loop): its figures and ratios."""

from __future__ import annotations

import json
import math
import re

import pytest

from bnsgd_numba.bench import mixed_loop


def test_ratios_are_to_the_fastest_single_threaded_blas_row_with_the_same_torch_setting():
    best = {
        ("default", "default", False): 0.30,
        ("default", "1 thread", False): 0.20,
        ("omp", "default", False): 9.0,
        ("omp", "1 thread", False): 0.25,
        ("default", "default", True): 0.50,
        ("default", "1 thread", True): 0.40,
    }
    layers = dict.fromkeys(best, "tbb")
    matmul = {config: ms / 3 for config, ms in best.items()}
    kernels = {config: ms / 2 for config, ms in best.items()}
    rows = mixed_loop.rows_from_best(best, layers, matmul, kernels)
    rows = {(r.layer, r.blas, r.torch): r for r in rows}
    assert rows[("omp", "default", False)].matmul_ms == pytest.approx(3.0)
    assert rows[("omp", "default", False)].kernels_ms == pytest.approx(4.5)
    assert rows[("default", "default", False)].ratio_to_single_blas == pytest.approx(1.5)
    assert rows[("omp", "default", False)].ratio_to_single_blas == pytest.approx(45.0)
    assert rows[("omp", "1 thread", False)].ratio_to_single_blas == pytest.approx(1.25)
    assert rows[("default", "default", True)].ratio_to_single_blas == pytest.approx(1.25)
    report = mixed_loop.format_report(list(rows.values()), 32)
    assert "default settings: 1.50x the best single-threaded-BLAS figure (MISSES" in report
    # (0.30 - 0.10) ms of the iteration after the matmul, 0.15 ms alone
    assert "target); BatchNorm + SGD took 1.33x their time alone in the loop" in report
    assert "default settings with torch: 1.25x the best single-threaded-BLAS figure (meets" in (
        report
    )


def test_a_tiny_run_reports_consistent_figures(tmp_path, capsys):
    path = tmp_path / "rows.json"
    argv = ["--no-torch", "--rounds", "2", "--batch-size", "2", "--round-seconds", "0.01"]
    argv += ["--processes", "2"]
    assert mixed_loop.main([*argv, "--json", str(path)]) == 0
    report = capsys.readouterr().out
    rows = json.loads(path.read_text())
    assert [(r["layer"], r["blas"], r["torch"]) for r in rows] == [
        ("default", "default", False),
        ("default", "1 thread", False),
    ]
    single = rows[1]["ms_per_iteration"]
    for row in rows:
        assert 0 < row["ms_per_iteration"] < 1e3 and math.isfinite(row["ms_per_iteration"])
        assert row["ratio_to_single_blas"] == pytest.approx(row["ms_per_iteration"] / single)
        # a batch of 2 and the seed's SGD step are below CPU_SERIAL_BELOW: no pool
        assert row["layer_in_use"] == "not started"
        assert 0 < row["matmul_ms"] < 1e3 and 0 < row["kernels_ms"] < 1e3
        rest = row["ms_per_iteration"] - row["matmul_ms"]
        line = (
            f"| {row['layer']} | {row['blas']} | no | {row['ms_per_iteration']:.4f} "
            f"| {row['matmul_ms']:.4f} | {rest:.4f} | {row['kernels_ms']:.4f} | not started |"
        )
        assert line in report
    ratio = rows[0]["ratio_to_single_blas"]
    verdict = "meets" if ratio <= mixed_loop.TARGET_RATIO else "MISSES"
    assert re.search(rf"default settings: {ratio:.2f}x .*\({verdict} the 1.3x target\)", report)


@pytest.mark.parametrize(
    "argv",
    [["--rounds", "0"], ["--batch-size", "0"], ["--round-seconds", "nan"], ["--layers", "gomp"]],
)
def test_bad_arguments_exit_2_naming_the_option(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mixed_loop.main(argv)
    assert exit_info.value.code == 2
    assert argv[0] in capsys.readouterr().err
