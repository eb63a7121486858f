"""``bnsgd-numba train``: checks before training, the schedule's unit, divergence, outputs.

The runs here train on a tiny 3-class data set (60 + 20 examples of 8
features) for an epoch or two, in this process.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pytest

from bnsgd_numba import hookimpl, registry
from bnsgd_numba.cli import main
from bnsgd_numba.schedulers.base import Scheduler


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-class .npz: 54 training, 6 validation and 20 test examples; 7 batches of 8."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path, x_train=rng.random((60, 8)).astype(np.float32), y_train=rng.integers(0, 3, 60),
        x_test=rng.random((20, 8)).astype(np.float32), y_test=rng.integers(0, 3, 20),
    )  # fmt: skip
    return path


def train(tiny, *options):
    return main(["train", "--data", str(tiny), "--batch-size", "8", "--quiet", *options])


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if not line.startswith("data: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_classes_come_from_the_labels_or_from_classes(tiny, capsys):
    assert train(tiny, "--epochs", "1") == 0
    assert "8 inputs, 3 classes" in capsys.readouterr().err
    assert train(tiny, "--epochs", "1", "--classes", "5") == 0
    assert "8 inputs, 5 classes" in capsys.readouterr().err
    assert train(tiny, "--epochs", "1", "--classes", "2") == 2
    assert "y_train labels must be in [0, 2)" in one_line(capsys.readouterr().err)


def test_json_dash_writes_the_summary_alone_to_stdout(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert train(tiny, "--epochs", "1", "--json", "-") == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["config"]["schedule_unit"] == "step" and len(summary["epochs"]) == 1
    assert "train_loss" in captured.err  # the table moved to stderr
    assert not (tmp_path / "-").exists()


def _text(path):
    path.write_text("x_train,y_train\n1,2\n")


def _empty(path):
    path.write_bytes(b"")


def _npy(path):
    with open(path, "wb") as handle:
        np.save(handle, np.zeros((4, 3)))


def _corrupt(path):
    rng = np.random.default_rng(1)
    np.savez(path, x_train=rng.random((10, 4)), y_train=np.zeros(10, np.int64),
             x_test=rng.random((4, 4)), y_test=np.zeros(4, np.int64))  # fmt: skip
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _complex(path):
    rng = np.random.default_rng(1)
    np.savez(path, x_train=rng.random((10, 4)) + 1j * rng.random((10, 4)),
             y_train=np.arange(10) % 2, x_test=rng.random((4, 4)), y_test=np.arange(4) % 2)  # fmt: skip


@pytest.mark.parametrize(
    "write,message",
    [
        (_text, "not an .npz archive"),
        (_empty, "empty file"),
        (_npy, "a single .npy array"),
        (_corrupt, "corrupt .npz archive"),
        (_complex, "x_train is not real-valued (complex128)"),
    ],
    ids=["text", "empty", "npy", "corrupt zip", "complex pixels"],
)
def test_a_bad_data_file_is_one_line_naming_it(write, message, tmp_path, capsys):
    path = tmp_path / "data.npz"
    write(path)
    assert main(["train", "--data", str(path), "--epochs", "1"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"bnsgd-numba train: error: {path}: ") and message in line


@pytest.mark.parametrize(
    "options,message",
    [
        (["--json", "{tmp}/no/such/dir/run.json"], "--json {tmp}/no/such/dir/run.json: no such"),
        (["--plot", "{tmp}/no/such/dir/run.png"], "--plot {tmp}/no/such/dir/run.png: no such"),
        (["--plot", "{tmp}"], "--plot {tmp}: is a directory"),
    ],
    ids=["json", "plot", "plot is a directory"],
)
def test_output_paths_are_checked_before_training(tiny, options, message, tmp_path, capsys):
    assert train(tiny, "--epochs", "1", *[o.format(tmp=tmp_path) for o in options]) == 2
    err = capsys.readouterr().err
    assert one_line(err).startswith(f"bnsgd-numba train: error: {message.format(tmp=tmp_path)}")
    assert "data: " not in err  # checked before the data is even loaded


def test_plot_without_matplotlib_fails_before_training(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert train(tiny, "--epochs", "1", "--plot", str(tmp_path / "run.png")) == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in one_line(err) and "data: " not in err


def test_one_cycle_takes_lr_as_its_peak(tiny, capsys):
    assert (
        train(tiny, "--epochs", "2", "--scheduler", "one_cycle", "--lr", "0.5", "--json", "-") == 0
    )
    rates = [epoch["lr"] for epoch in json.loads(capsys.readouterr().out)["epochs"]]
    assert 0.5 / 25 < rates[0] <= 0.5 and rates[1] < rates[0]


def test_a_schedule_that_decays_to_nothing_in_steps_warns_and_epochs_fix_it(tiny, capsys):
    # the digits' `--scheduler step --param step_size=5 --epochs 3`: 27 batches of 2 here
    step = ["--scheduler", "step", "--param", "step_size=5", "--epochs", "3", "--json", "-"]
    assert train(tiny, "--batch-size", "2", *step) == 0
    captured = capsys.readouterr()
    warning = one_line(captured.err.split("epoch |")[0])
    assert warning.startswith("bnsgd-numba train: warning: --scheduler step brings the lear")
    assert "by epoch 3 of 3" in warning and "--schedule-unit epoch" in warning
    per_step = [epoch["lr"] for epoch in json.loads(captured.out)["epochs"]]
    assert per_step[2] < 1e-6 * 0.1
    # the PyTorch reading: step_size counts epochs; the rate stays 0.1 for 3 epochs
    assert train(tiny, "--batch-size", "2", *step, "--schedule-unit", "epoch") == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    rates = [epoch["lr"] for epoch in json.loads(captured.out)["epochs"]]
    assert rates == pytest.approx([0.1, 0.1, 0.1], rel=1e-12)


def test_epoch_unit_steps_the_schedule_at_each_epoch_end(tiny, capsys):
    options = ["--scheduler", "step", "--param", "step_size=1", "--param", "gamma=0.5"]
    assert train(tiny, "--epochs", "3", *options, "--schedule-unit", "epoch", "--json", "-") == 0
    rates = [epoch["lr"] for epoch in json.loads(capsys.readouterr().out)["epochs"]]
    assert rates == pytest.approx([0.1, 0.05, 0.025], rel=1e-12)


def test_divergence_is_one_line_naming_epoch_and_step_without_numpy_warnings(tiny, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy overflow warning would fail the run
        assert train(tiny, "--epochs", "2", "--lr", "50") == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("bnsgd-numba train: error: training diverged at epoch 1, step ")
    assert "(batch " in line and "of 7)" in line and "try a smaller --lr" in line


def test_a_negative_schedule_is_refused_before_training(tiny, capsys):
    assert train(tiny, "--scheduler", "exponential", "--param", "gamma=-1") == 2
    err = capsys.readouterr().err
    assert one_line(err).startswith("bnsgd-numba train: error: --scheduler exponential: ")
    assert "data: " not in err


class FailsAtStep101(Scheduler):
    """A constant rate that cannot be given at step 101 (as a rate that overflows)."""

    def lr_at(self, step: int) -> float:
        if step == 101:
            raise ValueError(f"no rate at step {step}")
        return self.base_lr


class FailingPlugin:
    @hookimpl
    def bnsgd_register_schedulers(self, register):
        register("fails_at_101", FailsAtStep101)


@pytest.fixture
def failing_schedule():
    name = registry.register_plugin(FailingPlugin(), name="fails_at_101_plugin")
    yield
    registry.unregister_plugin(name)


def test_a_schedule_failing_mid_training_is_one_line_naming_the_step(
    tiny, failing_schedule, capsys
):
    # 7 batches an epoch: step 102 (lr_at(101)) is batch 4 of epoch 15, which the
    # checks before training (epoch starts, the first 100 steps, the last) do not see
    assert train(tiny, "--epochs", "20", "--scheduler", "fails_at_101") == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(
        "bnsgd-numba train: error: training stopped at epoch 15, step 102 (batch 4 of 7): "
    )
    assert "no rate at step 101" in line and "--scheduler fails_at_101" in line
