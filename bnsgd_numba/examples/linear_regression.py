"""The seed's example: linear regression ``y = 3x + 1 + noise`` by mini-batch SGD.

The seed document fits ``theta`` to ``X = rand(100, 1)``,
``y = 3 * X + 1 + randn(100, 1)`` by picking random samples and stepping
``theta -= learning_rate * gradients``. Here the same problem is trained with
the library: the slope and the intercept live in a
:class:`~bnsgd_numba.ParameterArena`, NumPy computes the gradient of the mean
squared error on each random mini-batch, and :class:`~bnsgd_numba.SGD` applies
the step. Two things differ from the seed, on purpose: the model has an
intercept (the seed's ``X`` has no column of ones, so it cannot fit the ``+ 1``),
and there are more samples (with 100 points and unit noise the least-squares
slope itself is only known to about +-0.35).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bnsgd_numba.sgd.arena import ParameterArena
from bnsgd_numba.sgd.optimizer import SGD


@dataclass
class LinearRegressionResult:
    """What :func:`fit_linear_regression` learned."""

    slope: float
    intercept: float
    least_squares_slope: float
    least_squares_intercept: float
    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0


def make_data(
    n_samples: int, *, noise: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``x`` uniform in [0, 1) and ``y = 3x + 1 + noise * N(0, 1)``, as float64 vectors."""
    rng = np.random.default_rng(seed)
    x = rng.random(n_samples)
    y = 3.0 * x + 1.0 + noise * rng.standard_normal(n_samples)
    return x, y


def fit_linear_regression(
    *,
    n_samples: int = 20_000,
    batch_size: int = 64,
    epochs: int = 20,
    lr: float = 0.05,
    momentum: float = 0.9,
    noise: float = 1.0,
    seed: int = 0,
    dtype: type = np.float64,
) -> LinearRegressionResult:
    """Fit ``y = w x + b`` by random mini-batch SGD with the library's optimizer.

    Parameters
    ----------
    n_samples, batch_size, epochs : int
        Data size, mini-batch size, passes over the data.
    lr : float
        Initial learning rate; it decays as ``lr / (1 + epoch)`` so the final
        iterate settles instead of wandering with the mini-batch noise.
    momentum : float
        SGD momentum.
    noise : float
        Standard deviation of the noise added to ``3x + 1``.
    seed : int
        Seeds the data, the initial weights and the batch order: the same
        seed gives the same result, bitwise.
    dtype : numpy dtype
        Of the parameters and gradients (float32 or float64).

    Returns
    -------
    LinearRegressionResult
        The learned slope and intercept, the closed-form least-squares fit of
        the same data for comparison, and the mean squared error per epoch.

    Raises
    ------
    FloatingPointError
        If the fit diverges (``lr`` too large): at the first step whose
        slope or intercept is not finite, naming the epoch and the step, or
        at the end if the loss ended above the loss of the initial weights.

    Notes
    -----
    On a batch of ``B`` points, with residual ``r = w x + b - y``, the loss is
    ``mean(r**2)`` and its gradient ``dw = 2 mean(r x)``, ``db = 2 mean(r)``.
    """
    x, y = make_data(n_samples, noise=noise, seed=seed)
    rng = np.random.default_rng(seed + 1)
    arena = ParameterArena([(), ()], dtype=dtype)
    weight, bias = arena.params
    grad_weight, grad_bias = arena.grads
    weight[...] = rng.standard_normal()
    optimizer = SGD(arena, lr=lr, momentum=momentum)
    start_loss = float(np.mean((float(weight) * x - y) ** 2))
    losses = []
    steps = 0
    for epoch in range(epochs):
        optimizer.lr = lr / (1.0 + epoch)
        order = rng.permutation(n_samples)
        for start in range(0, n_samples, batch_size):
            batch = order[start : start + batch_size]
            xb, yb = x[batch], y[batch]
            # a diverging fit overflows on its way to the non-finite value checked below
            with np.errstate(over="ignore", invalid="ignore"):
                residual = float(weight) * xb + float(bias) - yb
                grad_weight[...] = 2.0 * np.mean(residual * xb)
                grad_bias[...] = 2.0 * np.mean(residual)
            optimizer.step()
            steps += 1
            if not (math.isfinite(float(weight)) and math.isfinite(float(bias))):
                raise FloatingPointError(
                    f"linear regression diverged at epoch {epoch + 1}, step {steps}: the slope "
                    f"and intercept are {float(weight)} and {float(bias)}; lr={lr:g} is too "
                    f"large for momentum={momentum:g}: try a smaller lr"
                )
        residual = float(weight) * x + float(bias) - y
        losses.append(float(np.mean(residual**2)))
    if losses[-1] > start_loss:
        worse = next(i for i, loss in enumerate(losses) if loss > start_loss)
        raise FloatingPointError(
            f"linear regression diverged: the mean squared error grew from {start_loss:.4g} "
            f"at the start to {losses[worse]:.4g} in epoch {worse + 1} and ended at "
            f"{losses[-1]:.4g}; lr={lr:g} is too large for momentum={momentum:g}: try a "
            "smaller lr"
        )
    design = np.column_stack([x, np.ones_like(x)])
    (ls_slope, ls_intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
    return LinearRegressionResult(
        slope=float(weight),
        intercept=float(bias),
        least_squares_slope=float(ls_slope),
        least_squares_intercept=float(ls_intercept),
        epoch_losses=losses,
        steps=steps,
    )


def main() -> None:
    """Fit with the defaults and print what was learned."""
    result = fit_linear_regression()
    print(f"slope     {result.slope:.4f}  (true 3, least squares {result.least_squares_slope:.4f})")
    print(
        f"intercept {result.intercept:.4f}  "
        f"(true 1, least squares {result.least_squares_intercept:.4f})"
    )


if __name__ == "__main__":
    main()
