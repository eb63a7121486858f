"""``DataParallelSGD``: gradients averaged over the ranks, then the local fused SGD step."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from bnsgd_numba._core.arrays import is_device_array
from bnsgd_numba.distributed._mpi import resolve_comm
from bnsgd_numba.distributed.errors import (
    RankGuard,
    allgather,
    allreduce_in_place,
    broadcast,
    checked_timeout,
)
from bnsgd_numba.sgd.arena import ParameterArena
from bnsgd_numba.sgd.optimizer import SGD


class DataParallelSGD(SGD):
    """SGD over a :class:`~bnsgd_numba.ParameterArena`, its gradients averaged over ranks.

    :meth:`step` does one in-place Allreduce (sum) over the arena's flat
    gradient buffer (``bucket_elements`` splits it into buckets reduced
    concurrently), divides by the number of ranks, then runs the local fused
    SGD step of :class:`~bnsgd_numba.SGD` over the whole arena: every rank
    applies the same update to the same parameters.

    Parameters
    ----------
    arena : ParameterArena
        The model's parameters and gradients (host arrays); the same layout
        (size and dtype, checked) on every rank.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD`` (mpi4py imported only then).
    timeout : float, None or "default"
        Deadline of each collective in seconds; past it the job is aborted
        (see :mod:`bnsgd_numba.distributed.errors`).
    bucket_elements : int, optional
        Split the Allreduce into buckets of this many elements, all in
        flight at once (default: one Allreduce over the whole buffer).
    **sgd_keywords
        ``lr``, ``momentum``, ``dampening``, ``nesterov``, ``weight_decay``,
        ``decoupled_weight_decay``, ``maximize``: as for SGD (a scheduler
        bound to it sets ``lr`` as usual; use the same schedule everywhere).

    Raises
    ------
    TypeError, ValueError
        ``comm`` is not an mpi4py intra-communicator (on this rank, before
        any collective).
    RankFailedError
        On every rank, also a ``TypeError``/``ValueError`` naming the
        argument, when on any rank ``arena``, ``timeout``,
        ``bucket_elements`` or an SGD keyword is bad, or the arenas differ
        in size or dtype between ranks; no parameter is written then.

    Notes
    -----
    - Construction is a collective: the parameters of rank 0 are broadcast
      to every rank, so all start identical.
    - The gradient used is the **mean** of the ranks' gradients. For it to be
      the gradient of the full batch, each rank's loss must be the mean over
      the full batch of its examples' losses times the number of ranks, i.e.
      scale the local mean loss's gradient by ``ranks * local / global``
      (1 for equal parts; :func:`~bnsgd_numba.distributed.train_distributed`
      does it).
    - Results equal single-process SGD on the full batch up to the rounding
      of the reduction order (the sum over ranks is MPI's, the division by
      the number of ranks is exact for powers of two). Every rank must get
      the same bits from the Allreduce, which the MPI standard advises but
      does not require; MPICH's algorithms (reduce-scatter then allgather,
      recursive doubling with a commutative sum) do, and the tests check it
      with MPICH on 2 and 3 ranks; :meth:`parameters_in_sync` checks it at
      run time.
    - Bytes per step: an Allreduce of ``4 * arena.size`` (float32) bytes,
      which a ring or reduce-scatter/allgather algorithm carries as about
      ``2 * (ranks - 1) / ranks`` times that per rank, plus a 16-byte
      agreement Allgather.
    - A failure on any rank inside :meth:`step` (e.g. gradients passed
      explicitly) raises :class:`~bnsgd_numba.distributed.RankFailedError`
      on every rank.
    """

    def __init__(
        self,
        arena: ParameterArena,
        *,
        comm: Any = None,
        timeout: float | None | str = "default",
        bucket_elements: int | None = None,
        **sgd_keywords: Any,
    ) -> None:
        self.comm = resolve_comm(comm, "DataParallelSGD")
        self.timeout, timeout_error = checked_timeout(timeout)
        with RankGuard(
            self.comm,
            "DataParallelSGD()",
            timeout=self.timeout,
            signature_name="arena elements * 100 + bytes per element",
        ) as guard:
            if timeout_error is not None:
                raise timeout_error
            if not isinstance(arena, ParameterArena):
                raise TypeError(
                    f"arena: DataParallelSGD needs a ParameterArena, got {type(arena).__name__}"
                )
            if is_device_array(arena.flat_params):
                raise TypeError("arena: DataParallelSGD works on host arenas only")
            _check_bucket_elements(bucket_elements)
            super().__init__(arena, **sgd_keywords)
            guard.signature = arena.size * 100 + arena.flat_params.dtype.itemsize
        self.bucket_elements = None if bucket_elements is None else int(bucket_elements)
        self._broadcast_parameters(0)

    @property
    def ranks(self) -> int:
        """Number of ranks of the communicator."""
        return self.comm.Get_size()

    def sync_parameters(self, root: int = 0) -> None:
        """Broadcast the parameters of rank ``root`` to every rank (a collective).

        Raises
        ------
        RankFailedError
            (also a ``TypeError``/``ValueError``) on every rank when ``root``
            is not a rank of the communicator on some rank, or differs
            between ranks; nothing is written then.
        """
        with RankGuard(
            self.comm, "DataParallelSGD.sync_parameters", timeout=self.timeout,
            signature_name="root",
        ) as guard:  # fmt: skip
            if isinstance(root, bool) or not isinstance(root, (int, np.integer)):
                raise TypeError(f"root must be an int, got {root!r}")
            if not 0 <= root < self.ranks:
                raise ValueError(f"root must be a rank in [0, {self.ranks}), got {root!r}")
            guard.signature = int(root)
        self._broadcast_parameters(int(root))

    def _broadcast_parameters(self, root: int) -> None:
        assert self.arena is not None
        broadcast(
            self.comm,
            self.arena.flat_params,
            root=root,
            timeout=self.timeout,
            what="DataParallelSGD (parameter broadcast)",
        )

    def allreduce_gradients(self) -> None:
        """Replace the arena's gradients by their mean over the ranks (a collective)."""
        assert self.arena is not None
        flat = self.arena.flat_grads
        if self.ranks == 1:
            return
        what = "DataParallelSGD.step (gradient allreduce)"
        if self.bucket_elements is None or self.bucket_elements >= flat.size:
            allreduce_in_place(self.comm, flat, timeout=self.timeout, what=what)
        else:
            from mpi4py import MPI

            from bnsgd_numba.distributed.errors import wait

            requests = [
                self.comm.Iallreduce(MPI.IN_PLACE, flat[start : start + self.bucket_elements])
                for start in range(0, flat.size, self.bucket_elements)
            ]
            wait(_AllRequests(requests), self.comm, timeout=self.timeout, what=what)
        np.divide(flat, flat.dtype.type(self.ranks), out=flat)

    def step(self, grads: Any = None, *, skip_if_nonfinite: bool = False) -> bool:
        """Average the gradients over the ranks, then take the local SGD step.

        Parameters
        ----------
        grads : None
            Must be None: the step reads the arena's gradients.
        skip_if_nonfinite : bool
            Skip the step (on every rank alike: the check runs on the
            averaged gradients) when a gradient is NaN or infinite.

        Returns
        -------
        bool
            Whether the step was applied.
        """
        with RankGuard(self.comm, "DataParallelSGD.step", timeout=self.timeout):
            if grads is not None:
                raise TypeError(
                    "grads: DataParallelSGD steps on the arena's gradients; write them into "
                    "arena.grads and call step() without grads"
                )
            if not isinstance(skip_if_nonfinite, (bool, np.bool_)):
                raise TypeError(
                    f"skip_if_nonfinite must be True or False, got {skip_if_nonfinite!r}"
                )
        self.allreduce_gradients()
        return super().step(skip_if_nonfinite=skip_if_nonfinite)

    def parameters_in_sync(self) -> bool:
        """Whether every rank holds bitwise the same parameters (a collective).

        Compares a BLAKE2b digest of the flat parameter buffer; costs one
        hash of the parameters and an Allgather of 16 bytes per rank.
        """
        assert self.arena is not None
        digest = hashlib.blake2b(self.arena.flat_params.tobytes(), digest_size=16).digest()
        mine = np.frombuffer(digest, np.uint8).copy()
        table = allgather(
            self.comm,
            mine,
            np.empty((self.ranks, mine.size), np.uint8),
            timeout=self.timeout,
            what="DataParallelSGD.parameters_in_sync",
        )
        return bool(np.all(table == table[0]))

    def __repr__(self) -> str:
        return "DataParallel" + super().__repr__() + f" over {self.ranks} rank(s)"


def _check_bucket_elements(bucket_elements: Any) -> None:
    if bucket_elements is None:
        return
    if isinstance(bucket_elements, bool) or not isinstance(bucket_elements, (int, np.integer)):
        raise TypeError(f"bucket_elements must be a positive int or None, got {bucket_elements!r}")
    if bucket_elements < 1:
        raise ValueError(f"bucket_elements must be a positive int or None, got {bucket_elements!r}")


class _AllRequests:
    """Several MPI requests waited for as one (``Test`` is true when all are done)."""

    def __init__(self, requests: list[Any]) -> None:
        self.requests = requests

    def Test(self) -> bool:  # noqa: N802 (mpi4py's spelling)
        from mpi4py import MPI

        return bool(MPI.Request.Testall(self.requests))

    def Wait(self) -> None:  # noqa: N802
        from mpi4py import MPI

        MPI.Request.Waitall(self.requests)
