"""The ``plugins`` and ``schedule plot`` subcommands.

The parser here holds just these two subcommands (built the way
``bnsgd_numba.cli`` builds it), so they are tested on their own;
tests/test_plugin_discovery.py runs ``python -m bnsgd_numba plugins``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys

import pytest

from bnsgd_numba import registry
from bnsgd_numba.cli import plugins as plugins_cli
from bnsgd_numba.cli import schedule as schedule_cli


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="bnsgd-numba")
    subparsers = parser.add_subparsers(dest="command", required=True)
    plugins_cli.add_parser(subparsers)
    schedule_cli.add_parser(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture
def isolated(monkeypatch):
    monkeypatch.setattr(registry, "_entry_points", lambda: [])
    monkeypatch.delenv(registry.BLOCK_ENV_VAR, raising=False)
    registry._REGISTRY.reset()
    yield
    registry._REGISTRY.reset()


def test_plugins_lists_builtins_with_origin_and_names(isolated, capsys):
    assert run("plugins") == 0
    out = capsys.readouterr().out
    assert "bnsgd_numba.schedulers.cosine" in out and "built-in" in out
    assert "cosine, cosine_warm_restarts, warmup_cosine" in out
    assert "normalizations: batch_norm" in out
    assert "Failed" not in out


CLASH = """
from bnsgd_numba import hookimpl

@hookimpl
def bnsgd_register_schedulers(register):
    register("step", lambda **kw: None)
"""


def _install(monkeypatch, tmp_path, plugins: dict[str, tuple[str, str | None]]) -> None:
    """Make ``{entry-point name: (module, source or None: missing)}`` the installed plugins."""
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = []
    for name, (module, source) in plugins.items():
        if source is not None:
            (tmp_path / f"{module}.py").write_text(source)
        eps.append(importlib.metadata.EntryPoint(name, module, registry.ENTRY_POINT_GROUP))
    monkeypatch.setattr(registry, "_entry_points", lambda: eps)
    registry._REGISTRY.reset()


def test_plugins_reports_failures_conflicts_and_blocks(isolated, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(registry.BLOCK_ENV_VAR, "bnsgd_numba.schedulers.plateau")
    _install(
        monkeypatch,
        tmp_path,
        {"broken_thing": ("no_such_module_xyz", None), "clash": ("fake_plugin_clash", CLASH)},
    )
    assert run("plugins") == 0
    out = capsys.readouterr().out
    assert "broken_thing" in out and "no_such_module_xyz" in out
    assert "bnsgd_numba.schedulers.plateau" in out and "blocked" in out
    assert "scheduler 'step': bnsgd_numba.schedulers.decay, clash" in out
    assert run("plugins", "--strict") == 1
    capsys.readouterr()
    assert run("plugins", "--json") == 0
    payload = json.loads(capsys.readouterr().out)
    (entry,) = [p for p in payload["plugins"] if p["name"] == "broken_thing"]
    assert "no_such_module_xyz" in entry["error"]
    assert payload["conflicts"] == [
        {"kind": "scheduler", "name": "step", "plugins": ["bnsgd_numba.schedulers.decay", "clash"]}
    ]
    sys.modules.pop("fake_plugin_clash", None)


def test_parse_params_reads_literals_and_strings():
    params = schedule_cli.parse_params(
        ["T_max=30", "milestones=[3, 9]", "mode=triangular2", "x=0.5"]
    )
    assert params == {"T_max": 30, "milestones": [3, 9], "mode": "triangular2", "x": 0.5}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        schedule_cli.parse_params(["novalue"])


def test_schedule_values_follow_the_scheduler(isolated):
    rates, momenta = schedule_cli.schedule_values("step", {"step_size": 2}, 1.0, 4)
    assert rates == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.01)]
    assert momenta is None
    rates, momenta = schedule_cli.schedule_values(
        "one_cycle", {"max_lr": 1.0, "total_steps": 10}, None, 50
    )
    assert len(rates) == 11 and rates[0] == pytest.approx(0.04) and momenta[0] == 0.95
    # without --base-lr: 0.1, unless the schedule derives it or names it otherwise
    assert schedule_cli.schedule_values("cosine", {"T_max": 4}, None, 4)[0][0] == 0.1
    warmup = {"init_value": 0.0, "warmup_steps": 2, "decay_steps": 4}
    assert schedule_cli.schedule_values("warmup_cosine", warmup, None, 2)[0] == [0.0, 0.05, 0.1]
    warmup["peak_value"] = 1.0
    assert schedule_cli.schedule_values("warmup_cosine", warmup, None, 2)[0] == [0.0, 0.5, 1.0]


def test_schedule_plot_writes_a_png(isolated, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "lr.png"
    code = run("schedule", "plot", "cyclic", "--param", "max_lr=1.0", "-p", "step_size_up=10",
               "--steps", "50", "-o", str(out))  # fmt: skip
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "50 steps" in capsys.readouterr().out
    plateau = tmp_path / "plateau.png"
    assert run("schedule", "plot", "reduce_on_plateau", "-p", "patience=3", "-o", str(plateau)) == 0
    assert plateau.exists()


def test_schedule_plot_reports_bad_arguments(isolated, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert run("schedule", "plot", "cosin", "-o", str(tmp_path / "a.png")) == 2
    assert "Did you mean 'cosine'" in capsys.readouterr().err
    assert run("schedule", "plot", "cosine", "-p", "T_max=oops", "-o", str(tmp_path / "b.png")) == 2
    assert "T_max" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists()


def test_schedule_plot_without_matplotlib_says_how_to_install(isolated, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert run("schedule", "plot", "cosine", "-p", "T_max=10") == 2
    assert "bnsgd-numba[demo]" in capsys.readouterr().err


EXITS = """
import sys
from bnsgd_numba import hookimpl

@hookimpl
def bnsgd_register_schedulers(register):
    sys.exit(4)
"""


def test_plugins_survives_a_plugin_that_calls_sys_exit(isolated, monkeypatch, tmp_path, capsys):
    _install(
        monkeypatch,
        tmp_path,
        {
            "quits_early": ("fake_plugin_exits_at_import", "import sys\nsys.exit(9)\n"),
            "quits_late": ("fake_plugin_exits_in_hook", EXITS),
        },
    )
    assert run("plugins") == 0
    out = capsys.readouterr().out
    assert "quits_early: failed to import" in out and "sys.exit(9)" in out
    assert "quits_late: registration failed" in out and "sys.exit(4)" in out
    assert "cosine, cosine_warm_restarts, warmup_cosine" in out
    assert run("plugins", "--strict") == 1
    for module in ("fake_plugin_exits_at_import", "fake_plugin_exits_in_hook"):
        sys.modules.pop(module, None)


def test_parse_params_refuses_a_key_given_twice():
    with pytest.raises(ValueError, match="--param gamma is given twice"):
        schedule_cli.parse_params(["gamma=0.5", "gamma=0.9"])


@pytest.mark.parametrize(
    ("name", "param", "named"),
    [
        ("reduce_on_plateau", "patience=two", "patience"),
        ("multistep", "milestones=['a']", r"milestones\[0\]"),
        ("one_cycle", "div_factor=0", "div_factor"),
        ("exponential", "gamma=-1", "gamma"),
        ("one_cycle", "three_phase=yes", "three_phase"),
    ],
)
def test_schedule_plot_names_the_bad_parameter(isolated, tmp_path, capsys, name, param, named):
    pytest.importorskip("matplotlib")
    args = ["-p", param] + (["-p", "total_steps=10", "-p", "max_lr=0.1"] if "cycle" in name else [])
    assert run("schedule", "plot", name, *args, "-o", str(tmp_path / "x.png")) == 2
    err = capsys.readouterr().err
    assert re.search(named, err), err
    assert not (tmp_path / "x.png").exists()
