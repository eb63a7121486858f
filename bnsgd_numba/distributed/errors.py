"""One rank's failure raised on every rank, and collectives that cannot hang.

Two rules keep a multi-process run from hanging when something goes wrong:

1. **Agreement before every collective.** Work that may fail on one rank
   only (validating an input, a local kernel) runs inside
   :class:`RankGuard`. Leaving the guard is itself a tiny collective (an
   Allgather of two integers per rank) in which every rank says whether it
   failed. A rank that failed *anywhere* inside a guard (in its own layer or
   in any code before the next collective) takes part in the next agreement
   too, from its guard's exit, so the ranks always meet in the same
   collective. If any rank failed, the messages are exchanged (one more
   Allgather of fixed-size buffers) and every rank raises
   :class:`RankFailedError` naming the failing rank(s). The communicator
   stays usable: no collective is left pending.
2. **A deadline on every collective.** Every collective is started
   non-blocking and waited for with :func:`wait`, which calls
   ``MPI_Abort`` on the communicator (ending every process of the job) with
   a message on stderr when the deadline passes: a rank that is stuck, or
   failed outside any guard, cannot hang the others forever.
3. **A rank that is gone is named at once.** While it waits, :func:`wait`
   also watches for ranks that left (see :mod:`._liveness`): a rank that
   exited before joining the collective ends the job within a second, an
   uncaught exception on any rank ends it at once, and past the deadline
   the message names the ranks that are not waiting in the collective.

The deadline is ``timeout`` seconds (default :data:`DEFAULT_TIMEOUT`, or the
environment variable :data:`TIMEOUT_ENV`; ``None`` or ``0`` means no
deadline). It must cover the slowest rank's work between two collectives,
numba's first compilation included.
"""

from __future__ import annotations

import math
import os
import time
from types import TracebackType
from typing import Any

import numpy as np

from bnsgd_numba.distributed._liveness import ABORT_CODE, ABORT_GRACE, end_job, watch
from bnsgd_numba.distributed._mpi import resolve_comm

__all__ = [
    "ABORT_CODE",
    "ABORT_GRACE",
    "DEFAULT_TIMEOUT",
    "MESSAGE_BYTES",
    "TIMEOUT_ENV",
    "RankFailedError",
    "RankGuard",
    "abort",
    "agree",
    "allgather",
    "allreduce_in_place",
    "broadcast",
    "checked_timeout",
    "resolve_timeout",
    "wait",
]

TIMEOUT_ENV = "BNSGD_NUMBA_MPI_TIMEOUT"
"""Environment variable holding the default deadline of a collective, in seconds."""

DEFAULT_TIMEOUT = 300.0
"""Default deadline of a collective (seconds) when :data:`TIMEOUT_ENV` is not set."""

MESSAGE_BYTES = 1024
"""Bytes of a failure message exchanged between ranks (longer ones are cut)."""

_UNKNOWN = -1  # a signature no rank compares against

# Built-in exception types a RankFailedError also derives from, so that
# ``except ValueError`` catches a ValueError raised on another rank.
_BASES: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        ValueError,
        TypeError,
        FloatingPointError,
        ZeroDivisionError,
        OverflowError,
        ArithmeticError,
        KeyError,
        IndexError,
        LookupError,
        NotImplementedError,
        MemoryError,
    )
}
_CLASSES: dict[str, type[RankFailedError]] = {}


class RankFailedError(RuntimeError):
    """An error raised on one or more ranks, raised on every rank.

    When the first failing rank's exception is (a subclass of) a built-in
    such as ``ValueError``, ``TypeError`` or ``FloatingPointError``, the
    error raised is also an instance of that built-in, on every rank.

    Attributes
    ----------
    where : str
        The operation in which this rank learned of the failure
        (``"SyncBatchNorm.forward"``, ...).
    failures : dict of int to str
        Failing rank -> ``"ExceptionType: message"``.
    failed_in : dict of int to str
        Failing rank -> the operation it failed in.
    rank : int
        The first failing rank.
    size : int
        Number of ranks of the communicator.
    """

    def __init__(
        self,
        where: str,
        failures: dict[int, str],
        size: int,
        failed_in: dict[int, str] | None = None,
    ) -> None:
        self.where = where
        self.failures = dict(sorted(failures.items()))
        self.failed_in = {r: (failed_in or {}).get(r, where) for r in self.failures}
        self.rank = next(iter(self.failures))
        self.size = size
        alike: dict[tuple[str, str], list[int]] = {}
        for r, text in self.failures.items():
            alike.setdefault((self.failed_in[r], text), []).append(r)
        message = "; ".join(
            f"{_rank_list(ranks)} of {size} failed in {place}: {text}"
            for (place, text), ranks in alike.items()
        )
        if any(place != where for place in self.failed_in.values()):
            message += f" (raised here in {where})"
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:  # not KeyError's quoted form for RankFailedKeyError
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        base = getattr(type(self), "_builtin_name", "")
        return (_rebuild, (base, self.where, self.failures, self.size, self.failed_in))


def _rank_list(ranks: list[int]) -> str:
    """``rank 3``, ``ranks 0, 1`` or ``ranks 0-4, 7`` (sorted ranks, runs of 3+ shortened)."""
    runs: list[list[int]] = []
    for r in ranks:
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    names = [f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs]
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(names)


def _rebuild(
    base: str, where: str, failures: dict[int, str], size: int, failed_in: dict[int, str]
) -> RankFailedError:
    return _error_class(base)(where, failures, size, failed_in)


def _error_class(base_name: str) -> type[RankFailedError]:
    base = _BASES.get(base_name)
    if base is None:
        return RankFailedError
    cls = _CLASSES.get(base_name)
    if cls is None:
        namespace = {"__module__": __name__, "_builtin_name": base_name}
        cls = type(f"RankFailed{base_name}", (RankFailedError, base), namespace)
        _CLASSES[base_name] = cls
    return cls


def _builtin_base(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        if cls.__name__ in _BASES and _BASES[cls.__name__] is cls:
            return cls.__name__
    return ""


def resolve_timeout(timeout: float | None | str = "default") -> float | None:
    """Return the deadline in seconds (None: no deadline).

    Parameters
    ----------
    timeout : float, None or "default"
        Seconds (> 0), ``None``/``0`` for none, or ``"default"``: the
        environment variable :data:`TIMEOUT_ENV` if set, else
        :data:`DEFAULT_TIMEOUT`.

    Raises
    ------
    TypeError
        A timeout that is neither a number, None nor a string (a bool too).
    ValueError
        A negative or NaN timeout, a string other than ``"default"``, or
        such a value in the environment variable.
    """
    if type(timeout) is float and 0.0 < timeout < math.inf:
        return timeout  # the library's own calls pass the resolved value on
    source = "timeout"
    if isinstance(timeout, str):
        if timeout != "default":
            raise ValueError(
                f"timeout must be a number of seconds, None or 'default', got {timeout!r}"
            )
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None:
            return DEFAULT_TIMEOUT
        source = TIMEOUT_ENV
        try:
            timeout = float(raw)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.floating, np.integer)):
        raise TypeError(f"{source} must be a number of seconds or None, got {timeout!r}")
    timeout = float(timeout)
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{source} must be >= 0 seconds, got {timeout!r}")
    return None if timeout == 0 or math.isinf(timeout) else timeout


def checked_timeout(timeout: Any) -> tuple[float | None, Exception | None]:
    """:func:`resolve_timeout`, or :data:`DEFAULT_TIMEOUT` and the error it raised.

    A collective operation raises the error inside its first
    :class:`RankGuard` (which runs with the default deadline): a bad
    ``timeout`` on one rank then fails on every rank instead of leaving the
    others waiting.
    """
    try:
        return resolve_timeout(timeout), None
    except (TypeError, ValueError) as error:
        return DEFAULT_TIMEOUT, error


def abort(comm: Any, what: str, timeout: float) -> None:
    """Report a missed deadline on stderr and end every process with ``MPI_Abort``."""
    end_job(
        comm,
        f"rank {comm.Get_rank()} of {comm.Get_size()}: {what} did not complete within "
        f"{timeout:g} s (another rank hangs, or failed outside a RankGuard)",
    )


def wait(request: Any, comm: Any, *, timeout: float | None, what: str) -> None:
    """Wait for a non-blocking MPI request; end the job when it cannot complete.

    Polls ``request.Test()`` (which also drives MPI's progress, as a blocking
    wait would) and yields the processor now and then, so that ranks
    oversubscribing the cores let each other run. Every 32 polls it also
    takes the other ranks' departure messages and roll calls: a rank that
    exited without joining this collective ends the job at once, naming it.
    Past ``timeout`` seconds the job ends too, naming the ranks that are not
    waiting in this collective.
    """
    watched = watch(comm)
    if watched is None and timeout is None:
        request.Wait()
        return
    seq = 0 if watched is None else watched.begin(what)
    deadline = None if timeout is None else time.monotonic() + timeout
    spins = 0
    while not request.Test():
        spins += 1
        if spins % 32 == 0:
            if watched is not None:
                watched.poll(seq, what)
            if deadline is not None and time.monotonic() > deadline:
                assert timeout is not None
                if watched is None:
                    abort(comm, what, timeout)
                else:
                    watched.missed_deadline(seq, what, timeout)
            os.sched_yield()
    if watched is not None:
        watched.end()


def allgather(
    comm: Any, send: np.ndarray, receive: np.ndarray, *, timeout: float | None, what: str
) -> np.ndarray:
    """``receive[r] = send`` of rank ``r``, with a deadline."""
    wait(comm.Iallgather(send, receive), comm, timeout=timeout, what=what)
    return receive


def allreduce_in_place(
    comm: Any, buffer: np.ndarray, *, timeout: float | None, what: str, op: Any = None
) -> np.ndarray:
    """In-place Allreduce (sum by default) of a contiguous buffer, with a deadline."""
    from mpi4py import MPI

    request = comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM if op is None else op)
    wait(request, comm, timeout=timeout, what=what)
    return buffer


def broadcast(
    comm: Any, buffer: np.ndarray, *, root: int = 0, timeout: float | None, what: str
) -> np.ndarray:
    """In-place broadcast of a contiguous buffer from ``root``, with a deadline."""
    wait(comm.Ibcast(buffer, root=root), comm, timeout=timeout, what=what)
    return buffer


def agree(
    comm: Any,
    where: str,
    error: BaseException | None = None,
    *,
    signature: int | None = None,
    signature_name: str = "",
    timeout: float | None,
) -> None:
    """The agreement step: raise on every rank if any rank failed or disagrees.

    Parameters
    ----------
    comm : mpi4py communicator
    where : str
        Operation named in the error.
    error : exception, optional
        This rank's failure, if any.
    signature : int, optional
        A value every rank must hold (a channel count, a buffer size): ranks
        that differ fail on every rank with a ``ValueError`` naming them.
    signature_name : str
        What ``signature`` is, for that message.
    timeout : float or None
        Deadline of each collective.

    Raises
    ------
    RankFailedError
        On every rank, when a rank failed (chained to the original exception
        on the failing rank) or the signatures differ.
    """
    size = comm.Get_size()
    rank = comm.Get_rank()
    mine = np.array(
        [0 if error is None else 1, _UNKNOWN if signature is None else int(signature)],
        dtype=np.int64,
    )
    table = allgather(
        comm, mine, np.empty((size, 2), np.int64), timeout=timeout, what=f"{where} (agreement)"
    )
    failed = np.flatnonzero(table[:, 0])
    if failed.size == 0:
        known = table[table[:, 1] != _UNKNOWN, 1]
        if known.size and np.any(known != known[0]):
            values = ", ".join(f"rank {r}: {v}" for r, v in enumerate(table[:, 1]))
            failures = {
                r: f"ValueError: {signature_name or 'signature'} differs across ranks ({values})"
                for r in range(size)
                if table[r, 1] != _UNKNOWN and table[r, 1] != known[0]
            }
            raise _error_class("ValueError")(where, failures, size)
        return
    text = b""
    if error is not None:
        text = f"{_builtin_base(error)}\0{where}\0{type(error).__name__}: {error}".encode(
            "utf-8", "replace"
        )[:MESSAGE_BYTES]
    send = np.zeros(MESSAGE_BYTES, np.uint8)
    send[: len(text)] = np.frombuffer(text, np.uint8)
    messages = allgather(
        comm,
        send,
        np.empty((size, MESSAGE_BYTES), np.uint8),
        timeout=timeout,
        what=f"{where} (error exchange)",
    )
    failures: dict[int, str] = {}
    failed_in: dict[int, str] = {}
    bases: dict[int, str] = {}
    for r in failed:
        raw = messages[r].tobytes().rstrip(b"\0").decode("utf-8", "replace")
        base, _, rest = raw.partition("\0")
        place, _, message = rest.partition("\0")
        failures[int(r)] = message or "no message"
        failed_in[int(r)] = place or where
        bases[int(r)] = base
    cls = _error_class(bases[int(failed[0])])
    raised = cls(where, failures, size, failed_in)
    if error is not None and rank in failures:
        raise raised from error
    raise raised from None


class RankGuard:
    """Context manager whose exit is the agreement step of :func:`agree`.

    Code inside may fail on some ranks only; on leaving, every rank learns
    whether any rank failed and, if so, raises :class:`RankFailedError`.
    A ``RankFailedError`` raised inside (a nested guard already agreed) goes
    through untouched; ``KeyboardInterrupt``, ``SystemExit`` and other
    non-``Exception`` errors are not caught (an uncaught one ends the job
    with ``MPI_Abort``, a ``sys.exit`` ends it when the other ranks reach
    their next collective).

    Parameters
    ----------
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.
    where : str
        Operation named in the error.
    timeout : float, None or "default"
        Deadline of the agreement's collectives (see :func:`resolve_timeout`).
    signature : int, optional
        A value every rank must hold (see :func:`agree`); it may also be set
        inside the block through :attr:`signature`.
    signature_name : str
        What the signature is.

    Raises
    ------
    TypeError, ValueError
        On construction, naming the bad argument (on this rank only: the
        guard has not agreed yet).

    Examples
    --------
    >>> with RankGuard(comm, "my step", timeout=60):   # doctest: +SKIP
    ...     check_inputs()
    >>> comm.Allreduce(...)   # every rank got here, or every rank raised
    """

    def __init__(
        self,
        comm: Any,
        where: str,
        *,
        timeout: float | None | str = "default",
        signature: int | None = None,
        signature_name: str = "",
    ) -> None:
        if not isinstance(where, str):
            raise TypeError(f"where must be a str, got {type(where).__name__}")
        if not isinstance(signature_name, str):
            raise TypeError(f"signature_name must be a str, got {type(signature_name).__name__}")
        _check_signature(signature)
        self.timeout = resolve_timeout(timeout)
        self.comm = resolve_comm(comm, "RankGuard")
        self.where = where
        self._signature = signature
        self.signature_name = signature_name

    @property
    def signature(self) -> int | None:
        """The value every rank must hold (None: not compared)."""
        return self._signature

    @signature.setter
    def signature(self, value: int | None) -> None:
        _check_signature(value)
        self._signature = value

    def __enter__(self) -> RankGuard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc is not None and (isinstance(exc, RankFailedError) or not isinstance(exc, Exception)):
            return False
        agree(
            self.comm,
            self.where,
            exc,
            signature=self.signature if exc is None else None,
            signature_name=self.signature_name,
            timeout=self.timeout,
        )
        return False


def _check_signature(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"signature must be None or an int, got {value!r}")
    if not 0 <= value < 2**63:
        raise ValueError(f"signature must be in [0, 2**63), got {value!r}")
