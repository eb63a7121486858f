"""The one place mpi4py is imported, lazily, with one clear error without it."""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "pip install 'bnsgd-numba[mpi]' (mpi4py and the mpich wheel, which brings mpiexec)"


def mpi() -> Any:
    """Return ``mpi4py.MPI`` (initializing MPI on first use).

    Raises
    ------
    ImportError
        When mpi4py (or an MPI library it can load) is missing, with the
        command that installs them.
    """
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"bnsgd_numba.distributed needs mpi4py: {INSTALL_HINT} ({exc})") from exc
    return MPI


def resolve_comm(comm: Any, who: str) -> Any:
    """Return ``comm``, or ``MPI.COMM_WORLD`` when it is None.

    Raises
    ------
    ImportError
        ``comm`` is None and mpi4py is missing.
    TypeError
        ``comm`` is not an intra-communicator (it must have ``Get_rank``,
        ``Get_size`` and the non-blocking collectives).
    """
    if comm is None:
        return mpi().COMM_WORLD
    needed = ("Get_rank", "Get_size", "Iallgather", "Iallreduce", "Ibcast", "Abort")
    missing = [name for name in needed if not hasattr(comm, name)]
    if missing:
        raise TypeError(
            f"{who}: comm must be an mpi4py communicator (such as MPI.COMM_WORLD), got "
            f"{type(comm).__name__} without {', '.join(missing)}"
        )
    return comm
