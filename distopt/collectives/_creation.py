"""The deadline of a strategy's first collective: duplicating the user's communicator.

The watchdog of `_deadline.py` asks peers on the strategy's own communicator, which does not
exist until `Dup` completes, so the duplication has its own timer thread, which aborts the job
if `Dup` has not returned within the timeout. (A nonblocking `Idup` polled on the calling
thread needs no thread, but with it 3 of 5 runs of our MPI suite at 3-4 ranks hung, under
MPICH 5.0.) To name the ranks that never arrived, each rank first sends every other rank one
8-byte "arrived" message on the base communicator (a tag no collective uses; up to
`_MAX_NOTICES` ranks, and only when MPI allows threads to call it concurrently).
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from distopt._stderr import write_uncaptured
from distopt.collectives._deadline import DEADLINE_EXIT_CODE, TIMEOUT_ENV

WHAT = "MPIStrategy creation"
_TAG_ARRIVED = 0x7D153
_MAX_NOTICES = 64  # beyond this, N^2 notices cost more than naming the missing ranks is worth


def dup_with_deadline(base, timeout: float):
    """`base.Dup()`, aborting the job (exit 124) if some rank has not joined within `timeout` s.

    Collective: call on all ranks of `base`, in the same order.
    """
    size = base.Get_size()
    if size == 1 or math.isinf(timeout):
        return base.Dup()
    from mpi4py import MPI

    rank = base.Get_rank()
    notify = size <= _MAX_NOTICES and MPI.Query_thread() >= MPI.THREAD_MULTIPLE
    peers = [p for p in range(size) if p != rank] if notify else []
    token = np.array([rank], dtype=np.int64)
    buffers = [np.empty(1, dtype=np.int64) for _ in peers]
    receives = [base.Irecv(b, source=p, tag=_TAG_ARRIVED) for p, b in zip(peers, buffers)]
    sends = [base.Isend(token, dest=p, tag=_TAG_ARRIVED) for p in peers]
    done = threading.Event()

    def watch():
        if done.wait(timeout):
            return
        missing = [p for p, req in zip(peers, receives) if not req.Test()] if notify else None
        if not done.is_set():
            _expire(base, rank, size, timeout, missing)

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


def creation_message(rank: int, size: int, timeout: float, missing) -> str:
    """The deadline report; `missing`: ranks whose notice never came (None: not known)."""
    if missing is None:
        arrived_line = "  arrived: not known (ranks do not exchange notices above "
        arrived_line += f"{_MAX_NOTICES} ranks)"
        missing_lines = ["    not known"]
    else:
        arrived = [r for r in range(size) if r not in missing]
        arrived_line = f"  arrived: rank{'s' if len(arrived) > 1 else ''} "
        arrived_line += ", ".join(map(str, arrived))
        missing_lines = [
            f"    rank {r}: has not started creating its MPIStrategy (it never reached "
            "`MPIStrategy(...)`, is still busy before it, or exited)"
            for r in missing
        ]
    return "\n".join([
        f"distopt: collective deadline exceeded on rank {rank} of {size}: `{WHAT}` "
        f"(duplicating the communicator) did not complete within "
        f"collective_timeout={timeout:g} s.",
        arrived_line,
        "  did not arrive:",
        *missing_lines,
        f"Aborting the job (MPI_Abort, exit code {DEADLINE_EXIT_CODE}). Creating an "
        "MPIStrategy is collective: create it on every rank, in the same order. Change the "
        f"deadline with MPIStrategy(collective_timeout=...) or {TIMEOUT_ENV}.",
    ])  # fmt: skip


def _expire(base, rank, size, timeout, missing) -> None:
    write_uncaptured(creation_message(rank, size, timeout, missing) + "\n")
    time.sleep(0.5)  # mpiexec stops forwarding output once it handles the abort
    base.Abort(DEADLINE_EXIT_CODE)
