"""``bnsgd-numba train --save`` and ``bnsgd-numba evaluate``: a model kept and used again."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from bnsgd_numba.nn import Sequential
from bnsgd_numba.nn.data import load_digits


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "bnsgd_numba", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    result = run_cli("train", "--epochs", "2", "--quiet", "--save", str(path))
    assert result.returncode == 0, result.stderr
    return path, result


def test_evaluate_reports_what_training_reported(saved):
    path, trained = saved
    assert f"model saved to {path}" in trained.stderr
    result = run_cli("evaluate", str(path))
    assert result.returncode == 0, result.stderr
    digits = load_digits()
    loss, accuracy = Sequential.load(path).evaluate(digits.x_test, digits.y_test)
    assert result.stdout.startswith(f"test loss {loss:.4f}  accuracy {accuracy:.4f}  (359 examples")
    assert f"test accuracy {accuracy:.4f}" in trained.stderr


def one_error_line(result):
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_evaluate_errors_are_one_line_with_exit_code_2(saved, tmp_path):
    path, _ = saved
    line = one_error_line(run_cli("evaluate", str(tmp_path / "none.npz")))
    assert "none.npz: no such file" in line
    content = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(content[: len(content) // 2])
    line = one_error_line(run_cli("evaluate", str(tmp_path / "cut.npz")))
    assert "cut.npz: corrupt .npz archive: truncated: the file ends inside array '1.weight'" in line
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "mnist.npz",
        x_train=rng.integers(0, 256, (20, 28, 28)).astype(np.uint8),
        y_train=rng.integers(0, 10, 20),
        x_test=rng.integers(0, 256, (5, 28, 28)).astype(np.uint8),
        y_test=rng.integers(0, 10, 5),
    )
    line = one_error_line(run_cli("evaluate", str(path), "--data", str(tmp_path / "mnist.npz")))
    assert "does not fit" in line and "(N, 64)" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["--save", "{tmp}/missing/m.npz"], "--save {tmp}/missing/m.npz: no such directory"),
        (["--save", "{tmp}"], "--save {tmp}: is a directory"),
        (["--save", "-"], "--save -: a model is written to a file"),
        (["--save", "{tmp}/m.npz", "--distributed"], "--save is not available with --distributed"),
    ],
)
def test_train_checks_save_before_training(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    line = one_error_line(run_cli("train", "--epochs", "1", *args))
    assert message.format(tmp=tmp_path) in line
    assert not (tmp_path / "m.npz").exists()
