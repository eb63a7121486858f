"""Numba-compiled Batch Normalization and SGD kernels for NumPy and CUDA arrays.

Importing the package compiles nothing and imports neither numba nor pluggy:
every public name is loaded from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_LAZY_NAMES = {
    # BatchNorm (NumPy arrays on the CPU, CUDA arrays on the GPU)
    "batch_norm_forward": "batch_norm",
    "batch_norm_backward": "batch_norm",
    "BatchNormOutput": "batch_norm",
    "BatchNormGrads": "batch_norm",
    "BatchNorm": "batch_norm",
    # SGD
    "sgd_step": "sgd",
    "SGD": "sgd",
    "ParameterArena": "sgd",
    "DeviceParameterArena": "sgd",
    "clip_grad_norm": "sgd",
    "clip_grad_value": "sgd",
    # plugin registry and schedulers
    "hookimpl": "hookspecs",
    "register_plugin": "registry",
    "unregister_plugin": "registry",
    "create_scheduler": "registry",
    "available_schedulers": "registry",
    "create_normalization": "registry",
    "available_normalizations": "registry",
    "list_plugins": "registry",
    "plugin_manager": "registry",
    "Scheduler": "schedulers.base",
    # CUDA
    "cuda_available": "_core.cuda",
}

__all__ = sorted(_LAZY_NAMES) + ["__version__"]


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'bnsgd_numba' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
