"""Training the seed's network on the GPU: ``bnsgd-numba train --device cuda``.

The same network, initial weights, batch order and schedule as
:func:`bnsgd_numba.training.train`; the layers run ``@cuda.jit`` kernels
(BatchNorm and the SGD step from the GPU modules, dense layers, ReLU and the
loss from :mod:`bnsgd_numba._nn_gpu`) over one
:class:`~bnsgd_numba.gpu_sgd.DeviceParameterArena`. Only the batch indices
go to the device and the per-row losses and predictions come back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bnsgd_numba import _cuda_backend as backend
from bnsgd_numba.data import Dataset
from bnsgd_numba.nn import Dense, ReLU
from bnsgd_numba.training import (
    EpochRecord,
    TrainConfig,
    TrainResult,
    batch_order_rng,
    build_network,
    make_scheduler,
)

_BLOCK_2D = (8, 8)


def _grid_2d(rows: int, columns: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return (math.ceil(rows / _BLOCK_2D[0]), math.ceil(columns / _BLOCK_2D[1])), _BLOCK_2D


def _grid_1d(size: int) -> tuple[int, int]:
    threads = 32
    return max(1, math.ceil(size / threads)), threads


class GpuDense:
    """:class:`~bnsgd_numba.nn.Dense` on device arrays (views into a device arena)."""

    def __init__(self, weight: Any, bias: Any, grad_weight: Any, grad_bias: Any) -> None:
        self.weight, self.bias = weight, bias
        self.grad_weight, self.grad_bias = grad_weight, grad_bias
        self._x: Any = None

    def forward(self, x: Any, training: bool = True) -> Any:
        """x @ weight + bias."""
        from bnsgd_numba import _nn_gpu

        self._x = x
        out = backend.device_empty((x.shape[0], self.weight.shape[1]), self.weight.dtype)
        blocks, threads = _grid_2d(*out.shape)
        _nn_gpu.matmul[blocks, threads](x, self.weight, out, False, False)
        _nn_gpu.add_row[blocks, threads](out, self.bias)
        return out

    def backward(self, dy: Any) -> Any:
        """Write grad_weight = x.T @ dy, grad_bias = sum(dy); return dy @ weight.T."""
        from bnsgd_numba import _nn_gpu

        blocks, threads = _grid_2d(*self.grad_weight.shape)
        _nn_gpu.matmul[blocks, threads](self._x, dy, self.grad_weight, True, False)
        blocks1, threads1 = _grid_1d(self.grad_bias.shape[0])
        _nn_gpu.column_sums[blocks1, threads1](dy, self.grad_bias)
        dx = backend.device_empty(self._x.shape, dy.dtype)
        blocks, threads = _grid_2d(*dx.shape)
        _nn_gpu.matmul[blocks, threads](dy, self.weight, dx, False, True)
        return dx


class GpuReLU:
    """:class:`~bnsgd_numba.nn.ReLU` on device arrays."""

    def __init__(self) -> None:
        self._mask: Any = None

    def forward(self, x: Any, training: bool = True) -> Any:
        """max(x, 0)."""
        from bnsgd_numba import _nn_gpu

        y = backend.device_empty(x.shape, x.dtype)
        self._mask = backend.device_empty(x.shape, x.dtype)
        blocks, threads = _grid_2d(*x.shape)
        _nn_gpu.relu_forward[blocks, threads](x, y, self._mask)
        return y

    def backward(self, dy: Any) -> Any:
        """dy where the input was positive."""
        from bnsgd_numba import _nn_gpu

        dx = backend.device_empty(dy.shape, dy.dtype)
        blocks, threads = _grid_2d(*dy.shape)
        _nn_gpu.relu_backward[blocks, threads](dy, self._mask, dx)
        return dx


def _loss(logits: Any, labels: Any) -> tuple[float, Any, np.ndarray]:
    from bnsgd_numba import _nn_gpu

    rows = logits.shape[0]
    losses = backend.device_empty((rows,), np.float64)
    grad = backend.device_empty(logits.shape, logits.dtype)
    predictions = backend.device_empty((rows,), np.int64)
    blocks, threads = _grid_1d(rows)
    _nn_gpu.softmax_cross_entropy[blocks, threads](logits, labels, losses, grad, predictions)
    return float(losses.copy_to_host().mean()), grad, predictions.copy_to_host()


def _device_network(host: Any) -> tuple[list[Any], Any]:
    """Move a host :class:`~bnsgd_numba.nn.Sequential` to the GPU; return layers and arena."""
    from bnsgd_numba.batch_norm_layer import BatchNorm
    from bnsgd_numba.gpu_sgd import DeviceParameterArena

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


def _evaluate(layers: list[Any], x: Any, labels: np.ndarray) -> tuple[float, float]:
    logits = _forward(layers, x, False)
    loss, _, predictions = _loss(logits, backend.to_device(labels))
    return loss, float(np.mean(predictions == labels))


def train_on_gpu(
    data: Dataset,
    config: TrainConfig,
    *,
    on_batch: Callable[[int, int, int, float, float], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """:func:`bnsgd_numba.training.train` with every layer on the GPU.

    Returns
    -------
    TrainResult
        Its ``model`` is the host network holding the trained values.
    """
    from bnsgd_numba.batch_norm_layer import BatchNorm
    from bnsgd_numba.sgd_optimizer import SGD

    backend.require_cuda("train(device='cuda')")
    start = time.perf_counter()
    dtype = np.dtype(config.dtype)
    host = build_network(
        data.num_features, data.num_classes, config, np.random.default_rng(config.seed)
    )
    layers, arena = _device_network(host)
    x_val = backend.to_device(np.ascontiguousarray(data.x_val, dtype=dtype))
    x_test = backend.to_device(np.ascontiguousarray(data.x_test, dtype=dtype))
    order_rng = batch_order_rng(config.seed)
    n = len(data.x_train)
    batches = n // config.batch_size + (1 if n % config.batch_size >= 2 else 0)
    optimizer = SGD(arena, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = make_scheduler(config, batches).bind(optimizer)
    records = []
    host_x = np.ascontiguousarray(data.x_train, dtype=dtype)  # batches gathered on the host
    for epoch in range(1, config.epochs + 1):
        order = order_rng.permutation(n)
        total_loss, correct, seen, lr_sum = 0.0, 0, 0, 0.0
        for b in range(batches):
            index = order[b * config.batch_size : (b + 1) * config.batch_size]
            labels = data.y_train[index]
            logits = _forward(layers, backend.to_device(host_x[index]), True)
            loss, grad, predictions = _loss(logits, backend.to_device(labels))
            for layer in reversed(layers):
                grad = layer.backward(grad)
            lr_sum += optimizer.lr
            optimizer.step()
            if on_step is not None:
                on_step(optimizer.steps, loss)
            if not scheduler.requires_metric:
                scheduler.step()
            total_loss += loss * len(index)
            correct += int(np.sum(predictions == labels))
            seen += len(index)
            if on_batch is not None:
                on_batch(epoch, b + 1, batches, total_loss / seen, correct / seen)
        val_loss, val_accuracy = _evaluate(layers, x_val, data.y_val)
        if scheduler.requires_metric:
            scheduler.step(val_loss)
        record = EpochRecord(
            epoch, total_loss / seen, correct / seen, val_loss, val_accuracy, lr_sum / batches
        )
        records.append(record)
        if on_epoch is not None:
            on_epoch(record)
    test_loss, test_accuracy = _evaluate(layers, x_test, data.y_test)
    host.arena.flat_params[...] = arena.flat_params.copy_to_host()
    for layer in host.layers:
        if isinstance(layer, BatchNorm):
            layer.weight = layer.bias = layer.grad_weight = layer.grad_bias = None
            layer.to_host()
    _rebind_host_parameters(host)
    return TrainResult(config, records, test_loss, test_accuracy, time.perf_counter() - start, host)


def _rebind_host_parameters(host: Any) -> None:
    # the BatchNorm layers left the arena's views when they moved to the GPU
    from bnsgd_numba.batch_norm_layer import BatchNorm

    index = 0
    for layer in host.layers:
        count = len(layer.parameters()) if not isinstance(layer, BatchNorm) else 2
        if isinstance(layer, BatchNorm):
            layer.weight, layer.bias = host.arena.params[index], host.arena.params[index + 1]
            layer.grad_weight, layer.grad_bias = (
                host.arena.grads[index],
                host.arena.grads[index + 1],
            )
        index += count
