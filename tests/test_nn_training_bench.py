"""The training benchmark's two sides do the same job; its entry point fails clearly."""

from __future__ import annotations

import numpy as np
import pytest

from bnsgd_numba.bench import training as bench
from bnsgd_numba.nn.data import Dataset
from bnsgd_numba.nn.training import TrainConfig


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 20))
    y = rng.integers(0, 10, 300)
    x = (centers[y] + 0.8 * rng.normal(size=(300, 20))).astype(np.float32)
    return Dataset(x[:200], y[:200], x[200:240], y[200:240], x[240:], y[240:], 10, "blobs")


def test_pytorch_side_trains_the_same_network_the_same_way(small):
    # float64, same weights, batches and rates: the two test losses agree closely
    config = TrainConfig(epochs=2, batch_size=16, hidden=16, dtype="float64")
    _, ours, ours_loss = bench.ours(small, config)
    _, theirs, theirs_loss = bench.pytorch(small, config, threads=1)
    assert 0.3 < ours < 1.0  # it learned something, and not everything
    assert ours == theirs
    assert theirs_loss == pytest.approx(ours_loss, rel=1e-9)


def test_profile_step_accounts_for_the_whole_step():
    rows = dict(bench.profile_step(features=20, steps=40))
    assert rows["step"] > 0
    parts = sum(v for k, v in rows.items() if k != "step")
    assert parts == pytest.approx(rows["step"])
    assert {
        "0 BatchNorm forward",
        "1 Dense backward",
        "SGD step",
        "loss (softmax cross-entropy)",
    } <= set(rows)


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    assert bench.main(["--data", str(tmp_path / "mnist.npz")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no MNIST at" in error and "--data" in error


def test_the_bench_report_has_a_training_row_when_mnist_is_there(tmp_path, monkeypatch):
    from bnsgd_numba.bench import report

    monkeypatch.setattr(bench, "DEFAULT_DATA", tmp_path / "mnist.npz")
    (title, text), rows = report._training_table(quick=True)
    assert "MNIST" in title and text.startswith("Not measured: no MNIST at") and rows == []
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "mnist.npz",
        x_train=rng.integers(0, 256, (100, 8, 8)).astype(np.uint8),
        y_train=np.arange(100) % 10,
        x_test=rng.integers(0, 256, (20, 8, 8)).astype(np.uint8),
        y_test=np.arange(20) % 10,
    )
    (_, text), rows = report._training_table(quick=True)
    row = [line for line in text.splitlines() if line.startswith("| 1 epochs, batch 32 |")]
    assert len(row) == 1 and row[0].count("|") == 8 and "| - |" not in row[0]
    assert [r.case for r in rows] == ["1 epochs, batch 32"]
