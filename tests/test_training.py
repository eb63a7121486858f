"""The main job: training the seed's network on the embedded digits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from bnsgd_numba.nn.data import load_digits, load_npz
from bnsgd_numba.nn.training import TrainConfig, train


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_split_is_fixed_and_disjoint(digits):
    again = load_digits()
    np.testing.assert_array_equal(digits.x_test, again.x_test)
    sizes = len(digits.x_train), len(digits.x_val), len(digits.x_test)
    assert sum(sizes) == 1797 and min(sizes) > 200
    assert (
        digits.x_train.dtype == np.float32
        and 0 <= digits.x_train.min() <= digits.x_train.max() <= 1
    )


def test_default_training_reaches_96_percent_on_digits(digits):
    result = train(digits, TrainConfig())
    assert result.test_accuracy >= 0.96
    assert len(result.epochs) == 20
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss


def test_same_seed_gives_the_same_numbers_bitwise(digits):
    config = TrainConfig(epochs=2, seed=7)
    first, second = train(digits, config), train(digits, config)
    assert first.summary()["epochs"] == second.summary()["epochs"]
    for a, b in zip(first.model.state(), second.model.state(), strict=True):
        assert a.tobytes() == b.tobytes()
    other = train(digits, TrainConfig(epochs=2, seed=8))
    assert other.epochs[-1].train_loss != first.epochs[-1].train_loss


def test_batch_norm_network_learns_faster_from_the_same_start(digits):
    # the seed's claim, on the first epoch of the same weights and batches
    with_bn = train(digits, TrainConfig(epochs=1, scheduler="constant"))
    without = train(digits, TrainConfig(epochs=1, scheduler="constant", batch_norm=False))
    assert with_bn.epochs[0].val_loss < without.epochs[0].val_loss


def test_reduce_on_plateau_is_driven_by_the_validation_loss(digits):
    config = TrainConfig(
        epochs=6,
        scheduler="reduce_on_plateau",
        # an improvement must halve the loss: the validation loss plateaus at once
        scheduler_params={"patience": 0, "factor": 0.5, "threshold": 0.5},
    )
    result = train(digits, config)
    rates = [record.lr for record in result.epochs]
    assert rates[0] == pytest.approx(0.1) and min(rates) < 0.09  # a plateau halved it
    assert all(b <= a for a, b in zip(rates, rates[1:], strict=False))


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "bnsgd_numba", "train", *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )  # fmt: skip


def test_command_line_writes_json_and_plot(tmp_path):
    summary, picture = tmp_path / "run.json", tmp_path / "curves.png"
    result = run_cli(
        "--epochs", "2", "--compare-no-bn", "--json", str(summary), "--plot", str(picture)
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(summary.read_text())
    assert {"test_accuracy", "seconds", "epochs", "no_bn"} <= set(data)
    assert set(data["epochs"][0]) == {
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
    }
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "with BN" in result.stdout and "without BN" in result.stdout
    assert "epoch   2/2" in result.stderr  # progress, one line per epoch off a terminal


def test_unknown_scheduler_lists_the_available_ones():
    result = run_cli("--scheduler", "cosine_annealing_typo", "--epochs", "1")
    assert result.returncode == 2
    assert "warmup_cosine" in result.stderr and "reduce_on_plateau" in result.stderr


def write_npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (40, 28, 28)).astype(np.uint8),
        "y_train": rng.integers(0, 10, 40),
        "x_test": rng.integers(0, 256, (10, 28, 28)).astype(np.uint8),
        "y_test": rng.integers(0, 10, 10),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_mnist_style_file_trains_the_784_input_network(tmp_path):
    path = write_npz(tmp_path / "mnist.npz")
    data = load_npz(path)
    assert data.num_features == 784 and data.x_train.max() <= 1.0
    assert len(data.x_train) + len(data.x_val) == 40
    result = train(data, TrainConfig(epochs=1, batch_size=8))
    assert 0.0 <= result.test_accuracy <= 1.0


x_nan = np.zeros((10, 28, 28))
x_nan[3, 1, 2] = np.nan


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"y_test": None}, r"missing array\(s\) \['y_test'\]"),
        ({"y_train": np.zeros(39, np.int64)}, "x_train has 40 examples but y_train has 39 labels"),
        ({"y_test": np.full(10, 10)}, r"y_test labels must be in \[0, 10\)"),
        ({"y_train": np.full(40, -1)}, r"y_train labels must be in \[0, 10\)"),
        ({"y_train": np.full(40, 0.5)}, "y_train labels must be integers"),
        ({"x_test": x_nan}, "x_test has NaN or infinite pixels in 1 example"),
    ],
)
def test_bad_data_file_is_rejected_before_training(tmp_path, overrides, message):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ValueError, match=message):
        load_npz(path, num_classes=10)
    result = run_cli("--data", str(path), "--classes", "10", "--epochs", "1")
    assert result.returncode == 2
    assert "error:" in result.stderr and "epoch" not in result.stderr


@pytest.mark.parametrize(
    "kwargs", [dict(epochs=0), dict(batch_size=1), dict(hidden=-3), dict(dtype="float16")]
)
def test_bad_configuration_is_rejected(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


class _Optimizer:
    lr = 0.0
    momentum = 0.0


def test_one_cycle_takes_lr_as_its_peak_and_the_run_as_its_length():
    from bnsgd_numba.nn.training import make_scheduler

    schedule = make_scheduler(TrainConfig(epochs=2, lr=0.5, scheduler="one_cycle"), 10)
    assert schedule.max_lr == 0.5 and schedule.total_steps == 20
    assert schedule.lr_at(0) == pytest.approx(0.5 / 25)
    assert max(schedule.lr_at(step) for step in range(21)) == pytest.approx(0.5)


def test_epoch_unit_steps_the_schedule_once_per_epoch():
    from bnsgd_numba.nn.training import make_scheduler

    config = TrainConfig(
        epochs=3, scheduler="step", scheduler_params={"step_size": 1}, schedule_unit="epoch"
    )
    optimizer = _Optimizer()
    schedule = make_scheduler(config, 4).bind(optimizer)
    rates = [optimizer.lr]
    for _ in range(12):
        schedule.step()
        rates.append(optimizer.lr)
    expected = [0.1] * 4 + [0.01] * 4 + [0.001] * 4 + [0.0001]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert [schedule.lr_at(step) for step in range(13)] == pytest.approx(expected, rel=1e-12)
    # the lengths it fills in count epochs: cosine's T_max is the 3 epochs
    cosine = make_scheduler(TrainConfig(epochs=3, scheduler="cosine", schedule_unit="epoch"), 4)
    assert cosine.schedule.T_max == 3
    with pytest.raises(ValueError, match="schedule_unit"):
        TrainConfig(schedule_unit="batch")


def _blas_threads():
    # {library path: threads} of the BLAS libraries loaded so far (NumPy's
    # among them; another, such as SciPy's, may load during a run)
    from threadpoolctl import threadpool_info

    return {
        pool["filepath"]: pool["num_threads"]
        for pool in threadpool_info()
        if pool["user_api"] == "blas"
    }


@pytest.mark.parametrize(
    "setting,limited",
    [("auto", True), (1, True), (None, False)],  # None: BLAS's own setting, untouched
)
def test_the_steps_run_under_the_blas_limit_and_evaluation_without_it(digits, setting, limited):
    before = _blas_threads()
    if not before:
        pytest.skip("threadpoolctl finds no BLAS library in this process")
    steps, epochs = [], []

    def loaded_before(threads):
        return {path: threads[path] for path in before}

    result = train(
        digits,
        TrainConfig(epochs=2, blas_threads=setting),
        on_step=lambda step, loss: steps.append(loaded_before(_blas_threads())),
        on_epoch=lambda record: epochs.append(loaded_before(_blas_threads())),
    )
    assert len(steps) > 0
    expected = dict.fromkeys(before, 1) if limited else before
    assert all(threads == expected for threads in steps)
    # evaluation after each epoch, and everything after train(), under BLAS's setting
    assert epochs == [before, before]
    assert loaded_before(_blas_threads()) == before
    assert result.test_accuracy > 0.5


def test_the_blas_limit_is_lifted_when_a_step_fails(digits):
    before = _blas_threads()
    if not before:
        pytest.skip("threadpoolctl finds no BLAS library in this process")

    def fail(step, loss):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        train(digits, TrainConfig(epochs=1, blas_threads=1), on_step=fail)
    assert {path: _blas_threads()[path] for path in before} == before


def test_auto_limits_small_steps_only():
    from contextlib import nullcontext

    from bnsgd_numba.nn.training import BLAS_SMALL_STEP, blas_limit

    seed_step = TrainConfig(batch_size=32)  # 32 x 784 x 64: 1.6 million multiply-adds
    assert 32 * 784 * 64 < BLAS_SMALL_STEP <= 128 * 784 * 64
    seed_limit = blas_limit(seed_step, 784)  # in force from here: lifted by the with
    with seed_limit:
        assert not isinstance(seed_limit, nullcontext)
    assert isinstance(blas_limit(TrainConfig(batch_size=128), 784), nullcontext)
    assert isinstance(blas_limit(TrainConfig(blas_threads=None), 784), nullcontext)


@pytest.mark.parametrize("value", [0, -1, True, 1.0, "two", ""])
def test_bad_blas_threads_are_rejected_by_name(value):
    with pytest.raises(ValueError, match="blas_threads"):
        TrainConfig(blas_threads=value)


def test_command_line_takes_blas_threads(tmp_path):
    ok = run_cli("--epochs", "1", "--blas-threads", "keep", "--json", str(tmp_path / "a"))
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("--epochs", "1", "--blas-threads", "0")
    assert bad.returncode == 2
    assert "--blas-threads" in bad.stderr and "expected auto, keep or an integer" in bad.stderr
