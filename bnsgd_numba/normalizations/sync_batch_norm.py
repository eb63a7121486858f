"""Built-in plugin: registers :class:`bnsgd_numba.distributed.SyncBatchNorm` as ``sync_batch_norm``.

Registering imports neither numba nor mpi4py, so the registry works on a
machine without MPI. Creating the layer imports them: without mpi4py,
``create_normalization("sync_batch_norm", ...)`` with the default ``comm``
raises an ``ImportError`` telling to ``pip install 'bnsgd-numba[mpi]'``.
Run as a single process (no ``mpiexec``), ``MPI.COMM_WORLD`` has one rank and
the layer computes exactly what ``batch_norm`` computes.
"""

from __future__ import annotations

from typing import Any

from bnsgd_numba.normalizations._base import registration_hook


def sync_batch_norm(*args: Any, **kwargs: Any) -> Any:
    """Create a :class:`bnsgd_numba.distributed.SyncBatchNorm`; mpi4py is imported only here.

    Parameters
    ----------
    *args, **kwargs
        Arguments of ``SyncBatchNorm(num_features, *, comm=None, timeout,
        eps, momentum, affine, track_running_stats, channel_axis, dtype,
        on_nonfinite)``; ``comm`` defaults to ``MPI.COMM_WORLD``.

    Returns
    -------
    SyncBatchNorm
        The layer.

    Raises
    ------
    ImportError
        When mpi4py is missing (and no ``comm`` is given).
    """
    from bnsgd_numba.distributed.sync_batch_norm import SyncBatchNorm

    return SyncBatchNorm(*args, **kwargs)


bnsgd_register_normalizations = registration_hook(
    "sync_batch_norm",
    sync_batch_norm,
    standardizes=True,
    requires=("mpi4py",),
    examples=[{}, {"affine": False}, {"momentum": None, "eps": 1e-3}],
)
