"""The seed's example: linear regression by mini-batch SGD recovers y = 3x + 1."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from bnsgd_numba.cli import main
from bnsgd_numba.examples.linear_regression import fit_linear_regression, make_data


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_slope_and_intercept_within_0_1(seed):
    result = fit_linear_regression(seed=seed)
    assert abs(result.slope - 3.0) < 0.1
    assert abs(result.intercept - 1.0) < 0.1
    # SGD lands near the least-squares fit of the same data
    assert abs(result.slope - result.least_squares_slope) < 0.05
    assert abs(result.intercept - result.least_squares_intercept) < 0.05
    # the training loss ends within 1% of the least-squares minimum
    x, y = make_data(20_000, seed=seed)
    residual = result.least_squares_slope * x + result.least_squares_intercept - y
    assert result.epoch_losses[-1] <= 1.01 * np.mean(residual**2)


def test_float32_parameters_also_converge():
    result = fit_linear_regression(dtype=np.float32, epochs=10)
    assert abs(result.slope - 3.0) < 0.1 and abs(result.intercept - 1.0) < 0.1


def test_same_seed_same_bits_other_seed_other_result():
    a, b = fit_linear_regression(seed=4, epochs=3), fit_linear_regression(seed=4, epochs=3)
    assert (a.slope, a.intercept, a.epoch_losses) == (b.slope, b.intercept, b.epoch_losses)
    assert fit_linear_regression(seed=5, epochs=3).slope != a.slope


def test_data_follow_the_seed_formula():
    x, y = make_data(50_000, noise=0.0, seed=3)
    assert 0.0 <= x.min() and x.max() < 1.0
    np.testing.assert_allclose(y, 3 * x + 1, rtol=0, atol=1e-15)


def test_command_line_prints_the_fit(capsys):
    assert main(["linreg", "--epochs", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert abs(result["slope"] - 3.0) < 0.1 and abs(result["intercept"] - 1.0) < 0.1
    assert main(["linreg", "--epochs", "1"]) == 0
    assert "slope" in capsys.readouterr().out


@pytest.mark.parametrize(
    "lr,message",
    [
        (5.0, r"diverged at epoch 1, step \d+: the slope and intercept are inf"),
        (2.0, r"diverged: the mean squared error grew from .* in epoch 1"),
    ],
)
def test_divergence_raises_naming_where_without_numpy_warnings(lr, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FloatingPointError, match=message):
            fit_linear_regression(lr=lr, epochs=3)


def test_command_line_reports_divergence_as_one_line(capsys):
    assert main(["linreg", "--lr", "5", "--epochs", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("bnsgd-numba linreg: error: linear regression diverged")
