"""``train(device="cuda")`` follows the CPU run: same weights, batches and schedule."""

from __future__ import annotations

import numpy as np
import pytest

from bnsgd_numba.nn.data import Dataset
from bnsgd_numba.nn.training import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_data():
    # few features and classes: the simulator runs one Python thread per CUDA thread
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (28, 6)).astype(np.float32)
    y = rng.integers(0, 3, 28)
    return Dataset(x[:16], y[:16], x[16:22], y[16:22], x[22:], y[22:], num_classes=3, name="tiny")


def test_gpu_training_matches_cpu_training(tiny_data):
    config = TrainConfig(epochs=1, batch_size=8, hidden=4, dtype="float64", scheduler="constant")
    cpu_losses, gpu_losses = [], []
    cpu = train(tiny_data, config, on_step=lambda step, loss: cpu_losses.append(loss))
    gpu = train(
        tiny_data, config, device="cuda", on_step=lambda step, loss: gpu_losses.append(loss)
    )
    assert len(gpu_losses) == len(cpu_losses) == 2
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-10)
    for a, b in zip(gpu.model.state(), cpu.model.state(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert gpu.epochs[0].val_loss == pytest.approx(cpu.epochs[0].val_loss, rel=1e-10)
    assert gpu.test_accuracy == cpu.test_accuracy
    assert isinstance(gpu.model.arena.flat_params, np.ndarray)
