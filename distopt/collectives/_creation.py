"""The deadline of a strategy's first collective: duplicating the user's communicator.

The watchdog of `_deadline.py` asks peers on the strategy's own communicator, which does not
exist until `Dup` completes, so the duplication has its own timer thread, which aborts the job
if `Dup` has not returned within the timeout. (A nonblocking `Idup` polled on the calling
thread needs no thread, but with it 3 of 5 runs of our MPI suite at 3-4 ranks hung, under
MPICH 5.0.) To name the ranks that never arrived, each rank first sends every other rank one
8-byte "arrived" message on the base communicator (a tag no collective uses; up to
`_MAX_NOTICES` ranks, and only when MPI allows threads to call it concurrently). The same
thread polls for the exit notices of `_departure.py`: a rank that exited without arriving will
never arrive, so the job ends within a poll interval instead of at the deadline.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from distopt.collectives import _departure
from distopt.collectives._deadline import (
    DEADLINE_EXIT_CODE,
    DEPARTED_EXIT_CODE,
    TIMEOUT_ENV,
    end_job,
)

WHAT = "MPIStrategy creation"
_TAG_ARRIVED = 0x7D153
_MAX_NOTICES = 64  # beyond this, N^2 notices cost more than naming the missing ranks is worth
_POLL = 0.2  # seconds between looks for exit notices


def dup_with_deadline(base, timeout: float):
    """`base.Dup()`, aborting the job if some rank has not joined within `timeout` s (exit
    `DEADLINE_EXIT_CODE`) or has exited without joining (exit `DEPARTED_EXIT_CODE`).

    Collective: call on all ranks of `base`, in the same order.
    """
    size = base.Get_size()
    from mpi4py import MPI

    notify = size <= _MAX_NOTICES and MPI.Query_thread() >= MPI.THREAD_MULTIPLE
    if size == 1 or (math.isinf(timeout) and not notify):
        return base.Dup()
    rank = base.Get_rank()
    peers = [p for p in range(size) if p != rank] if notify else []
    token = np.array([rank], dtype=np.int64)
    buffers = [np.empty(1, dtype=np.int64) for _ in peers]
    receives = [base.Irecv(b, source=p, tag=_TAG_ARRIVED) for p, b in zip(peers, buffers)]
    sends = [base.Isend(token, dest=p, tag=_TAG_ARRIVED) for p in peers]
    done = threading.Event()

    def watch():
        end = time.monotonic() + timeout
        while not done.wait(min(_POLL, max(0.0, end - time.monotonic()))):
            missing = [p for p, req in zip(peers, receives) if not req.Test()] if notify else None
            if notify:
                gone = [p for p in _departure.exited_members(base) if p in missing]
                if gone and not done.is_set():
                    _expire(base, rank, size, timeout, missing, gone)
                    return
            if time.monotonic() >= end and not done.is_set():
                _expire(base, rank, size, timeout, missing)
                return

    timer = threading.Thread(target=watch, name="distopt-creation-deadline", daemon=True)
    timer.start()
    try:
        dup = base.Dup()
    finally:
        done.set()
        timer.join()  # the requests below are then this thread's alone
    # Every peer sent its notice and posted its receives before entering its Dup.
    MPI.Request.Waitall(receives + sends)
    return dup


def creation_message(rank: int, size: int, timeout: float, missing, gone=()) -> str:
    """The deadline report; `missing`: ranks whose notice never came (None: not known);
    `gone`: those of them known to have exited (then the report is about them, not the
    deadline)."""
    if missing is None:
        arrived_line = "  arrived: not known (ranks do not exchange notices above "
        arrived_line += f"{_MAX_NOTICES} ranks)"
        missing_lines = ["    not known"]
    else:
        arrived = [r for r in range(size) if r not in missing]
        arrived_line = f"  arrived: rank{'s' if len(arrived) > 1 else ''} "
        arrived_line += ", ".join(map(str, arrived))
        missing_lines = [
            f"    rank {r}: exited before creating its MPIStrategy (its script ended or "
            "called sys.exit)"
            if r in gone
            else f"    rank {r}: has not started creating its MPIStrategy (it never reached "
            "`MPIStrategy(...)`, is still busy before it, or exited)"
            for r in missing
        ]
    if gone:
        ranks = ", ".join(map(str, gone))
        first = (f"distopt: rank{'s' if len(gone) > 1 else ''} {ranks} of {size} exited while "
                 f"rank {rank} waits for {'them' if len(gone) > 1 else 'it'} in `{WHAT}` "
                 "(duplicating the communicator).")  # fmt: skip
        code = DEPARTED_EXIT_CODE
    else:
        first = (f"distopt: collective deadline exceeded on rank {rank} of {size}: `{WHAT}` "
                 "(duplicating the communicator) did not complete within "
                 f"collective_timeout={timeout:g} s.")  # fmt: skip
        code = DEADLINE_EXIT_CODE
    return "\n".join([
        first,
        arrived_line,
        "  did not arrive:",
        *missing_lines,
        f"Aborting the job (MPI_Abort, exit code {code}). Creating an MPIStrategy is "
        "collective: create it on every rank, in the same order."
        + ("" if gone else " Change the deadline with MPIStrategy(collective_timeout=...) or "
           f"{TIMEOUT_ENV}."),
    ])  # fmt: skip


def _expire(base, rank, size, timeout, missing, gone=()) -> None:
    message = creation_message(rank, size, timeout, missing, gone)
    leader = missing is None or rank == min(set(range(size)) - set(missing))
    end_job(base.Abort, DEPARTED_EXIT_CODE if gone else DEADLINE_EXIT_CODE, message, leader)
