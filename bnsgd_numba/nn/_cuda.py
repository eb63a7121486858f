"""CUDA kernels of the small ``nn`` layers: matmul, bias, ReLU, softmax cross-entropy.

One thread per output element, each summing in a fixed order in float64: the
results are bitwise reproducible (no atomics). The sizes of the seed's
network (a few dozen rows, 64 and 10 columns) need nothing cleverer.
"""

from __future__ import annotations

import math

from bnsgd_numba._core.cuda import cuda, gpu_kernel


@gpu_kernel
def matmul(a, b, out, transpose_a, transpose_b):
    """out = op(a) @ op(b), op transposing when asked (2-D arrays)."""
    i, j = cuda.grid(2)
    rows, columns = out.shape
    if i < rows and j < columns:
        inner = a.shape[0] if transpose_a else a.shape[1]
        total = 0.0
        for k in range(inner):
            left = a[k, i] if transpose_a else a[i, k]
            right = b[j, k] if transpose_b else b[k, j]
            total += left * right
        out[i, j] = total


@gpu_kernel
def add_row(out, row):
    """out[i, :] += row, for every i."""
    i, j = cuda.grid(2)
    if i < out.shape[0] and j < out.shape[1]:
        out[i, j] += row[j]


@gpu_kernel
def column_sums(a, out):
    """out[j] = sum over i of a[i, j]."""
    j = cuda.grid(1)
    if j < a.shape[1]:
        total = 0.0
        for i in range(a.shape[0]):
            total += a[i, j]
        out[j] = total


@gpu_kernel
def relu_forward(x, y, mask):
    """y = max(x, 0); mask = x > 0 (as 0/1 in x's dtype)."""
    i, j = cuda.grid(2)
    if i < x.shape[0] and j < x.shape[1]:
        positive = x[i, j] > 0
        mask[i, j] = 1 if positive else 0
        y[i, j] = x[i, j] if positive else 0


@gpu_kernel
def relu_backward(dy, mask, dx):
    """dx = dy where the input was positive, else 0."""
    i, j = cuda.grid(2)
    if i < dy.shape[0] and j < dy.shape[1]:
        dx[i, j] = dy[i, j] if mask[i, j] != 0 else 0


@gpu_kernel
def softmax_cross_entropy(logits, labels, losses, grad, predictions):
    """Per row: loss = -log softmax[label], grad = (softmax - onehot) / rows, argmax."""
    i = cuda.grid(1)
    rows, classes = logits.shape
    if i < rows:
        best = logits[i, 0]
        arg = 0
        for k in range(1, classes):
            if logits[i, k] > best:
                best = logits[i, k]
                arg = k
        total = 0.0
        for k in range(classes):
            total += math.exp(logits[i, k] - best)
        log_norm = math.log(total)
        label = labels[i]
        losses[i] = log_norm - (logits[i, label] - best)
        for k in range(classes):
            p = math.exp(logits[i, k] - best - log_norm)
            grad[i, k] = (p - (1.0 if k == label else 0.0)) / rows
        predictions[i] = arg
