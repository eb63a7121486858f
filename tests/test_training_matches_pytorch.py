"""Training the seed's network with bnsgd_numba and with PyTorch gives the same numbers.

Same float64 initial weights, same batch order, 50 steps of SGD with
momentum under CosineAnnealingLR: the per-step losses agree to 1e-8
relative, the final weights and running statistics to 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnsgd_numba.nn.data import Dataset, load_digits
from bnsgd_numba.nn.training import TrainConfig, batch_order_rng, build_network, train


@pytest.fixture(scope="module")
def small_digits():
    digits = load_digits()
    return Dataset(
        digits.x_train[:400], digits.y_train[:400], digits.x_val, digits.y_val,
        digits.x_test, digits.y_test, num_classes=10, name="digits, 400 training examples",
    )  # fmt: skip


def torch_network(ours):
    bn1, dense1, _, bn2, dense2 = ours.layers
    net = torch.nn.Sequential(
        torch.nn.BatchNorm1d(bn1.num_features, dtype=torch.float64),
        torch.nn.Linear(*dense1.weight.shape, dtype=torch.float64),
        torch.nn.ReLU(),
        torch.nn.BatchNorm1d(bn2.num_features, dtype=torch.float64),
        torch.nn.Linear(*dense2.weight.shape, dtype=torch.float64),
    )
    with torch.no_grad():
        for index, dense in ((1, dense1), (4, dense2)):
            net[index].weight.copy_(torch.from_numpy(dense.weight.T.copy()))
            net[index].bias.copy_(torch.from_numpy(dense.bias.copy()))
    return net


def test_fifty_steps_agree_with_pytorch(small_digits):
    config = TrainConfig(
        epochs=1, batch_size=8, lr=0.05, momentum=0.9, scheduler="cosine",
        scheduler_params={"T_max": 50}, seed=3, dtype="float64",
    )  # fmt: skip
    reference = build_network(64, 10, config, np.random.default_rng(config.seed))
    net = torch_network(reference)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, foreach=False,
    )  # fmt: skip
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=50)
    order = batch_order_rng(config.seed).permutation(len(small_digits.x_train))
    torch_losses = []
    for step in range(50):
        index = order[step * 8 : (step + 1) * 8]
        x = torch.from_numpy(small_digits.x_train[index].astype(np.float64))
        y = torch.from_numpy(small_digits.y_train[index])
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        torch_losses.append(loss.item())

    our_losses = []
    result = train(small_digits, config, on_step=lambda step, loss: our_losses.append(loss))
    assert len(our_losses) == 50
    np.testing.assert_allclose(our_losses, torch_losses, rtol=1e-8)
    bn1, dense1, _, bn2, dense2 = result.model.layers
    pairs = [
        (dense1.weight, net[1].weight.T), (dense1.bias, net[1].bias),
        (dense2.weight, net[4].weight.T), (dense2.bias, net[4].bias),
        (bn1.weight, net[0].weight), (bn1.bias, net[0].bias),
        (bn2.weight, net[3].weight), (bn2.bias, net[3].bias),
        (bn1.running_mean, net[0].running_mean), (bn1.running_var, net[0].running_var),
        (bn2.running_mean, net[3].running_mean), (bn2.running_var, net[3].running_var),
    ]  # fmt: skip
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-6, atol=1e-9)
