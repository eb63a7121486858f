"""``bnsgd-numba linreg``: the seed's linear regression, trained with the library's SGD."""

from __future__ import annotations

import argparse
import json
from typing import Any

from bnsgd_numba.cli._options import fail, non_negative_float, non_negative_int, positive_int


def add_parser(subparsers: Any) -> None:
    """Add the ``linreg`` subcommand."""
    parser = subparsers.add_parser(
        "linreg",
        help="fit y = 3x + 1 + noise by mini-batch SGD (the seed's example)",
        description=(
            "Fit y = w x + b to y = 3x + 1 + noise by random mini-batch SGD with "
            "bnsgd_numba's optimizer, and compare with the least-squares fit."
        ),
    )
    parser.add_argument("--samples", type=positive_int, default=20_000, help="data points")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="mini-batch size")
    parser.add_argument("--epochs", type=positive_int, default=20, help="passes over the data")
    parser.add_argument("--lr", type=non_negative_float, default=0.05, help="initial learning rate")
    parser.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum")
    parser.add_argument(
        "--noise", type=non_negative_float, default=1.0, help="noise standard deviation"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train, print slope and intercept; return 0, or 2 with one line if it diverges."""
    from bnsgd_numba.examples.linear_regression import fit_linear_regression

    try:
        result = fit_linear_regression(
            n_samples=args.samples,
            batch_size=args.batch_size,
            epochs=args.epochs,
            lr=args.lr,
            momentum=args.momentum,
            noise=args.noise,
            seed=args.seed,
        )
    except (FloatingPointError, ValueError) as error:
        return fail("linreg", error)
    if args.json:
        print(
            json.dumps(
                {
                    "slope": result.slope,
                    "intercept": result.intercept,
                    "least_squares_slope": result.least_squares_slope,
                    "least_squares_intercept": result.least_squares_intercept,
                    "final_loss": result.epoch_losses[-1],
                    "steps": result.steps,
                }
            )
        )
        return 0
    print(f"steps      {result.steps}")
    print(f"final MSE  {result.epoch_losses[-1]:.4f}")
    print(
        f"slope      {result.slope:.4f}  (true 3, least squares {result.least_squares_slope:.4f})"
    )
    print(
        f"intercept  {result.intercept:.4f}  "
        f"(true 1, least squares {result.least_squares_intercept:.4f})"
    )
    return 0
