"""What the training subcommands print: a progress bar per epoch and a summary table."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO


class ProgressBar:
    """One line per epoch, redrawn in place on a terminal."""

    def __init__(self, epochs: int, stream: TextIO, label: str = "") -> None:
        self.epochs = epochs
        self.stream = stream
        self.label = label
        self.interactive = stream.isatty()
        self.batches = 1

    def batch(self, epoch: int, done: int, total: int, loss: float, accuracy: float) -> None:
        """Redraw the bar (terminals only)."""
        self.batches = total
        if self.interactive:
            self.stream.write("\r" + self._line(epoch, done, total, loss, accuracy))
            self.stream.flush()

    def epoch(self, record: Any) -> None:
        """Finish the epoch's line with the validation figures."""
        line = self._line(
            record.epoch, self.batches, self.batches, record.train_loss, record.train_accuracy
        )
        self.stream.write(
            ("\r" if self.interactive else "")
            + f"{line}  val_loss {record.val_loss:.4f}  val_acc {record.val_accuracy:.4f}"
            + f"  lr {record.lr:.4g}\n"
        )
        self.stream.flush()

    def _line(self, epoch: int, done: int, total: int, loss: float, accuracy: float) -> str:
        width = 24
        filled = int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        return (
            f"{self.label}epoch {epoch:>3}/{self.epochs} [{bar}] {done:>4}/{total}"
            f"  loss {loss:.4f}  acc {accuracy:.4f}"
        )


def summary_table(results: dict[str, Any]) -> str:
    """Per-epoch figures, one column group per run, as a text table."""
    keys = list(results)
    names = {"bn": "with BN", "no_bn": "without BN"}
    head = "epoch | " + " | ".join(f"{names[k]:^40}" for k in keys)
    sub = "      | " + " | ".join(
        f"{'train_loss':>10} {'val_loss':>9} {'val_acc':>8} {'lr':>9}" for _ in keys
    )
    lines = [head, sub, "-" * len(sub)]
    for i, record in enumerate(results[keys[0]].epochs):
        cells = []
        for k in keys:
            r = results[k].epochs[i]
            cells.append(
                f"{r.train_loss:>10.4f} {r.val_loss:>9.4f} {r.val_accuracy:>8.4f} {r.lr:>9.4g}"
            )
        lines.append(f"{record.epoch:>5} | " + " | ".join(cells))
    lines.append("-" * len(sub))
    lines.append(
        "test  | "
        + " | ".join(
            f"{'loss ' + format(results[k].test_loss, '.4f'):>20} {'acc ' + format(results[k].test_accuracy, '.4f'):>19}"
            for k in keys
        )
    )
    return "\n".join(lines)


def write_outputs(
    results: dict[str, Any], summary: dict[str, Any], json_path: str | None,
    plot_path: str | None, data_name: str,
) -> None:  # fmt: skip
    """Print the summary table; write ``summary`` as JSON and the training figure when asked.

    ``json_path`` ``"-"`` prints the JSON on stdout (the table then goes to stderr).
    """
    print(summary_table(results), file=sys.stderr if json_path == "-" else sys.stdout)
    if json_path == "-":
        print(json.dumps(summary, indent=2))
    elif json_path:
        with open(json_path, "w") as handle:
            json.dump(summary, handle, indent=2)
    if plot_path:
        from bnsgd_numba.plotting import plot_training

        plot_training(results, plot_path, data_name=data_name)
