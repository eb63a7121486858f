"""What every subcommand shares: --version, defaults in --help, one-line errors, closed pipes."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from bnsgd_numba import __version__, registry
from bnsgd_numba.cli import build_parser, main


def test_version_names_the_package_and_its_runtime(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"bnsgd-numba {__version__} (numba ")
    assert "NumPy" in out and "Python" in out


def _subparsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    # every (command words, parser) pair, nested subcommands (schedule plot) included
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def _defaults(parser: argparse.ArgumentParser) -> dict[str, object]:
    # the options whose default says something (not None, off, empty or suppressed)
    return {
        action.option_strings[-1]: action.default
        for action in parser._actions
        if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS)
    }


SUBCOMMANDS = {words: sub for words, sub in _subparsers(build_parser()) if _defaults(sub)}


@pytest.mark.parametrize("words", sorted(SUBCOMMANDS), ids=" ".join)
def test_help_states_every_default(words, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*words, "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, default in _defaults(SUBCOMMANDS[words]).items():
        assert f"(default: {default})" in text, option


def test_train_help_says_how_often_schedules_step(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--schedule-unit {step,epoch}" in text and "(default: step)" in text
    assert "step once per batch" in text
    assert "reduce_on_plateau steps once per epoch" in text
    assert "--classes N" in text and "largest label in --data + 1" in text


@pytest.mark.parametrize(
    "argv,named",
    [
        (["train", "--momentum", "-1"], "--momentum"),
        (["train", "--momentum", "nan"], "--momentum"),
        (["train", "--weight-decay", "-1"], "--weight-decay"),
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--lr", "inf"], "--lr"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--classes", "0"], "--classes"),
        (["train", "--schedule-unit", "batch"], "--schedule-unit"),
        (["linreg", "--lr", "-0.1"], "--lr"),
        (["linreg", "--noise", "nan"], "--noise"),
        (["linreg", "--seed", "-1"], "--seed"),
        (["schedule", "plot", "cosine", "--steps", "0"], "--steps"),
        (["schedule", "plot", "cosine", "--base-lr", "-1"], "--base-lr"),
        (["trian"], "invalid choice: 'trian'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_bad_option_is_one_line_and_status_2_before_anything_runs(argv, named, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and named in captured.err
    assert captured.err.startswith("bnsgd-numba")


@pytest.mark.parametrize(
    "argv",
    [["plugins"], ["schedule", "plot", "cosine", "-p", "T_max=9", "-o", "{tmp}/lr.png"]],
    ids=" ".join,
)
def test_output_into_a_closed_pipe_ends_quietly(argv, tmp_path):
    # `bnsgd-numba plugins | head -0`, without the race: the reader is gone before the write
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bnsgd_numba", *[a.format(tmp=tmp_path) for a in argv]],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141  # 128 + SIGPIPE, what a shell reports for `cat` there


CLASH = """
from bnsgd_numba import hookimpl
from bnsgd_numba.schedulers.decay import StepLR

@hookimpl
def bnsgd_register_schedulers(register):
    register("step", StepLR)
"""


@pytest.fixture
def clashing_plugin(monkeypatch, tmp_path):
    """An installed plugin that registers ``step``, a built-in's name."""
    (tmp_path / "fake_plugin_step_clash.py").write_text(CLASH)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = [importlib.metadata.EntryPoint("clash", "fake_plugin_step_clash", "bnsgd_numba")]
    monkeypatch.setattr(registry, "_entry_points", lambda: found)
    monkeypatch.delenv(registry.BLOCK_ENV_VAR, raising=False)
    registry._REGISTRY.reset()
    yield
    registry._REGISTRY.reset()
    sys.modules.pop("fake_plugin_step_clash", None)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--scheduler", "step", "--param", "step_size=5", "--epochs", "1"],
        ["schedule", "plot", "step", "-p", "step_size=5", "-o", "{tmp}/step.png"],
    ],
    ids=["train", "schedule plot"],
)
def test_a_name_clash_between_plugins_is_one_line(clashing_plugin, argv, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"bnsgd-numba {argv[0]}")
    assert "'step'" in err and "clash" in err


def test_bench_checks_its_output_paths_first_and_json_dash_is_stdout(monkeypatch, tmp_path, capsys):
    from bnsgd_numba.bench import report

    calls = []

    def fake_report(argv):
        calls.append(argv)
        print("the report")
        path = argv[argv.index("--json") + 1]
        with open(path, "w") as handle:
            json.dump({"figures": [1, 2]}, handle)
        return 0

    monkeypatch.setattr(report, "main", fake_report)
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--json", "no/such/dir/bench.json"]) == 2
    assert calls == [] and "no such directory" in capsys.readouterr().err
    assert main(["bench", "--quick", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"figures": [1, 2]}
    assert "the report" in captured.err
    assert not (tmp_path / "-").exists()


def test_schedule_plot_checks_its_output_path_before_drawing(tmp_path, capsys):
    target = tmp_path / "no" / "such" / "lr.png"
    assert main(["schedule", "plot", "cosine", "-p", "T_max=9", "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"bnsgd-numba schedule plot: error: --output {target}: no such dir")
