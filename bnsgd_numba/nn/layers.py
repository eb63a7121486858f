"""A small set of layers for the seed document's network, with forward and backward.

``Dense`` (NumPy matmul), ``ReLU``, ``softmax_cross_entropy`` and a
``Sequential`` container whose parameters live in one
:class:`~bnsgd_numba.ParameterArena`, so :class:`~bnsgd_numba.SGD` updates
the whole model in one fused kernel call. :class:`~bnsgd_numba.BatchNorm`
fits in as a layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bnsgd_numba.sgd.arena import ParameterArena


class Dense:
    """Fully connected layer, y = x @ weight + bias.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output.
    dtype : float32 or float64
    rng : numpy.random.Generator, optional
        Draws the initial weight (Glorot uniform, Keras' default:
        U(-a, a) with a = sqrt(6 / (in + out))); bias starts at 0.

    Notes
    -----
    ``weight`` has shape (in_features, out_features): PyTorch's
    ``nn.Linear.weight`` is its transpose.
    """

    def __init__(
        self, in_features: int, out_features: int, *, dtype: Any = np.float32, rng: Any = None
    ) -> None:
        rng = np.random.default_rng() if rng is None else rng
        limit = np.sqrt(6.0 / (in_features + out_features))
        self.weight = rng.uniform(-limit, limit, (in_features, out_features)).astype(dtype)
        self.bias = np.zeros(out_features, dtype)
        self.grad_weight = np.zeros_like(self.weight)
        self.grad_bias = np.zeros_like(self.bias)
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """Return x @ weight + bias."""
        self._x = x
        return x @ self.weight + self.bias

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Write grad_weight = x.T @ dy and grad_bias = sum(dy); return dy @ weight.T."""
        if self._x is None:
            raise RuntimeError("backward() called before forward()")
        np.matmul(self._x.T, dy, out=self.grad_weight)
        np.sum(dy, axis=0, out=self.grad_bias)
        return dy @ self.weight.T

    def parameters(self) -> list[np.ndarray]:
        """Return ``[weight, bias]``."""
        return [self.weight, self.bias]

    def gradients(self) -> list[np.ndarray]:
        """Return ``[grad_weight, grad_bias]``."""
        return [self.grad_weight, self.grad_bias]


class ReLU:
    """y = max(x, 0); the gradient passes where x > 0."""

    def __init__(self) -> None:
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """Return max(x, 0)."""
        self._mask = x > 0
        return np.where(self._mask, x, 0).astype(x.dtype, copy=False)

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Return dy where the input was positive, 0 elsewhere."""
        if self._mask is None:
            raise RuntimeError("backward() called before forward()")
        return np.where(self._mask, dy, 0).astype(dy.dtype, copy=False)

    def parameters(self) -> list[np.ndarray]:
        """A ReLU has no parameters."""
        return []

    def gradients(self) -> list[np.ndarray]:
        """A ReLU has no gradients."""
        return []


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    Parameters
    ----------
    logits : ndarray of shape (N, K)
    labels : integer ndarray of shape (N,), values in [0, K)

    Returns
    -------
    loss : float
        mean over the batch of -log softmax(logits)[label].
    grad : ndarray of shape (N, K)
        (softmax(logits) - onehot(labels)) / N.

    Notes
    -----
    log-softmax is computed as z - max(z) - log(sum(exp(z - max(z)))), which
    neither overflows nor loses the small probabilities.
    """
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_norm
    rows = np.arange(n)
    loss = float(-log_probs[rows, labels].astype(np.float64).mean())
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1
    grad /= n
    return loss, grad.astype(logits.dtype, copy=False)


class Sequential:
    """Layers applied in order, their parameters gathered into one arena.

    Parameters
    ----------
    layers : sequence of layers
        Each has ``forward(x, training)``, ``backward(dy)``, ``parameters()``
        and ``gradients()`` (``BatchNorm``, ``Dense``, ``ReLU``).
    dtype : float32 or float64

    Attributes
    ----------
    arena : ParameterArena
        Holds every parameter and gradient; the layers' arrays are views
        into it (their initial values are copied in).
    """

    def __init__(self, layers: Sequence[Any], *, dtype: Any = np.float32) -> None:
        self.layers = list(layers)
        owned = [(layer, i) for layer in self.layers for i in range(len(layer.parameters()))]
        initial = [layer.parameters()[i] for layer, i in owned]
        self.arena = ParameterArena([p.shape for p in initial], dtype=dtype)
        for (layer, i), value, param, grad in zip(
            owned, initial, self.arena.params, self.arena.grads, strict=True
        ):
            param[...] = value
            _rebind(layer, i, param, grad)

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """Run every layer's forward."""
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Run every layer's backward in reverse, filling the arena's gradients."""
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def state(self) -> list[np.ndarray]:
        """Copies of the parameters and of the layers' running statistics."""
        copies = [p.copy() for p in self.arena.params]
        for layer in self.layers:
            for name in ("running_mean", "running_var"):
                if getattr(layer, name, None) is not None:
                    copies.append(getattr(layer, name).copy())
        return copies


def _rebind(layer: Any, index: int, param: np.ndarray, grad: np.ndarray) -> None:
    # parameters() and gradients() list (weight, bias) in that order
    names = ("weight", "bias")
    setattr(layer, names[index], param)
    setattr(layer, "grad_" + names[index], grad)
