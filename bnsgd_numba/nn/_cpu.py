"""CPU kernels of the network's small layers: the loss and the ReLU gradient.

At the seed's sizes (a batch of 32 rows of 10 logits, 32 x 64 activations)
one compiled pass costs less than the NumPy temporaries it replaces. Both
kernels are serial: the arrays are far below the size where a thread pool
pays off. ``np.float64(v)`` widens a float32 value: numba types ``float(v)``
as float32.
"""

from __future__ import annotations

import math

import numpy as np

from bnsgd_numba._core.compile import cpu_kernel


@cpu_kernel()
def softmax_cross_entropy_rows(logits, labels, grad, write_grad):
    """Sum over rows of -log softmax(logits)[label], rows predicted right, first bad label.

    Returns ``(loss_sum, correct, bad)``. ``bad`` is the index of the first
    label outside [0, classes), or -1; when there is one, nothing else is
    computed and ``grad`` is left alone. Each row is shifted by its maximum
    and its log-normalizer summed in float64. With ``write_grad``, ``grad``
    receives ``(softmax(logits) - onehot(labels)) / rows`` in its dtype.
    """
    rows, classes = logits.shape
    for i in range(rows):
        if labels[i] < 0 or labels[i] >= classes:
            return 0.0, 0, i
    cast = grad.dtype.type
    total = 0.0
    correct = 0
    for i in range(rows):
        label = labels[i]
        top = logits[i, 0]
        best = 0
        for j in range(1, classes):
            if logits[i, j] > top:
                top = logits[i, j]
                best = j
        shift = np.float64(top)
        norm = 0.0
        for j in range(classes):
            norm += math.exp(np.float64(logits[i, j]) - shift)
        log_norm = math.log(norm)
        total += log_norm - (np.float64(logits[i, label]) - shift)
        if best == label:
            correct += 1
        if write_grad:
            for j in range(classes):
                p = math.exp(np.float64(logits[i, j]) - shift - log_norm)
                if j == label:
                    p -= 1.0
                grad[i, j] = cast(p / rows)
    return total, correct, -1


@cpu_kernel()
def relu_backward(dy, y, out):
    """out = dy where y > 0, else 0 (y is the ReLU's output)."""
    rows, columns = dy.shape
    zero = out.dtype.type(0)
    for i in range(rows):
        for j in range(columns):
            out[i, j] = dy[i, j] if y[i, j] > zero else zero
