"""``bnsgd-numba evaluate``: loss and accuracy of a saved model on a data set's test split."""

from __future__ import annotations

import argparse
from typing import Any

from bnsgd_numba.cli._options import fail
from bnsgd_numba.nn.data import DATA_HELP


def add_parser(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="loss and accuracy of a saved model (train --save) on the test split",
        description="Load a model written by `bnsgd-numba train --save` (or "
        "bnsgd_numba.nn.Sequential.save) and report its mean softmax cross-entropy and its "
        "accuracy on the test split of the data, in inference mode (running statistics). "
        "Default data: the 1,797 8x8 digits scikit-learn ships (the test split train uses).",
    )
    parser.add_argument("model", metavar="MODEL.npz", help="the saved model")
    parser.add_argument(
        "--data",
        metavar="PATH",
        help=f"{DATA_HELP} evaluate reads the test set. Default: the digits",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the model and the data, print the test loss and accuracy."""
    from bnsgd_numba.nn.data import load_data, load_digits
    from bnsgd_numba.nn.layers import Sequential

    try:
        model = Sequential.load(args.model)
        data = load_data(args.data) if args.data else load_digits()
        try:
            outputs = model.predict(data.x_test[:1]).shape[1]
        except ValueError as error:
            raise ValueError(f"{args.model} does not fit {data.name}: {error}") from None
        if data.num_classes > outputs:
            raise ValueError(
                f"{args.model}: the model has {outputs} outputs, the data {data.num_classes} classes"
            )
        loss, accuracy = model.evaluate(data.x_test, data.y_test)
    except (ValueError, TypeError, ImportError, OSError) as error:
        return fail("evaluate", error)
    print(
        f"test loss {loss:.4f}  accuracy {accuracy:.4f}  "
        f"({len(data.y_test)} examples of {data.name})"
    )
    return 0
