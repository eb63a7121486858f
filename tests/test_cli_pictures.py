"""The pictures: the training figure (``train --plot``) and ``schedule plot``."""

from __future__ import annotations

import pytest

from bnsgd_numba.nn.training import EpochRecord, TrainConfig, TrainResult

pytest.importorskip("matplotlib")

from bnsgd_numba.plotting import schedule_figure, training_figure  # noqa: E402


def _result(config: TrainConfig, shift: float) -> TrainResult:
    records = [
        EpochRecord(e, 1.0 / e + shift, 0.5 + e / 10, 1.2 / e + shift, 0.4 + e / 10, 0.1 / e)
        for e in range(1, 4)
    ]
    return TrainResult(config, records, 0.3, 0.9, 1.0, model=None)


@pytest.fixture
def figure():
    config = TrainConfig(epochs=3, hidden=16)
    results = {
        "bn": _result(config, 0.0),
        "no_bn": _result(TrainConfig(epochs=3, hidden=16, batch_norm=False), 0.2),
    }
    return training_figure(results, data_name="tiny.npz")


def test_one_colour_per_run_and_one_line_style_per_split_in_every_panel(figure):
    colours, styles = {}, {}
    panels = figure.axes
    assert len(panels) == 3
    for axes in panels:
        lines = axes.get_lines()
        assert lines
        for line in lines:
            run, _, split = line.get_label().partition(", ")
            colours.setdefault(run, set()).add(line.get_color())
            if split:
                styles.setdefault(split, set()).add(line.get_linestyle())
    assert set(colours) == {"with BatchNorm", "without BatchNorm"}
    assert all(len(found) == 1 for found in colours.values())
    assert colours["with BatchNorm"] != colours["without BatchNorm"]
    assert set(styles) == {"train", "validation"}
    assert all(len(found) == 1 for found in styles.values())
    assert styles["train"] != styles["validation"]
    # one legend for the figure names both runs and both splits
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "with BatchNorm", "without BatchNorm", "train", "validation"
    ]  # fmt: skip


def test_whole_epoch_ticks_labelled_axes_and_a_title_saying_what_and_on_what(figure):
    for axes in figure.axes:
        ticks = [t for t in axes.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks)
        assert axes.get_xlabel() == "epoch" and axes.get_ylabel()
    title = figure.get_suptitle()
    assert "Dense 16 ReLU" in title and "without BatchNorm" in title
    assert "trained on tiny.npz" in title and "warmup_cosine" in title


def test_schedule_figure_has_a_legend_and_axes_with_units():
    figure = schedule_figure("one_cycle", [0.1, 0.5, 0.2], [0.95, 0.85, 0.9])
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["learning rate", "momentum"]
    rate_axes, momentum_axes = figure.axes
    assert rate_axes.get_xlabel().startswith("step")
    assert rate_axes.get_ylabel() == "learning rate"
    assert momentum_axes.get_ylabel().startswith("momentum")
    alone = schedule_figure("cosine", [0.1, 0.05, 0.0], None)
    assert [t.get_text() for t in alone.legends[0].get_texts()] == ["learning rate"]
