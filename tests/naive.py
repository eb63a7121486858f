"""Slow, obviously correct float64 references the kernels are tested against.

Every function moves the channel axis to the front, computes in float64 with
plain NumPy, one channel at a time, and moves it back.
"""

from __future__ import annotations

import numpy as np


def channels_first(x, axis):
    """Return float64 ``x`` as a (C, m) matrix: one row per channel."""
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    return moved.reshape(moved.shape[0], -1)


def from_channels_first(rows, shape, axis):
    """Inverse of :func:`channels_first` for an array of ``shape``."""
    moved_shape = (shape[axis],) + tuple(np.delete(np.array(shape), axis % len(shape)))
    return np.moveaxis(rows.reshape(moved_shape), 0, axis)


def batch_norm_statistics(x, axis=1):
    """Per-channel mean and biased variance, two passes in float64."""
    rows = channels_first(x, axis)
    mean = np.array([row.sum() / row.size for row in rows])
    var = np.array([((row - mu) ** 2).sum() / row.size for row, mu in zip(rows, mean, strict=True)])
    return mean, var


def batch_norm_forward(x, weight=None, bias=None, mean=None, var=None, eps=1e-5, axis=1):
    """y = weight * (x - mean) / sqrt(var + eps) + bias; batch statistics if none given."""
    if mean is None:
        mean, var = batch_norm_statistics(x, axis)
    rows = channels_first(x, axis)
    channels = rows.shape[0]
    w = np.ones(channels) if weight is None else np.asarray(weight, dtype=np.float64)
    b = np.zeros(channels) if bias is None else np.asarray(bias, dtype=np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    out = np.empty_like(rows)
    for c in range(channels):
        out[c] = w[c] * (rows[c] - mean[c]) * invstd[c] + b[c]
    return from_channels_first(out, np.shape(x), axis), np.asarray(mean, np.float64), invstd


def running_statistics(batches, momentum=0.1, axis=1):
    """Running mean/var after training on ``batches`` (PyTorch's convention)."""
    channels = np.shape(batches[0])[axis]
    running_mean, running_var = np.zeros(channels), np.ones(channels)
    for x in batches:
        mean, var = batch_norm_statistics(x, axis)
        m = np.size(x) // channels
        running_mean = (1 - momentum) * running_mean + momentum * mean
        running_var = (1 - momentum) * running_var + momentum * var * m / (m - 1)
    return running_mean, running_var


def batch_norm_backward(dy, x, weight, mean, invstd, training=True, axis=1):
    """(dx, dweight, dbias) by the textbook formulas, in float64."""
    rows = channels_first(x, axis)
    grads = channels_first(dy, axis)
    channels, m = rows.shape
    w = np.ones(channels) if weight is None else np.asarray(weight, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    invstd = np.asarray(invstd, dtype=np.float64)
    dx = np.empty_like(rows)
    dweight = np.empty(channels)
    dbias = np.empty(channels)
    for c in range(channels):
        x_hat = (rows[c] - mean[c]) * invstd[c]
        dbias[c] = grads[c].sum()
        dweight[c] = (grads[c] * x_hat).sum()
        if training:
            dx[c] = w[c] * invstd[c] / m * (m * grads[c] - dbias[c] - x_hat * dweight[c])
        else:
            dx[c] = w[c] * invstd[c] * grads[c]
    return from_channels_first(dx, np.shape(x), axis), dweight, dbias
