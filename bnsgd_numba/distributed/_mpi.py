"""The one place mpi4py is imported, lazily, with one clear error without it."""

from __future__ import annotations

from typing import Any

from bnsgd_numba.distributed._liveness import install

_checked: dict[int, Any] = {}  # handle -> the mpi4py communicator accepted with it

INSTALL_HINT = "pip install 'bnsgd-numba[mpi]' (mpi4py and the mpich wheel, which brings mpiexec)"


def mpi() -> Any:
    """Return ``mpi4py.MPI`` (initializing MPI on first use).

    In a job of more than one process this also installs the hooks that end
    the job, naming the rank, when a rank has an uncaught exception or exits
    (see :mod:`bnsgd_numba.distributed._liveness`).

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
    install(MPI.COMM_WORLD)
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
    ValueError
        ``comm`` is ``MPI.COMM_NULL`` (or was freed), or an
        inter-communicator (whose collectives gather from the other group).
    """
    if comm is None:
        return mpi().COMM_WORLD
    handle = getattr(comm, "handle", None)
    if handle is not None and _checked.get(handle) is comm:
        return comm  # checked before (a freed communicator has another handle)
    needed = ("Get_rank", "Get_size", "Iallgather", "Iallreduce", "Ibcast", "Abort")
    missing = [name for name in needed if not hasattr(comm, name)]
    if missing:
        raise TypeError(
            f"{who}: comm must be an mpi4py communicator (such as MPI.COMM_WORLD), got "
            f"{type(comm).__name__} without {', '.join(missing)}"
        )
    if isinstance(handle, int):  # an mpi4py communicator
        from mpi4py import MPI

        if comm == MPI.COMM_NULL:
            raise ValueError(f"{who}: comm is MPI.COMM_NULL (a freed or empty communicator)")
        if comm.Is_inter():
            raise ValueError(
                f"{who}: comm must be an intra-communicator, got an inter-communicator"
            )
        install(comm)
        _checked[handle] = comm
    return comm
