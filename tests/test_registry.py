"""The plugin registry: built-ins, run-time plugins, entry points and their failures."""

from __future__ import annotations

import importlib.metadata
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bnsgd_numba
from bnsgd_numba import hookimpl, hookspecs, registry
from bnsgd_numba.schedulers.decay import ExponentialLR

BUILTIN_SCHEDULERS = {
    "constant", "linear", "step", "multistep", "exponential", "polynomial", "cosine",
    "cosine_warm_restarts", "cyclic", "one_cycle", "lambda", "multiplicative", "sequential",
    "chained", "reduce_on_plateau", "warmup_cosine", "piecewise_constant",
}  # fmt: skip
BUILTIN_NORMALIZATIONS = [
    "batch_norm", "batch_renorm", "frozen_batch_norm", "ghost_batch_norm", "group_norm",
    "instance_norm", "layer_norm", "rms_norm", "sync_batch_norm",
]  # fmt: skip


@pytest.fixture
def entry_points(monkeypatch):
    """Replace the installed entry points by a list the test fills; reload around the test."""
    eps: list[importlib.metadata.EntryPoint] = []
    monkeypatch.setattr(registry, "_entry_points", lambda: eps)
    monkeypatch.delenv(registry.BLOCK_ENV_VAR, raising=False)
    registry._REGISTRY.reset()
    yield eps
    registry._REGISTRY.reset()


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A directory on sys.path where a test writes plugin modules."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(module: str, source: str) -> importlib.metadata.EntryPoint:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        return importlib.metadata.EntryPoint(module, module, registry.ENTRY_POINT_GROUP)

    yield write
    for module in [m for m in sys.modules if m.startswith("fake_plugin")]:
        del sys.modules[module]


GOOD = """
from bnsgd_numba import hookimpl
from bnsgd_numba.schedulers.decay import ExponentialLR

@hookimpl
def bnsgd_register_schedulers(register):
    register("{name}", ExponentialLR, examples=[{{"gamma": 0.9}}])
"""


def _info(name: str) -> registry.PluginInfo:
    (info,) = [p for p in bnsgd_numba.list_plugins() if p.name == name]
    return info


def test_every_builtin_comes_from_a_builtin_plugin_module(entry_points):
    assert set(bnsgd_numba.available_schedulers()) == BUILTIN_SCHEDULERS
    assert bnsgd_numba.available_normalizations() == BUILTIN_NORMALIZATIONS
    by_plugin = {p.name: p for p in bnsgd_numba.list_plugins()}
    assert set(by_plugin) == set(registry.BUILTIN_PLUGINS)
    registered = set()
    for info in by_plugin.values():
        assert info.origin == "built-in" and info.error is None
        registered.update(info.registered.get("scheduler", []))
    assert registered == BUILTIN_SCHEDULERS
    # through pluggy's hooks, no back door: the plugin manager holds the modules
    assert {name for name, _ in bnsgd_numba.plugin_manager().list_name_plugin()} == set(by_plugin)


def test_unknown_name_lists_the_available_ones(entry_points):
    with pytest.raises(registry.UnknownNameError, match="Did you mean 'cosine'") as err:
        bnsgd_numba.create_scheduler("cosin", base_lr=0.1, T_max=10)
    for name in BUILTIN_SCHEDULERS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown normalization 'weight_norm'.*batch_norm"):
        bnsgd_numba.create_normalization("weight_norm", 3)


def test_plugin_registered_at_run_time_and_unregistered(entry_points):
    class Plugin:
        @hookimpl
        def bnsgd_register_schedulers(self, register):
            register("fast_exponential", ExponentialLR)

    plugin = Plugin()
    assert bnsgd_numba.register_plugin(plugin, name="mine") == "mine"
    sched = bnsgd_numba.create_scheduler("fast_exponential", base_lr=1.0, gamma=0.5)
    assert sched.step() == 0.5
    assert _info("mine").origin == "register_plugin"
    assert _info("mine").registered == {"scheduler": ["fast_exponential"]}
    bnsgd_numba.unregister_plugin(plugin)
    assert "fast_exponential" not in bnsgd_numba.available_schedulers()
    with pytest.raises(registry.PluginError, match="not registered"):
        bnsgd_numba.unregister_plugin(plugin)


def test_duplicate_name_at_run_time_names_both_plugins_and_changes_nothing(entry_points):
    class Clash:
        @hookimpl
        def bnsgd_register_schedulers(self, register):
            register("extra", ExponentialLR)
            register("cosine", ExponentialLR)

    with pytest.raises(registry.DuplicateNameError) as err:
        bnsgd_numba.register_plugin(Clash(), name="clash")
    assert "'clash'" in str(err.value) and "bnsgd_numba.schedulers.cosine" in str(err.value)
    assert "extra" not in bnsgd_numba.available_schedulers()
    assert bnsgd_numba.create_scheduler("cosine", base_lr=1.0, T_max=4).lr_at(4) == 0.0


def test_duplicate_between_installed_plugins_is_an_error_naming_both(entry_points, plugin_dir):
    entry_points.append(plugin_dir("fake_plugin_a", GOOD.format(name="warp")))
    entry_points.append(plugin_dir("fake_plugin_b", GOOD.format(name="warp")))
    with pytest.raises(registry.DuplicateNameError, match="'fake_plugin_a' and 'fake_plugin_b'"):
        bnsgd_numba.create_scheduler("warp", base_lr=0.1, gamma=0.9)
    assert "warp" not in bnsgd_numba.available_schedulers()
    assert registry.name_conflicts() == {("scheduler", "warp"): ["fake_plugin_a", "fake_plugin_b"]}
    assert bnsgd_numba.create_scheduler("step", base_lr=1.0, step_size=1).step() == 0.1


def test_block_env_var_resolves_a_conflict(entry_points, plugin_dir, monkeypatch):
    entry_points.append(plugin_dir("fake_plugin_a", GOOD.format(name="warp")))
    entry_points.append(plugin_dir("fake_plugin_b", GOOD.format(name="warp")))
    monkeypatch.setenv(registry.BLOCK_ENV_VAR, " fake_plugin_a ,")
    registry._REGISTRY.reset()
    assert bnsgd_numba.registry.scheduler_registration("warp").plugin == "fake_plugin_b"
    assert _info("fake_plugin_a").blocked and not _info("fake_plugin_a").registered
    assert "fake_plugin_a" not in sys.modules  # a blocked plugin is not even imported


def test_blocking_a_builtin_plugin(entry_points, monkeypatch):
    monkeypatch.setenv(registry.BLOCK_ENV_VAR, "bnsgd_numba.schedulers.cosine")
    registry._REGISTRY.reset()
    assert "cosine" not in bnsgd_numba.available_schedulers()
    assert "step" in bnsgd_numba.available_schedulers()
    assert (
        bnsgd_numba.register_plugin(importlib.import_module("bnsgd_numba.schedulers.cosine"))
        is None
    )


def test_plugin_that_fails_to_import_is_reported_and_contained(entry_points, plugin_dir):
    entry_points.append(plugin_dir("fake_plugin_broken", "import not_a_module_anywhere\n"))
    entry_points.append(plugin_dir("fake_plugin_ok", GOOD.format(name="fine")))
    assert "fine" in bnsgd_numba.available_schedulers()
    assert BUILTIN_SCHEDULERS <= set(bnsgd_numba.available_schedulers())
    info = _info("fake_plugin_broken")
    assert "failed to import" in info.error and "not_a_module_anywhere" in info.error


def test_plugin_whose_hook_raises_is_reported_and_its_names_dropped(entry_points, plugin_dir):
    source = """
    from bnsgd_numba import hookimpl
    from bnsgd_numba.schedulers.decay import ExponentialLR

    @hookimpl
    def bnsgd_register_schedulers(register):
        register("half_done", ExponentialLR)
        raise RuntimeError("disk on fire")
    """
    entry_points.append(plugin_dir("fake_plugin_raises", source))
    assert "half_done" not in bnsgd_numba.available_schedulers()
    assert "RuntimeError: disk on fire" in _info("fake_plugin_raises").error
    assert "cosine" in bnsgd_numba.available_schedulers()


def test_bad_registration_is_reported(entry_points, plugin_dir):
    source = """
    from bnsgd_numba import hookimpl

    @hookimpl
    def bnsgd_register_schedulers(register):
        register("not callable", 42)
    """
    entry_points.append(plugin_dir("fake_plugin_bad_entry", source))
    assert "name must be" in _info("fake_plugin_bad_entry").error


@pytest.mark.parametrize("marked", [True, False], ids=["marked", "unmarked"])
def test_misspelled_hook_is_rejected_by_check_pending(entry_points, plugin_dir, marked):
    source = f"""
    from bnsgd_numba import hookimpl

    {"@hookimpl" if marked else ""}
    def bnsgd_register_scheduler(register):
        pass
    """
    entry_points.append(plugin_dir("fake_plugin_typo", source))
    assert "unknown hook 'bnsgd_register_scheduler'" in _info("fake_plugin_typo").error
    assert "fake_plugin_typo" not in dict(bnsgd_numba.plugin_manager().list_name_plugin())
    assert "cosine" in bnsgd_numba.available_schedulers()

    class Typo:
        @hookimpl
        def bnsgd_register_normalisations(self, register):
            pass

    with pytest.raises(registry.PluginError, match="unknown hook 'bnsgd_register_normalisations'"):
        bnsgd_numba.register_plugin(Typo(), name="typo")


def test_hook_with_a_wrong_argument_name_is_reported(entry_points, plugin_dir):
    source = """
    from bnsgd_numba import hookimpl

    @hookimpl
    def bnsgd_register_schedulers(reg):
        pass
    """
    entry_points.append(plugin_dir("fake_plugin_argname", source))
    assert "invalid hook" in _info("fake_plugin_argname").error


def test_entry_points_are_loaded_lazily_and_once(monkeypatch):
    calls = []
    monkeypatch.setattr(registry, "_entry_points", lambda: calls.append(1) or [])
    registry._REGISTRY.reset()
    assert calls == []
    bnsgd_numba.available_schedulers()
    bnsgd_numba.create_scheduler("step", base_lr=0.1, step_size=3)
    bnsgd_numba.list_plugins()
    assert calls == [1]
    registry._REGISTRY.reset()


def test_import_is_lazy_and_schedulers_need_no_numba():
    code = (
        "import sys, bnsgd_numba\n"
        "assert 'pluggy' not in sys.modules and 'numba' not in sys.modules\n"
        "bnsgd_numba.create_scheduler('cosine', base_lr=0.1, T_max=5).step()\n"
        "assert 'pluggy' in sys.modules and 'numba' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_normalization_created_through_the_registry():
    layer = bnsgd_numba.create_normalization("batch_norm", 4, eps=1e-3)
    assert isinstance(layer, bnsgd_numba.BatchNorm)
    assert layer.num_features == 4 and layer.eps == 1e-3


def test_every_hook_is_documented_and_tested():
    root = Path(__file__).parents[1]
    doc = (root / "docs" / "plugins.md").read_text()
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    hooks = [
        n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("bnsgd_")
    ]
    assert set(hooks) == set(registry.KINDS.values())
    for name in hooks:
        assert getattr(hookspecs, name).__doc__, name
        assert name in doc, f"{name} is not in docs/plugins.md (the plugin guide)"
        assert f"def {name}(" in tests, f"no test implements {name}"


def test_normalization_plugin_at_run_time(entry_points):
    class Norm:
        @hookimpl
        def bnsgd_register_normalizations(self, register):
            register("identity_norm", lambda num_features, **kw: ("identity", num_features))

    bnsgd_numba.register_plugin(Norm(), name="norm")
    assert bnsgd_numba.create_normalization("identity_norm", 5) == ("identity", 5)
    assert bnsgd_numba.registry.normalization_registration("identity_norm").plugin == "norm"


def test_normalization_hook_failure_keeps_batch_norm(entry_points, plugin_dir):
    source = """
    from bnsgd_numba import hookimpl

    @hookimpl
    def bnsgd_register_normalizations(register):
        register("broken_norm", None)
    """
    entry_points.append(plugin_dir("fake_plugin_norm", source))
    assert bnsgd_numba.available_normalizations() == BUILTIN_NORMALIZATIONS
    assert "factory must be callable" in _info("fake_plugin_norm").error


def test_a_plugin_failing_in_one_hook_is_left_out_of_both(entry_points, plugin_dir):
    source = """
    from bnsgd_numba import hookimpl
    from bnsgd_numba.schedulers.decay import ExponentialLR

    @hookimpl
    def bnsgd_register_schedulers(register):
        register("orphan", ExponentialLR)

    @hookimpl
    def bnsgd_register_normalizations(register):
        raise ImportError("optional dependency missing")
    """
    entry_points.append(plugin_dir("fake_plugin_half", source))
    assert "orphan" not in bnsgd_numba.available_schedulers()
    info = _info("fake_plugin_half")
    assert "ImportError: optional dependency missing" in info.error
    assert info.registered == {}


# -- robustness: bad registrations, bad names, plugins that exit ---------------


def test_a_scheduler_that_is_not_a_scheduler_is_reported(entry_points, plugin_dir):
    source = """
    from bnsgd_numba import hookimpl

    @hookimpl
    def bnsgd_register_schedulers(register):
        register("not_a_schedule", dict)
    """
    entry_points.append(plugin_dir("fake_plugin_dict", source))
    assert "not_a_schedule" not in bnsgd_numba.available_schedulers()
    assert "dict is not a subclass of bnsgd_numba.Scheduler" in _info("fake_plugin_dict").error


def test_a_factory_function_must_return_a_scheduler(entry_points):
    class Plugin:
        @hookimpl
        def bnsgd_register_schedulers(self, register):
            register("made", lambda **kw: ExponentialLR(**kw))
            register("fake", lambda **kw: {"lr": 0.1})

    bnsgd_numba.register_plugin(Plugin(), name="factories")
    assert bnsgd_numba.create_scheduler("made", base_lr=1.0, gamma=0.5).step() == 0.5
    with pytest.raises(TypeError, match="'fake' of plugin 'factories' returned dict"):
        bnsgd_numba.create_scheduler("fake")


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"examples": 5}, "examples must be a list"),
        ({"examples": [3]}, r"examples\[0\] must be a dict"),
        ({"examples": {"gamma": 0.5}}, "examples must be a list"),
        ({"standardizes": "yes"}, "standardizes must be True or False"),
        ({"min_rank": 1}, "min_rank"),
    ],
)
def test_bad_metadata_is_refused(entry_points, metadata, message):
    class Plugin:
        @hookimpl
        def bnsgd_register_schedulers(self, register):
            register("meta", ExponentialLR, **metadata)

    with pytest.raises(registry.PluginError, match=message):
        bnsgd_numba.register_plugin(Plugin(), name="meta")
    assert "meta" not in bnsgd_numba.available_schedulers()


@pytest.mark.parametrize("name", [123, b"mine", ""])
def test_register_plugin_wants_a_string_name(entry_points, name):
    class Plugin:
        @hookimpl
        def bnsgd_register_schedulers(self, register):
            register("named", ExponentialLR)

    with pytest.raises(TypeError, match="name must be a non-empty str"):
        bnsgd_numba.register_plugin(Plugin(), name=name)
    assert "named" not in bnsgd_numba.available_schedulers()
    assert all(isinstance(p.name, str) for p in bnsgd_numba.list_plugins())


@pytest.mark.parametrize("plugin", [None, "bnsgd_numba.schedulers.cosine"])
def test_register_plugin_wants_a_plugin_object(entry_points, plugin):
    with pytest.raises(TypeError, match="plugin must be"):
        bnsgd_numba.register_plugin(plugin)


@pytest.mark.parametrize("name", [123, None, ["cosine"], 1.5])
def test_lookups_want_a_string_name(entry_points, name):
    with pytest.raises(TypeError, match="scheduler name must be a str"):
        bnsgd_numba.create_scheduler(name)
    with pytest.raises(TypeError, match="normalization name must be a str"):
        bnsgd_numba.create_normalization(name, 3)


EXITS_AT_IMPORT = """
import sys
sys.exit(3)
"""
EXITS_IN_HOOK = """
import sys
from bnsgd_numba import hookimpl

@hookimpl
def bnsgd_register_schedulers(register):
    sys.exit()
"""
INTERRUPTED_IN_HOOK = """
from bnsgd_numba import hookimpl

@hookimpl
def bnsgd_register_schedulers(register):
    raise KeyboardInterrupt
"""


def test_a_plugin_calling_sys_exit_is_contained(entry_points, plugin_dir):
    entry_points.append(plugin_dir("fake_plugin_exit_import", EXITS_AT_IMPORT))
    entry_points.append(plugin_dir("fake_plugin_exit_hook", EXITS_IN_HOOK))
    entry_points.append(plugin_dir("fake_plugin_ok", GOOD.format(name="fine")))
    assert {"fine", "cosine"} <= set(bnsgd_numba.available_schedulers())
    assert "SystemExit: the plugin called sys.exit(3)" in _info("fake_plugin_exit_import").error
    assert "SystemExit: the plugin called sys.exit(None)" in _info("fake_plugin_exit_hook").error


def test_register_plugin_contains_sys_exit_too(entry_points):
    class Exits:
        @hookimpl
        def bnsgd_register_schedulers(self, register):
            register("gone", ExponentialLR)
            raise SystemExit(1)

    with pytest.raises(registry.PluginError, match="sys.exit"):
        bnsgd_numba.register_plugin(Exits(), name="exits")
    assert "gone" not in bnsgd_numba.available_schedulers()


def test_keyboard_interrupt_in_a_plugin_is_not_swallowed(entry_points, plugin_dir):
    entry_points.append(plugin_dir("fake_plugin_interrupt", INTERRUPTED_IN_HOOK))
    with pytest.raises(KeyboardInterrupt):
        bnsgd_numba.available_schedulers()


def test_sys_exit_while_creating_a_plugins_scheduler_is_a_plugin_error(entry_points):
    def quit_now(**params):
        raise SystemExit(0)

    class Plugin:
        @hookimpl
        def bnsgd_register_schedulers(self, register):
            register("quitter", quit_now)

    bnsgd_numba.register_plugin(Plugin(), name="quitter_plugin")
    with pytest.raises(registry.PluginError, match="'quitter' of plugin 'quitter_plugin'"):
        bnsgd_numba.create_scheduler("quitter")


def test_a_plugin_with_one_invalid_hook_registers_nothing(entry_points, plugin_dir):
    # pluggy adds hooks in name order and keeps those before the one that fails
    source = """
    from bnsgd_numba import hookimpl

    @hookimpl
    def bnsgd_register_normalizations(register):
        register("orphan_norm", lambda num_features, **kw: None)

    @hookimpl
    def bnsgd_register_schedulers(reg):
        pass
    """
    entry_points.append(plugin_dir("fake_plugin_half_valid", source))
    assert "invalid hook" in _info("fake_plugin_half_valid").error
    assert "orphan_norm" not in bnsgd_numba.available_normalizations()
    assert "fake_plugin_half_valid" not in dict(bnsgd_numba.plugin_manager().list_name_plugin())
