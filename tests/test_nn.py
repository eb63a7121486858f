"""Dense, ReLU and softmax cross-entropy: gradients against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from bnsgd_numba.nn import Dense, ReLU, Sequential, softmax_cross_entropy


def numeric_gradient(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + h
        up = f()
        x[index] = saved - h
        down = f()
        x[index] = saved
        grad[index] = (up - down) / (2 * h)
    return grad


def test_dense_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    layer = Dense(4, 3, dtype=np.float64, rng=rng)
    x = rng.normal(size=(5, 4))
    r = rng.normal(size=(5, 3))
    layer.forward(x)
    dx = layer.backward(r)
    loss = lambda: float(np.sum(layer.forward(x) * r))  # noqa: E731
    np.testing.assert_allclose(dx, numeric_gradient(loss, x), rtol=1e-7, atol=1e-9)
    analytic_w, analytic_b = layer.grad_weight.copy(), layer.grad_bias.copy()
    np.testing.assert_allclose(
        analytic_w, numeric_gradient(loss, layer.weight), rtol=1e-7, atol=1e-9
    )
    np.testing.assert_allclose(analytic_b, numeric_gradient(loss, layer.bias), rtol=1e-7, atol=1e-9)


def test_relu_passes_gradient_where_positive():
    relu = ReLU()
    y = relu.forward(np.array([[-1.0, 0.0, 2.0]]))
    np.testing.assert_array_equal(y, [[0.0, 0.0, 2.0]])
    np.testing.assert_array_equal(relu.backward(np.array([[5.0, 5.0, 5.0]])), [[0.0, 0.0, 5.0]])


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_softmax_cross_entropy_value_and_gradient(scale):
    rng = np.random.default_rng(1)
    logits = scale * rng.normal(size=(6, 4))
    labels = rng.integers(0, 4, 6)
    loss, grad = softmax_cross_entropy(logits, labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    expected = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(6), labels])
    assert np.isfinite(loss) and abs(loss - expected) <= 1e-12 * max(1.0, abs(expected))
    if scale == 1.0:
        f = lambda: softmax_cross_entropy(logits, labels)[0]  # noqa: E731
        np.testing.assert_allclose(grad, numeric_gradient(f, logits), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-15)


def test_sequential_keeps_parameters_and_gradients_in_one_arena():
    rng = np.random.default_rng(2)
    first = Dense(3, 2, dtype=np.float64, rng=rng)
    weight = first.weight.copy()
    model = Sequential([first, ReLU(), Dense(2, 2, dtype=np.float64, rng=rng)], dtype=np.float64)
    assert np.shares_memory(first.weight, model.arena.flat_params)
    np.testing.assert_array_equal(first.weight, weight)
    x = rng.normal(size=(4, 3))
    model.backward(np.ones_like(model.forward(x)))
    assert np.shares_memory(first.grad_weight, model.arena.flat_grads)
    assert np.any(model.arena.flat_grads != 0)
