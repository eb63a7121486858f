"""The plugin registry: schedulers and normalizations found through pluggy.

Plugins come from three places, loaded lazily and once, on the first call of
any function here:

1. the built-in plugin modules listed in :data:`BUILTIN_PLUGINS`;
2. the entry points of the group ``bnsgd_numba`` of installed distributions
   (``[project.entry-points.bnsgd_numba]``);
3. :func:`register_plugin`, for plugins defined in a script or a test.

Every plugin goes through the same hooks (:mod:`bnsgd_numba.hookspecs`); the
built-ins have no back door. A third-party plugin that fails to import,
carries a misspelled hook, raises while registering (``sys.exit()``
included; only ``KeyboardInterrupt`` passes through), or registers something
unusable (a scheduler that is not a :class:`~bnsgd_numba.Scheduler`, a name
that is not an identifier, ``examples`` that are not a list of dicts) is
recorded with its name (see :func:`list_plugins` and ``bnsgd-numba
plugins``) and left out; the other plugins work. Two plugins registering one name make that name an error
naming both plugins (no silent override): looking it up raises
:class:`DuplicateNameError`, and :func:`register_plugin` refuses the second
one. The environment variable ``BNSGD_NUMBA_BLOCK_PLUGINS`` (comma-separated
plugin names, read when plugins are first loaded) blocks plugins, built-in or
not; that is how one side of a conflict is switched off.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from bnsgd_numba import hookspecs
from bnsgd_numba.hookspecs import PROJECT_NAME

#: The entry-point group third-party plugins declare (same as the pluggy project name).
ENTRY_POINT_GROUP = PROJECT_NAME
#: Comma-separated plugin names to block (entry-point names or built-in module names).
BLOCK_ENV_VAR = "BNSGD_NUMBA_BLOCK_PLUGINS"
#: The built-in plugin modules, registered in this order before any entry point.
BUILTIN_PLUGINS = (
    "bnsgd_numba.schedulers.decay",
    "bnsgd_numba.schedulers.cosine",
    "bnsgd_numba.schedulers.piecewise",
    "bnsgd_numba.schedulers.cyclic",
    "bnsgd_numba.schedulers.plateau",
    "bnsgd_numba.schedulers.composite",
    "bnsgd_numba.normalizations.batch_norm",
    "bnsgd_numba.normalizations.sync_batch_norm",
    "bnsgd_numba.normalizations.layer_norm",
    "bnsgd_numba.normalizations.group_norm",
    "bnsgd_numba.normalizations.instance_norm",
    "bnsgd_numba.normalizations.rms_norm",
    "bnsgd_numba.normalizations.batch_renorm",
    "bnsgd_numba.normalizations.ghost_batch_norm",
    "bnsgd_numba.normalizations.frozen_batch_norm",
)
#: The registrable kinds and the hook each comes from.
KINDS = {
    "scheduler": "bnsgd_register_schedulers",
    "normalization": "bnsgd_register_normalizations",
}


class RegistryError(Exception):
    """A plugin or a name in the registry is unusable."""


class DuplicateNameError(RegistryError):
    """Two plugins registered one name."""


class UnknownNameError(RegistryError, ValueError):
    """No plugin registered the requested name."""


class PluginError(RegistryError):
    """A plugin given to :func:`register_plugin` failed to register."""


@dataclass(frozen=True)
class Registration:
    """One name registered by one plugin.

    Attributes
    ----------
    kind : str
        ``"scheduler"`` or ``"normalization"``.
    name : str
        The registered name.
    factory : callable
        Called with the user's arguments to build the object.
    plugin : str
        Name of the plugin that registered it.
    metadata : mapping
        Keyword arguments given to ``register`` besides name and factory
        (``examples``, ``standardizes``, ...), used by the conformance kit.
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PluginInfo:
    """What :func:`list_plugins` reports about one plugin.

    Attributes
    ----------
    name : str
        Plugin name (entry-point name, module name, or given name).
    origin : str
        ``"built-in"``, ``"<distribution> <version>"``, or ``"register_plugin"``.
    registered : dict
        Kind -> names it registered.
    error : str or None
        Why it failed (import, hook validation, or registration), if it did.
    blocked : bool
        Whether ``BNSGD_NUMBA_BLOCK_PLUGINS`` blocked it.
    """

    name: str
    origin: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    blocked: bool = False


class _PluginManager(pluggy.PluginManager):
    """Treats every ``bnsgd_*`` routine as a hook, so check_pending catches misspellings."""

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("bnsgd_") and inspect.isroutine(getattr(plugin, name)):
            opts = {
                "wrapper": False,
                "hookwrapper": False,
                "optionalhook": False,
                "tryfirst": False,
                "trylast": False,
                "specname": None,
            }
        return opts


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    """Return the installed entry points of the plugin group."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _blocked_names() -> set[str]:
    raw = os.environ.get(BLOCK_ENV_VAR, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}"


def _contained(exc: BaseException) -> None:
    """Re-raise what a plugin's failure must not swallow: the user's Ctrl-C."""
    if isinstance(exc, KeyboardInterrupt):
        raise exc


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__} {name!r}")
    return name


def _check_registration(kind: str, name: Any, factory: Any, metadata: dict[str, Any]) -> None:
    """Raise if ``register(name, factory, **metadata)`` cannot give a usable entry."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{kind} name must be an identifier-like string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"{kind} {name!r}: factory must be callable, got {factory!r}")
    if kind == "scheduler" and isinstance(factory, type):
        from bnsgd_numba.schedulers.base import Scheduler

        if not issubclass(factory, Scheduler):
            raise TypeError(
                f"scheduler {name!r}: {factory.__name__} is not a subclass of "
                "bnsgd_numba.Scheduler (register the class, or a function returning one)"
            )
    if kind == "normalization" and isinstance(factory, type) and factory.__module__ == "builtins":
        raise TypeError(f"normalization {name!r}: {factory.__name__} is not a layer factory")
    examples = metadata.get("examples", [])
    if isinstance(examples, (str, bytes, Mapping)) or not isinstance(examples, Iterable):
        raise TypeError(f"{kind} {name!r}: examples must be a list of dicts, got {examples!r}")
    for i, example in enumerate(examples):
        if not isinstance(example, Mapping) or not all(isinstance(k, str) for k in example):
            raise TypeError(
                f"{kind} {name!r}: examples[{i}] must be a dict of keyword arguments, "
                f"got {example!r}"
            )
    for flag in ("standardizes", "batch_statistics"):
        if flag in metadata and not isinstance(metadata[flag], bool):
            raise TypeError(f"{kind} {name!r}: {flag} must be True or False")
    rank = metadata.get("min_rank", 2)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 2:
        raise ValueError(f"{kind} {name!r}: min_rank must be an integer >= 2, got {rank!r}")


class _Registry:
    """The plugin manager plus the name tables built from its hooks."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._pm: _PluginManager | None = None
        self._plugins: dict[str, PluginInfo] = {}
        self._tables: dict[str, dict[str, Registration]] | None = None
        self._conflicts: dict[tuple[str, str], list[str]] = {}

    # -- loading ----------------------------------------------------------------------
    @property
    def pm(self) -> _PluginManager:
        with self._lock:
            if self._pm is None:
                self._load()
            assert self._pm is not None
            return self._pm

    def _load(self) -> None:
        pm = _PluginManager(PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        self._pm = pm
        self._plugins = {}
        blocked = _blocked_names()
        for name in blocked:
            pm.set_blocked(name)
        for module_name in BUILTIN_PLUGINS:
            info = PluginInfo(module_name, "built-in", blocked=module_name in blocked)
            self._plugins[module_name] = info
            if not info.blocked:
                # a built-in that fails to import is a bug in this package: let it raise
                pm.register(importlib.import_module(module_name), name=module_name)
        for ep in _entry_points():
            self._load_entry_point(ep, blocked)
        pm.check_pending()
        self._tables = None

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint, blocked: set[str]) -> None:
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else f"entry point {ep.value}"
        info = PluginInfo(ep.name, origin, blocked=ep.name in blocked)
        if ep.name in self._plugins:
            info.error = (
                f"plugin name {ep.name!r} is already taken by {self._plugins[ep.name].origin}"
            )
            self._plugins[f"{ep.name} ({origin})"] = info
            return
        self._plugins[ep.name] = info
        if info.blocked:
            return
        try:
            plugin = ep.load()
        except BaseException as exc:  # SystemExit too: a plugin must not end the process
            _contained(exc)
            info.error = f"failed to import {ep.value!r}: {_describe(exc)}"
            return
        info.error = self._register_checked(plugin, ep.name)

    def _register_checked(self, plugin: Any, name: str) -> str | None:
        """Register ``plugin``; on a hook error unregister it and return the message."""
        assert self._pm is not None
        try:
            self._pm.register(plugin, name=name)
            self._pm.check_pending()
        except BaseException as exc:
            _contained(exc)
            # pluggy keeps the hooks it added before the one that failed: drop them all
            if self._pm.get_plugin(name) is plugin:
                self._pm.unregister(name=name)
            detail = str(exc) if isinstance(exc, pluggy.PluginValidationError) else _describe(exc)
            return f"invalid hook: {detail}"
        return None

    # -- name tables ----------------------------------------------------------------------
    def tables(self) -> dict[str, dict[str, Registration]]:
        with self._lock:
            pm = self.pm
            if self._tables is None:
                self._tables = self._build_tables(pm)
            return self._tables

    def _build_tables(self, pm: _PluginManager) -> dict[str, dict[str, Registration]]:
        tables: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        self._conflicts = {}
        for info in self._plugins.values():
            # registrations are recomputed; import and hook-validation errors stay
            if info.error is None or info.error.startswith("registration failed"):
                info.registered = {}
                info.error = None
        # a plugin whose hook raises is left out entirely, both kinds
        calls: list[tuple[str, str, list[Registration]]] = []
        failed: set[str] = set()
        for kind, hook_name in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():  # registration order
                if impl.hookwrapper or impl.wrapper:
                    continue
                staged = self._call_impl(kind, impl)
                if staged is None:
                    failed.add(impl.plugin_name)
                else:
                    calls.append((kind, impl.plugin_name, staged))
        for kind, plugin_name, staged in calls:
            if plugin_name not in failed:
                self._add(tables[kind], plugin_name, staged)
        for kind, name in self._conflicts:
            tables[kind].pop(name, None)
        return tables

    def _call_impl(self, kind: str, impl: Any) -> list[Registration] | None:
        """Call one hook implementation; return its registrations, or None if it raised."""
        plugin_name = impl.plugin_name
        info = self._plugins.setdefault(plugin_name, PluginInfo(plugin_name, "register_plugin"))
        staged: list[Registration] = []

        def register(name: str, factory: Callable[..., Any], **metadata: Any) -> None:
            _check_registration(kind, name, factory, metadata)
            if any(r.name == name for r in staged):
                raise ValueError(f"{kind} {name!r} registered twice by one plugin")
            staged.append(Registration(kind, name, factory, plugin_name, dict(metadata)))

        try:
            impl.function(**{arg: register for arg in impl.argnames})
        except BaseException as exc:  # SystemExit too: a plugin must not end the process
            _contained(exc)
            function = getattr(impl.function, "__name__", repr(impl.function))
            info.error = f"registration failed in {function}: {_describe(exc)}"
            return None
        return staged

    def _add(
        self, table: dict[str, Registration], plugin_name: str, staged: list[Registration]
    ) -> None:
        info = self._plugins[plugin_name]
        for registration in staged:
            key = (registration.kind, registration.name)
            if key in self._conflicts:
                self._conflicts[key].append(plugin_name)
            elif registration.name in table:
                self._conflicts[key] = [table[registration.name].plugin, plugin_name]
            else:
                table[registration.name] = registration
            info.registered.setdefault(registration.kind, []).append(registration.name)

    def conflicts(self) -> dict[tuple[str, str], list[str]]:
        self.tables()
        return dict(self._conflicts)

    def lookup(self, kind: str, name: str) -> Registration:
        _check_name(name, f"{kind} name")
        table = self.tables()[kind]
        if name in table:
            return table[name]
        owners = self._conflicts.get((kind, name))
        if owners:
            raise DuplicateNameError(
                f"{kind} {name!r} is registered by more than one plugin: "
                + " and ".join(repr(o) for o in owners)
                + f"; block all but one with {BLOCK_ENV_VAR}=<plugin name>"
            )
        available = sorted(table)
        close = difflib.get_close_matches(name, available, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(
            f"unknown {kind} {name!r}.{hint} Available: {', '.join(available) or '(none)'}"
        )

    # -- explicit registration ---------------------------------------------------------------
    def register(self, plugin: Any, name: str | None) -> str | None:
        if plugin is None or isinstance(plugin, (str, bytes)):
            raise TypeError(f"plugin must be a module, class or object with hooks, got {plugin!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"name must be a non-empty str or None, got {name!r}")
        with self._lock:
            pm = self.pm
            name = name or pm.get_canonical_name(plugin)
            if pm.is_blocked(name):
                return None
            if pm.has_plugin(name):
                raise PluginError(f"a plugin named {name!r} is already registered")
            self._plugins[name] = PluginInfo(name, "register_plugin")
            error = self._register_checked(plugin, name)
            if error is None:
                before = set(self._conflicts)
                self._tables = None
                self.tables()
                error = self._plugins[name].error
                new = [k for k in self._conflicts if k not in before and name in self._conflicts[k]]
                if error is None and new:
                    kind, dup = new[0]
                    self._forget(name)
                    others = [o for o in self._conflicts.get(new[0], []) if o != name]
                    raise DuplicateNameError(
                        f"plugin {name!r} registers {kind} {dup!r}, already registered by "
                        f"plugin {others[0] if others else '?'!r}"
                    )
            if error is not None:
                self._forget(name)
                raise PluginError(f"plugin {name!r}: {error}")
            return name

    def _forget(self, name: str) -> None:
        assert self._pm is not None
        if self._pm.has_plugin(name):
            self._pm.unregister(name=name)
        self._plugins.pop(name, None)
        self._tables = None

    def unregister(self, plugin_or_name: Any) -> None:
        with self._lock:
            pm = self.pm
            if isinstance(plugin_or_name, str):
                name = plugin_or_name
            else:
                found = pm.get_name(plugin_or_name)
                if found is None:
                    raise PluginError(f"{plugin_or_name!r} is not registered")
                name = found
            if not pm.has_plugin(name):
                raise PluginError(f"no plugin named {name!r} is registered")
            self._forget(name)

    def plugins(self) -> list[PluginInfo]:
        self.tables()
        return list(self._plugins.values())

    def reset(self) -> None:
        """Forget everything; the next use loads plugins again (for tests)."""
        with self._lock:
            self._pm = None
            self._plugins = {}
            self._tables = None
            self._conflicts = {}


_REGISTRY = _Registry()


def plugin_manager() -> pluggy.PluginManager:
    """Return the pluggy plugin manager, loading the plugins on first use."""
    return _REGISTRY.pm


def register_plugin(plugin: Any, name: str | None = None) -> str | None:
    """Register a plugin object (module, class or instance) defined at run time.

    Parameters
    ----------
    plugin : object
        Anything with ``bnsgd_*`` hook functions.
    name : str, optional
        Plugin name; defaults to pluggy's canonical name (a module's name).

    Returns
    -------
    str or None
        The plugin name, or None if ``BNSGD_NUMBA_BLOCK_PLUGINS`` blocks it.

    Raises
    ------
    TypeError
        ``plugin`` is None or a string, or ``name`` is not a non-empty str.
    PluginError
        The plugin has a misspelled hook, its hook raised (``sys.exit()``
        included) or registered something unusable; nothing of it stays
        registered.
    DuplicateNameError
        It registers a name another plugin has; nothing of it stays registered.
    """
    return _REGISTRY.register(plugin, name)


def unregister_plugin(plugin: Any) -> None:
    """Unregister a plugin given as the object or its name.

    Parameters
    ----------
    plugin : object or str
        What :func:`register_plugin` got, or the name it returned.
    """
    _REGISTRY.unregister(plugin)


def scheduler_registration(name: str) -> Registration:
    """Return the :class:`Registration` of scheduler ``name`` (its class and metadata)."""
    return _REGISTRY.lookup("scheduler", name)


def normalization_registration(name: str) -> Registration:
    """Return the :class:`Registration` of normalization ``name``."""
    return _REGISTRY.lookup("normalization", name)


def _create(registration: Registration, args: tuple[Any, ...], params: dict[str, Any]) -> Any:
    """Call a registered factory; a plugin's ``sys.exit()`` becomes a PluginError."""
    try:
        return registration.factory(*args, **params)
    except SystemExit as exc:
        raise PluginError(
            f"{registration.kind} {registration.name!r} of plugin {registration.plugin!r}: "
            f"{_describe(exc)}"
        ) from exc


def create_scheduler(name: str, *, base_lr: float | None = None, **params: Any) -> Any:
    """Create the registered scheduler ``name``.

    Parameters
    ----------
    name : str
        Registered name, e.g. ``"cosine"``; see :func:`available_schedulers`.
    base_lr : float, optional
        The learning rate the schedule scales (schedules that derive it,
        such as ``one_cycle``, accept it only if it agrees). Left out, the
        scheduler takes the optimizer's ``lr`` when it is bound
        (``create_scheduler("cosine", T_max=100).bind(optimizer)``), as a
        PyTorch scheduler takes its optimizer's.
    **params
        The schedule's keyword arguments (PyTorch's names and defaults).

    Returns
    -------
    Scheduler
        A new scheduler at step 0.

    Raises
    ------
    TypeError, ValueError
        ``name`` is not a str, or a parameter is bad (the message names it).
    UnknownNameError
        No such name; the message lists the available ones.
    DuplicateNameError
        Two plugins registered ``name``; the message names both.
    PluginError
        The plugin's factory called ``sys.exit()`` or returned something
        other than a :class:`~bnsgd_numba.Scheduler` (``TypeError``).
    """
    from bnsgd_numba.schedulers.base import Scheduler

    registration = scheduler_registration(name)
    if base_lr is not None:
        params["base_lr"] = base_lr
    scheduler = _create(registration, (), params)
    if not isinstance(scheduler, Scheduler):
        raise TypeError(
            f"scheduler {name!r} of plugin {registration.plugin!r} returned "
            f"{type(scheduler).__name__}, not a bnsgd_numba.Scheduler"
        )
    return scheduler


def available_schedulers() -> list[str]:
    """Return the sorted names of the usable registered schedulers."""
    return sorted(_REGISTRY.tables()["scheduler"])


def create_normalization(name: str, *args: Any, **params: Any) -> Any:
    """Create the registered normalization ``name`` (e.g. ``"batch_norm"``).

    Parameters
    ----------
    name : str
        Registered name; see :func:`available_normalizations`.
    *args, **params
        Passed to its factory, e.g. ``num_features`` and ``eps`` for
        ``batch_norm``.

    Returns
    -------
    object
        The layer.
    """
    return _create(normalization_registration(name), args, params)


def available_normalizations() -> list[str]:
    """Return the sorted names of the usable registered normalizations."""
    return sorted(_REGISTRY.tables()["normalization"])


def list_plugins() -> list[PluginInfo]:
    """Return every plugin seen, with its origin, registrations and failure, if any."""
    return _REGISTRY.plugins()


def name_conflicts() -> dict[tuple[str, str], list[str]]:
    """Return ``{(kind, name): [plugin, plugin, ...]}`` for names registered twice."""
    return _REGISTRY.conflicts()
