"""Data-parallel training over MPI: synchronized BatchNorm and data-parallel SGD.

Needs the ``mpi`` extra (``pip install 'bnsgd-numba[mpi]'``: mpi4py and the
``mpich`` wheel, which brings ``mpiexec``). Importing this package imports
neither mpi4py nor numba; mpi4py is imported when a communicator is first
needed (``comm=None`` means ``MPI.COMM_WORLD``), and its absence is then one
``ImportError`` naming the extra. Run with ``mpiexec -n 4 python script.py``
or ``mpiexec -n 4 bnsgd-numba train --distributed``; see ``docs/distributed.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY_NAMES = {
    "SyncBatchNorm": "sync_batch_norm",
    "DataParallelSGD": "data_parallel",
    "RankFailedError": "errors",
    "RankGuard": "errors",
    "train_distributed": "training",
}

__all__ = sorted(_LAZY_NAMES)


def __getattr__(name: str) -> Any:
    module_name = _LAZY_NAMES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'bnsgd_numba.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
