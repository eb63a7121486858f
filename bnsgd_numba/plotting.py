"""Pictures of training runs (matplotlib, from the ``demo`` extra)."""

from __future__ import annotations

from typing import Any

RUN_STYLES = {
    "bn": ("with BatchNorm", "tab:blue"),
    "no_bn": ("without BatchNorm", "tab:orange"),
}
"""Each run's name and colour, the same in every panel."""

SPLIT_STYLES = {"train": "-", "validation": "--"}
"""Each split's line style, the same in every panel."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'bnsgd-numba[demo]'") from None
    return plt


def _title(results: dict[str, Any], data_name: str | None) -> str:
    config = next(iter(results.values())).config
    network = f"BN -> Dense {config.hidden} ReLU -> BN -> Dense softmax"
    if "bn" not in results:
        network = f"Dense {config.hidden} ReLU -> Dense softmax"
    elif "no_bn" in results:
        network += ", and without BatchNorm"
    data = f" on {data_name}" if data_name else ""
    unit = "batch" if config.schedule_unit == "step" else "epoch"
    return (
        f"{network} ({config.dtype}), trained{data}\n{config.epochs} epochs, batches of "
        f"{config.batch_size}, SGD with momentum {config.momentum:g}, lr {config.lr:g}, "
        f"{config.scheduler} schedule stepped once per {unit}"
    )


def training_figure(results: dict[str, Any], *, data_name: str | None = None) -> Any:
    """The figure :func:`plot_training` draws: loss, accuracy and learning rate per epoch.

    One colour per run (:data:`RUN_STYLES`) and one line style per split
    (:data:`SPLIT_STYLES`: train solid, validation dashed), the same in
    every panel, explained by one legend under the panels; each line's
    label is ``"RUN, SPLIT"`` (``"RUN"`` for the learning rate). Epoch ticks
    are whole numbers; the title says what was trained on what data.

    Parameters
    ----------
    results : dict
        ``{"bn": TrainResult, "no_bn": TrainResult}`` (either optional).
    data_name : str, optional
        What the runs were trained on, for the title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'bnsgd-numba[demo]'") from None

    figure = Figure(figsize=(14, 4.8), layout="constrained")
    loss_axes, accuracy_axes, lr_axes = figure.subplots(1, 3)
    for index, (key, result) in enumerate(results.items()):
        name, colour = RUN_STYLES[key]
        epochs = [r.epoch for r in result.epochs]
        for split, style in SPLIT_STYLES.items():
            prefix = "train" if split == "train" else "val"
            losses = [getattr(r, f"{prefix}_loss") for r in result.epochs]
            accuracies = [getattr(r, f"{prefix}_accuracy") for r in result.epochs]
            label = f"{name}, {split}"
            loss_axes.plot(epochs, losses, style, color=colour, marker=".", label=label)
            accuracy_axes.plot(epochs, accuracies, style, color=colour, marker=".", label=label)
        # the runs share a schedule: the first is drawn wider, so that both show
        width = 4.0 if index == 0 and len(results) > 1 else 1.5
        lr_axes.plot(
            epochs, [r.lr for r in result.epochs], "-", color=colour, linewidth=width,
            marker=".", label=name,
        )  # fmt: skip
    loss_axes.set(title="loss", ylabel="cross-entropy loss (log scale)", yscale="log")
    accuracy_axes.set(title="accuracy", ylabel="fraction classified correctly")
    lr_axes.set(title="learning rate", ylabel="learning rate (mean over the epoch's steps)")
    for axes in (loss_axes, accuracy_axes, lr_axes):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    handles = [
        Line2D([], [], color=RUN_STYLES[key][1], label=RUN_STYLES[key][0]) for key in results
    ] + [
        Line2D([], [], color="0.35", linestyle=style, label=split)
        for split, style in SPLIT_STYLES.items()
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    figure.suptitle(_title(results, data_name), fontsize=10)
    return figure


def plot_training(results: dict[str, Any], path: str, *, data_name: str | None = None) -> None:
    """Draw loss, accuracy and learning rate per epoch of one or two runs into ``path``.

    Parameters
    ----------
    results : dict
        ``{"bn": TrainResult, "no_bn": TrainResult}`` (either optional).
    path : str
        Where to write the PNG.
    data_name : str, optional
        What the runs were trained on, for the title.

    See Also
    --------
    training_figure : the figure, described.
    """
    training_figure(results, data_name=data_name).savefig(path, dpi=110)


def schedule_figure(title: str, rates: list[float], momenta: list[float] | None) -> Any:
    """A schedule's learning rate (and momentum, on a right axis) over its steps.

    Parameters
    ----------
    title : str
        The schedule and its parameters.
    rates : list of float
        The learning rate after 0, 1, ... steps.
    momenta : list of float or None
        The momentum at the same steps, for a schedule that cycles it.

    Returns
    -------
    matplotlib.figure.Figure
        With a legend naming each curve and labelled axes.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    lines = axes.plot(range(len(rates)), rates, color="tab:blue", label="learning rate")
    axes.set_xlabel("step (calls of the scheduler's step())")
    axes.set_ylabel("learning rate", color="tab:blue")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.set_title(title, fontsize=9)
    if momenta is not None:
        twin = axes.twinx()
        lines += twin.plot(
            range(len(momenta)), momenta, color="tab:orange", linestyle="--", label="momentum"
        )
        twin.set_ylabel("momentum (right axis)", color="tab:orange")
    figure.legend(handles=lines, loc="outside lower center", ncols=len(lines), fontsize=9)
    return figure
