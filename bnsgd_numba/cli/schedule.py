"""``bnsgd-numba schedule plot NAME``: draw a learning-rate schedule over steps."""

from __future__ import annotations

import argparse
import ast
from typing import Any

from bnsgd_numba.cli._options import (
    check_matplotlib,
    check_output_path,
    fail,
    non_negative_float,
    positive_int,
)

DEFAULT_BASE_LR = 0.1


def add_parser(subparsers: Any) -> None:
    """Add the ``schedule`` subcommand and its ``plot`` action."""
    parser = subparsers.add_parser("schedule", help="inspect learning-rate schedules")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    plot = actions.add_parser(
        "plot",
        help="draw the learning rate of a registered scheduler over steps",
        description=(
            "Draw a registered scheduler's learning rate (and momentum, if it cycles "
            "momentum) over steps. Metric-driven schedules (reduce_on_plateau) are fed a "
            "synthetic loss curve. Needs matplotlib (the 'demo' extra)."
        ),
    )
    plot.add_argument("name", help="registered scheduler name, e.g. cosine")
    plot.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a scheduler parameter; VALUE is a Python literal (30, 0.5, [30, 80]) or a string",
    )
    plot.add_argument(
        "--base-lr",
        type=non_negative_float,
        default=None,
        help=f"base learning rate (default: the schedule's own, else {DEFAULT_BASE_LR})",
    )
    plot.add_argument("--steps", type=positive_int, default=300, help="number of steps")
    plot.add_argument("-o", "--output", default="lr.png", help="image file to write")
    plot.set_defaults(handler=run_plot)


class _PlotOptimizer:
    """What a schedule binds to: one created without a rate takes ``DEFAULT_BASE_LR``."""

    def __init__(self) -> None:
        self.lr = DEFAULT_BASE_LR
        self.momentum = 0.0


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; values are Python literals, else strings.

    Parameters
    ----------
    pairs : list of str
        The ``--param`` arguments.

    Returns
    -------
    dict
        Keyword arguments for the scheduler, which checks them and names
        the parameter of a bad one (``patience=two`` stays the string
        ``'two'``, which ``reduce_on_plateau`` rejects naming ``patience``).

    Raises
    ------
    ValueError
        A pair is not ``KEY=VALUE`` with an identifier key, or a key is
        given twice.
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--param expects KEY=VALUE, got {pair!r}")
        if key in params:
            raise ValueError(f"--param {key} is given twice")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = raw
        params[key] = value
    return params


def schedule_values(
    name: str, params: dict[str, Any], base_lr: float | None, steps: int
) -> tuple[list[float], list[float] | None]:
    """Return the learning rates (and momenta, or None) of ``steps`` steps.

    Parameters
    ----------
    name : str
        Registered scheduler name.
    params : dict
        Its parameters.
    base_lr : float or None
        Base learning rate; None: let the schedule derive it (``one_cycle``)
        or take it from ``params`` (``peak_value``), else 0.1.
    steps : int
        Number of steps.

    Returns
    -------
    tuple
        ``steps + 1`` rates (step 0 included) and momenta or None.
    """
    from bnsgd_numba.registry import create_scheduler
    from bnsgd_numba.testing.cases import default_metrics

    if base_lr is not None:
        sched = create_scheduler(name, base_lr=base_lr, **params)
    else:
        try:  # derived (one_cycle), named otherwise (peak_value), or the optimizer's at bind
            sched = create_scheduler(name, **params)
        except TypeError as error:  # a plugin's scheduler that requires base_lr
            try:
                sched = create_scheduler(name, base_lr=DEFAULT_BASE_LR, **params)
            except (TypeError, ValueError):
                raise error from None  # the parameter's own error, not base_lr's
    sched.bind(_PlotOptimizer())
    if sched.max_step is not None:
        steps = min(steps, sched.max_step)
    metrics = default_metrics(max(steps, 1))
    rates, momenta = [sched.lr], [sched.momentum]
    for t in range(steps):
        rates.append(sched.step(metrics[t] if sched.requires_metric else None))
        momenta.append(sched.momentum)
    return rates, (None if momenta[0] is None else [float(m) for m in momenta])


def run_plot(args: argparse.Namespace) -> int:
    """Write the plot; return 0, or 2 with one line on stderr (bad arguments, no matplotlib)."""
    from bnsgd_numba.plotting import schedule_figure

    try:
        check_matplotlib("drawing a schedule")
        check_output_path("--output", args.output)
    except (ImportError, ValueError) as exc:
        return fail("schedule plot", exc)
    try:
        params = parse_params(args.param)
        rates, momenta = schedule_values(args.name, params, args.base_lr, args.steps)
    except (TypeError, ValueError, LookupError) as exc:
        return fail("schedule plot", f"{args.name!r}: {exc}")
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    title = f"{args.name}({shown})" if shown else args.name
    schedule_figure(title, rates, momenta).savefig(args.output)
    print(f"wrote {args.output} ({len(rates) - 1} steps)")
    return 0
