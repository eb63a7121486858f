"""The seed's network on the GPU: ``train(device="cuda")``, ``bnsgd-numba train --device cuda``.

:func:`bnsgd_numba.nn.training.train` runs the same loop (weights, batch order,
schedule) with a :class:`DeviceRunner`: the layers run ``@cuda.jit`` kernels
(BatchNorm and the SGD step from the GPU modules, dense layers, ReLU and the
loss from :mod:`bnsgd_numba.nn._cuda`) over one
:class:`~bnsgd_numba.sgd._cuda_driver.DeviceParameterArena`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bnsgd_numba._core import cuda as backend
from bnsgd_numba.nn.data import Dataset
from bnsgd_numba.nn.layers import Dense, ReLU

_BLOCK_2D = (8, 8)


def _grid_2d(rows: int, columns: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return (math.ceil(rows / _BLOCK_2D[0]), math.ceil(columns / _BLOCK_2D[1])), _BLOCK_2D


def _grid_1d(size: int) -> tuple[int, int]:
    threads = 32
    return max(1, math.ceil(size / threads)), threads


class GpuDense:
    """:class:`~bnsgd_numba.nn.layers.Dense` on device arrays (views into a device arena)."""

    def __init__(self, weight: Any, bias: Any, grad_weight: Any, grad_bias: Any) -> None:
        self.weight, self.bias = weight, bias
        self.grad_weight, self.grad_bias = grad_weight, grad_bias
        self._x: Any = None

    def forward(self, x: Any, training: bool = True) -> Any:
        """x @ weight + bias."""
        from bnsgd_numba.nn import _cuda

        self._x = x
        out = backend.device_empty((x.shape[0], self.weight.shape[1]), self.weight.dtype)
        blocks, threads = _grid_2d(*out.shape)
        _cuda.matmul[blocks, threads](x, self.weight, out, False, False)
        _cuda.add_row[blocks, threads](out, self.bias)
        return out

    def backward(self, dy: Any) -> Any:
        """Write grad_weight = x.T @ dy, grad_bias = sum(dy); return dy @ weight.T."""
        from bnsgd_numba.nn import _cuda

        blocks, threads = _grid_2d(*self.grad_weight.shape)
        _cuda.matmul[blocks, threads](self._x, dy, self.grad_weight, True, False)
        blocks1, threads1 = _grid_1d(self.grad_bias.shape[0])
        _cuda.column_sums[blocks1, threads1](dy, self.grad_bias)
        dx = backend.device_empty(self._x.shape, dy.dtype)
        blocks, threads = _grid_2d(*dx.shape)
        _cuda.matmul[blocks, threads](dy, self.weight, dx, False, True)
        return dx


class GpuReLU:
    """:class:`~bnsgd_numba.nn.layers.ReLU` on device arrays."""

    def __init__(self) -> None:
        self._mask: Any = None

    def forward(self, x: Any, training: bool = True) -> Any:
        """max(x, 0)."""
        from bnsgd_numba.nn import _cuda

        y = backend.device_empty(x.shape, x.dtype)
        self._mask = backend.device_empty(x.shape, x.dtype)
        blocks, threads = _grid_2d(*x.shape)
        _cuda.relu_forward[blocks, threads](x, y, self._mask)
        return y

    def backward(self, dy: Any) -> Any:
        """dy where the input was positive."""
        from bnsgd_numba.nn import _cuda

        dx = backend.device_empty(dy.shape, dy.dtype)
        blocks, threads = _grid_2d(*dy.shape)
        _cuda.relu_backward[blocks, threads](dy, self._mask, dx)
        return dx


def _loss(logits: Any, labels: Any) -> tuple[float, Any, np.ndarray]:
    from bnsgd_numba.nn import _cuda

    rows = logits.shape[0]
    losses = backend.device_empty((rows,), np.float64)
    grad = backend.device_empty(logits.shape, logits.dtype)
    predictions = backend.device_empty((rows,), np.int64)
    blocks, threads = _grid_1d(rows)
    _cuda.softmax_cross_entropy[blocks, threads](logits, labels, losses, grad, predictions)
    return float(losses.copy_to_host().mean()), grad, predictions.copy_to_host()


class DeviceRunner:
    """Runs the network's steps on the GPU; the twin of ``training.HostRunner``.

    The host network's values move to one device arena (BatchNorm layers
    with ``to_device``, dense layers as :class:`GpuDense` over the arena's
    views). Only batch indices' rows go to the device each step, and only
    the per-row losses and predictions come back.
    """

    def __init__(self, model: Any, data: Dataset, dtype: np.dtype) -> None:
        backend.require_cuda("train(device='cuda')")
        self.host = model
        self.layers, self.arena = _device_network(model)
        self.labels = {"train": data.y_train, "val": data.y_val, "test": data.y_test}
        self.train_inputs = np.ascontiguousarray(data.x_train, dtype=dtype)
        self.device_inputs = {
            "val": backend.to_device(np.ascontiguousarray(data.x_val, dtype=dtype)),
            "test": backend.to_device(np.ascontiguousarray(data.x_test, dtype=dtype)),
        }

    def forward_backward(self, index: np.ndarray) -> tuple[float, int]:
        """Forward and backward on the training examples ``index``: (loss, correct)."""
        labels = self.labels["train"][index]
        logits = _forward(self.layers, backend.to_device(self.train_inputs[index]), True)
        loss, grad, predictions = _loss(logits, backend.to_device(labels))
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return loss, int(np.sum(predictions == labels))

    def evaluate(self, split: str) -> tuple[float, float]:
        """Loss and accuracy on ``split`` ("val" or "test") in eval mode."""
        logits = _forward(self.layers, self.device_inputs[split], False)
        labels = self.labels[split]
        loss, _, predictions = _loss(logits, backend.to_device(labels))
        return loss, float(np.mean(predictions == labels))

    def finish(self) -> Any:
        """Copy the trained values back into the host network and return it."""
        from bnsgd_numba.batch_norm.layer import BatchNorm

        host = self.host
        host.arena.flat_params[...] = self.arena.flat_params.copy_to_host()
        index = 0
        for layer in host.layers:
            if isinstance(layer, BatchNorm):
                # its parameters are device views of the arena: detach them,
                # bring the running statistics home, point back at the host arena
                layer.weight = layer.bias = layer.grad_weight = layer.grad_bias = None
                layer.to_host()
                layer.weight, layer.bias = host.arena.params[index], host.arena.params[index + 1]
                layer.grad_weight = host.arena.grads[index]
                layer.grad_bias = host.arena.grads[index + 1]
            index += 2 if isinstance(layer, (BatchNorm, Dense)) else 0
        return host


def _device_network(host: Any) -> tuple[list[Any], Any]:
    """Move a host :class:`~bnsgd_numba.nn.layers.Sequential` to the GPU; return layers and arena."""
    from bnsgd_numba.batch_norm.layer import BatchNorm
    from bnsgd_numba.sgd.arena import DeviceParameterArena

    arena = DeviceParameterArena.from_host(host.arena)
    layers = []
    index = 0
    for layer in host.layers:
        if isinstance(layer, BatchNorm):
            layer.to_device()
            layer.weight, layer.bias = arena.params[index], arena.params[index + 1]
            layer.grad_weight, layer.grad_bias = arena.grads[index], arena.grads[index + 1]
            layers.append(layer)
            index += 2
        elif isinstance(layer, Dense):
            layers.append(
                GpuDense(
                    arena.params[index],
                    arena.params[index + 1],
                    arena.grads[index],
                    arena.grads[index + 1],
                )  # fmt: skip
            )
            index += 2
        elif isinstance(layer, ReLU):
            layers.append(GpuReLU())
        else:
            raise TypeError(f"no GPU version of {type(layer).__name__}")
    return layers, arena


def _forward(layers: list[Any], x: Any, training: bool) -> Any:
    for layer in layers:
        x = layer.forward(x, training)
    return x
