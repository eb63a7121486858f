"""Pictures of training runs (matplotlib, from the ``demo`` extra)."""

from __future__ import annotations

from typing import Any


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'bnsgd-numba[demo]'") from None
    return plt


def plot_training(results: dict[str, Any], path: str) -> None:
    """Draw loss, accuracy and learning rate per epoch of one or two runs into ``path``.

    Parameters
    ----------
    results : dict
        ``{"bn": TrainResult, "no_bn": TrainResult}`` (the second optional).
    path : str
        Where to write the PNG.
    """
    plt = _pyplot()
    names = {"bn": "with BatchNorm", "no_bn": "without BatchNorm"}
    figure, (loss_axes, accuracy_axes, lr_axes) = plt.subplots(1, 3, figsize=(14, 4))
    for key, result in results.items():
        epochs = [r.epoch for r in result.epochs]
        loss_axes.plot(epochs, [r.train_loss for r in result.epochs], label=f"{names[key]}, train")
        loss_axes.plot(
            epochs, [r.val_loss for r in result.epochs], "--", label=f"{names[key]}, validation"
        )
        accuracy_axes.plot(epochs, [r.val_accuracy for r in result.epochs], label=names[key])
        lr_axes.plot(epochs, [r.lr for r in result.epochs], label=names[key])
    loss_axes.set(title="loss", xlabel="epoch", yscale="log")
    accuracy_axes.set(title="validation accuracy", xlabel="epoch")
    lr_axes.set(title="learning rate (mean of the epoch)", xlabel="epoch")
    for axes in (loss_axes, accuracy_axes, lr_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
