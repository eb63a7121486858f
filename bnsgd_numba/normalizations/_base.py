"""What the built-in normalization plugin modules share: their registration hook.

The layers themselves derive from :class:`bnsgd_numba._core.layer.NormLayer`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from bnsgd_numba.hookspecs import Register, hookimpl


def registration_hook(
    name: str, factory: Callable[..., Any], **metadata: Any
) -> Callable[[Register], None]:
    """Return a ``bnsgd_register_normalizations`` hook registering ``factory`` as ``name``.

    Parameters
    ----------
    name : str
        The name users pass to :func:`bnsgd_numba.create_normalization`.
    factory : callable
        ``factory(num_features, *, dtype, channel_axis, **params)``.
    **metadata
        ``standardizes``, ``batch_statistics``, ``min_rank``, ``examples``...
        (see CONTRIBUTING.md, "A normalization").

    Returns
    -------
    callable
        The hook, to be bound to the name ``bnsgd_register_normalizations`` in
        the plugin module.
    """

    @hookimpl
    def bnsgd_register_normalizations(register: Register) -> None:
        # a fresh copy per call, as a literal in a hook body would be
        register(name, factory, **copy.deepcopy(metadata))

    bnsgd_register_normalizations.__doc__ = f"Register ``{name}`` (:func:`{factory.__name__}`)."
    bnsgd_register_normalizations.__module__ = factory.__module__
    return bnsgd_register_normalizations
