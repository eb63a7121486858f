"""``train(device="cuda")`` follows the CPU run: same weights, batches and schedule."""

from __future__ import annotations

import numpy as np
import pytest

from bnsgd_numba.data import Dataset, load_digits
from bnsgd_numba.training import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_digits():
    d = load_digits()
    return Dataset(
        d.x_train[:24], d.y_train[:24], d.x_val[:8], d.y_val[:8], d.x_test[:8], d.y_test[:8],
        num_classes=10, name="24 digits",
    )  # fmt: skip


def test_gpu_training_matches_cpu_training(tiny_digits):
    config = TrainConfig(epochs=1, batch_size=8, hidden=8, dtype="float64", scheduler="constant")
    cpu_losses, gpu_losses = [], []
    cpu = train(tiny_digits, config, on_step=lambda step, loss: cpu_losses.append(loss))
    gpu = train(
        tiny_digits, config, device="cuda", on_step=lambda step, loss: gpu_losses.append(loss)
    )
    assert len(gpu_losses) == len(cpu_losses) == 3
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-10)
    for a, b in zip(gpu.model.state(), cpu.model.state(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert gpu.test_accuracy == cpu.test_accuracy
    assert isinstance(gpu.model.arena.flat_params, np.ndarray)
