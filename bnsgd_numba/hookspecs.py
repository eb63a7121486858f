"""Hook specifications of the ``bnsgd_numba`` plugin system.

A plugin is any module, class or object with functions named after these
hooks and marked with :data:`hookimpl`. Every hook receives a ``register``
callback, so the registry (not the plugin) decides what happens to duplicate
names and broken entries, and can name the plugin that caused them.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT_NAME = "bnsgd_numba"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: The callback a hook receives: ``register(name, factory, **metadata)``.
Register = Callable[..., None]


@hookspec
def bnsgd_register_schedulers(register: Register) -> None:
    """Register learning-rate schedulers: ``register(name, cls, examples=[{...}])``, cls a Scheduler."""


@hookspec
def bnsgd_register_normalizations(register: Register) -> None:
    """Register normalization layers: ``register(name, factory, **metadata)``."""
