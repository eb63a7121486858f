"""Which ranks are still there: what ends a job promptly, naming the rank, when one is gone.

MPI does not tell the ranks waiting in a collective that a peer has left,
so a rank that is gone would leave them waiting for their deadline. Three
things end such a job at once and name the rank:

1. **An uncaught exception** in a job of more than one process: once Python
   has printed the traceback, the rank writes one line naming itself and
   calls ``MPI_Abort`` (the hook is installed, chained to the previous
   ``sys.excepthook``, when the library first uses MPI).
2. **A departure message** when a process exits (end of the script,
   ``sys.exit``): for every communicator on which the library ran a
   collective, the process sends every other rank how many of the library's
   collectives it completed there, then waits for theirs (``MPI_Finalize``
   would wait for them anyway). A rank waiting in a collective the departed
   rank never joined learns it within milliseconds and aborts the job,
   naming that rank.
3. **A roll call at the deadline**: before aborting, a rank whose collective
   missed its deadline asks every other rank what it waits in; the ranks
   waiting in a collective of the library (or exiting) answer at once, and
   the message names the others: alive, but busy, stuck, or blocked outside
   the library's collectives.

A process that ends without ``MPI_Finalize`` (``os._exit``, a signal, a
crash) can say nothing; MPICH's ``mpiexec`` then kills every process of the
job at once. A rank that exits before the first collective the library
runs on a communicator sends no departure there (its peers may never use
it, and a message nobody receives is an error in MPI); the deadline, and
its roll call, catch that case.

The messages go point to point on the communicator itself, with the three
largest tags (``MPI.TAG_UB`` and the two below it): code that receives with
``MPI.ANY_TAG`` on a communicator the library uses could take one.
"""

from __future__ import annotations

import atexit
import sys
import time
from types import TracebackType
from typing import Any

import numpy as np

ABORT_CODE = 75
"""Error code given to ``MPI_Abort`` when the library ends a job."""

ABORT_GRACE = 0.5
"""Seconds between writing the abort message and calling ``MPI_Abort``."""

ROLL_CALL_SECONDS = 1.0
"""How long a rank that missed its deadline waits for the other ranks' answers."""

_MESSAGE_BYTES = 256  # an int64, then UTF-8 text
_EXITED = -1  # the answer of a rank that is exiting
_PREFIX = "bnsgd_numba.distributed: "

_watches: dict[int, Watch | None] = {}
_installed = False


def end_job(comm: Any, line: str) -> None:
    """Write ``line`` on stderr and end every process of the job with ``MPI_Abort``."""
    sys.stderr.write(f"{_PREFIX}{line}; calling MPI_Abort (error code {ABORT_CODE})\n")
    sys.stderr.flush()
    # mpiexec forwards a rank's stderr asynchronously and tears the job down on
    # MPI_Abort: give it a moment to deliver the message first.
    time.sleep(ABORT_GRACE)
    comm.Abort(ABORT_CODE)


def _encode(number: int, text: str) -> np.ndarray:
    message = np.zeros(_MESSAGE_BYTES, np.uint8)
    message[:8] = np.frombuffer(np.int64(number).tobytes(), np.uint8)
    raw = text.encode("utf-8", "replace")[: _MESSAGE_BYTES - 8]
    message[8 : 8 + len(raw)] = np.frombuffer(raw, np.uint8)
    return message


def _decode(message: np.ndarray) -> tuple[int, str]:
    number = int(message[:8].view(np.int64)[0])
    return number, message[8:].tobytes().rstrip(b"\0").decode("utf-8", "replace")


def _tags() -> tuple[int, int, int]:
    from mpi4py import MPI

    top = int(MPI.COMM_WORLD.Get_attr(MPI.TAG_UB))
    return top, top - 1, top - 2


class Watch:
    """The liveness state of one communicator of more than one rank.

    Counts the library's collectives on it (the same sequence on every
    rank), records the departures of other ranks, answers roll calls, and
    ends the job when a collective cannot complete.
    """

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.started = 0
        self.completed = 0
        self.departed: dict[int, int] = {}  # rank -> collectives it completed
        self.depart_tag, self.ask_tag, self.answer_tag = _tags()
        self._status = MPI.Status()
        self._buffer = np.zeros(_MESSAGE_BYTES, np.uint8)
        self._any = MPI.ANY_SOURCE

    def _where(self) -> str:
        return f"rank {self.rank} of {self.size}"

    def _receive(self, tag: int) -> tuple[int, int, str] | None:
        """A pending message with ``tag``: (source, number, text), or None."""
        message = self.comm.Improbe(source=self._any, tag=tag, status=self._status)
        if message is None:
            return None
        message.Recv(self._buffer)
        return (self._status.Get_source(), *_decode(self._buffer))

    def begin(self, what: str) -> int:
        """Start collective number ``started + 1``; end the job if a rank already left."""
        self.started += 1
        self._end_if_departed(self.started, what)
        return self.started

    def end(self) -> None:
        """The collective completed."""
        self.completed += 1

    def poll(self, seq: int, what: str) -> None:
        """Take departures, answer roll calls; end the job if a rank left before ``seq``."""
        while (message := self._receive(self.depart_tag)) is not None:
            self.departed[message[0]] = message[1]
        self._answer_roll_calls(seq, what)
        self._end_if_departed(seq, what)

    def _answer_roll_calls(self, seq: int, what: str) -> None:
        while (message := self._receive(self.ask_tag)) is not None:
            self.comm.Send(_encode(seq, what), dest=message[0], tag=self.answer_tag)

    def _end_if_departed(self, seq: int, what: str) -> None:
        gone = sorted(r for r, done in self.departed.items() if done < seq)
        if gone:
            names = ", ".join(f"rank {r}" for r in gone)
            end_job(
                self.comm,
                f"{self._where()}: {what} cannot complete: {names} exited (end of its script "
                f"or sys.exit) without joining it",
            )

    def missed_deadline(self, seq: int, what: str, timeout: float) -> None:
        """Ask every other rank what it waits in, then end the job naming the absent ones."""
        asks = [
            self.comm.Isend(_encode(seq, what), dest=r, tag=self.ask_tag)
            for r in range(self.size)
            if r != self.rank
        ]
        answers: dict[int, tuple[int, str]] = {}
        stop = time.monotonic() + ROLL_CALL_SECONDS
        while len(answers) < self.size - 1 and time.monotonic() < stop:
            message = self._receive(self.answer_tag)
            if message is None:
                self.poll(seq, what)
                time.sleep(0.001)
            else:
                answers[message[0]] = message[1:]
        del asks  # never completed on purpose: the job ends here
        absent = [r for r in range(self.size) if r != self.rank and r not in answers]
        parts = []
        if absent:
            names = ", ".join(f"rank {r}" for r in absent)
            parts.append(
                f"{names} did not answer (busy, stuck, waiting outside bnsgd_numba's "
                "collectives, or exited before its first one on this communicator)"
            )
        for r, (number, text) in sorted(answers.items()):
            if number == _EXITED:
                parts.append(f"rank {r} is exiting")
            elif number != seq or text != what:
                parts.append(f"rank {r} waits in {text}")
        if not parts:
            parts.append("every other rank waits in it too (raise the deadline)")
        end_job(
            self.comm,
            f"{self._where()}: {what} did not complete within {timeout:g} s: " + "; ".join(parts),
        )

    def depart(self) -> list[Any]:
        """Send this rank's departure to every other rank; return the send requests."""
        message = _encode(self.completed, "exited")
        return [
            self.comm.Isend(message, dest=r, tag=self.depart_tag)
            for r in range(self.size)
            if r != self.rank
        ]

    def exchange_pending(self) -> bool:
        """Take departures, answer roll calls as exiting; whether some rank has not left yet."""
        while (message := self._receive(self.depart_tag)) is not None:
            self.departed[message[0]] = message[1]
        self._answer_roll_calls(_EXITED, "exit")
        return len(self.departed) < self.size - 1


def watch(comm: Any) -> Watch | None:
    """The :class:`Watch` of an mpi4py communicator of more than one rank, else None."""
    handle = getattr(comm, "handle", None)
    if not isinstance(handle, int):
        return None  # not an mpi4py communicator: no liveness messages
    found = _watches.get(handle, False)
    if found is None:
        return None
    if found is False or found.comm != comm:
        found = Watch(comm) if comm.Get_size() > 1 else None
        _watches[handle] = found
    return found


def _exit_exchange() -> None:
    """At exit: departures sent to, and received from, every rank of every watched comm."""
    from mpi4py import MPI

    if not MPI.Is_initialized() or MPI.Is_finalized():
        return
    watches = [
        w for w in _watches.values() if w is not None and w.completed and w.comm != MPI.COMM_NULL
    ]
    sends = [request for w in watches for request in w.depart()]
    while True:
        pending = [w for w in watches if w.exchange_pending()]
        if not pending and MPI.Request.Testall(sends):
            return
        time.sleep(0.001)


def _excepthook(
    previous: Any,
    kind: type[BaseException],
    value: BaseException,
    traceback: TracebackType | None,
) -> None:
    previous(kind, value, traceback)
    from mpi4py import MPI

    if MPI.Is_initialized() and not MPI.Is_finalized():
        world = MPI.COMM_WORLD
        end_job(
            world,
            f"rank {world.Get_rank()} of {world.Get_size()} ended with an uncaught "
            f"{kind.__name__}: {value}",
        )


def install(comm: Any) -> None:
    """Once per process, when ``MPI.COMM_WORLD`` has more than one rank: the exit hooks.

    ``sys.excepthook`` ends the job on an uncaught exception (after the
    previous hook printed it), and an ``atexit`` handler exchanges the
    departure messages (it runs before mpi4py's ``MPI_Finalize``).
    """
    global _installed
    if _installed or not isinstance(getattr(comm, "handle", None), int):
        return
    from mpi4py import MPI

    _installed = True
    if MPI.COMM_WORLD.Get_size() == 1:
        return
    previous = sys.excepthook
    sys.excepthook = lambda kind, value, traceback: _excepthook(previous, kind, value, traceback)
    atexit.register(_exit_exchange)
