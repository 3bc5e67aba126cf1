"""The deadline of a strategy's first collective: duplicating the user's communicator.

The watchdog of `_deadline.py` asks peers on the strategy's own communicator, which does not
exist until `Dup` completes, so the duplication runs its own deadline on the calling thread:
a nonblocking `Idup`, polled until it completes or `timeout` passes. To name the ranks that
never arrived, each rank first sends every other rank one 8-byte "arrived" message on the
base communicator (a tag no collective uses; only up to `_MAX_NOTICES` ranks).
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

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
    start = time.monotonic()
    peers = [p for p in range(size) if p != rank] if size <= _MAX_NOTICES else []
    token = np.array([rank], dtype=np.int64)
    receives = {p: np.empty(1, dtype=np.int64) for p in peers}
    pending = {p: base.Irecv(buf, source=p, tag=_TAG_ARRIVED) for p, buf in receives.items()}
    sends = [base.Isend(token, dest=p, tag=_TAG_ARRIVED) for p in peers]
    dup, request = base.Idup()
    pause = 1e-5
    while True:
        done = request.Test()
        for p, req in list(pending.items()):
            if req.Test():
                del pending[p]
        if done and not pending:
            break
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            _expire(base, rank, size, timeout, sorted(pending) if peers else None)
        time.sleep(pause)
        pause = min(0.01, pause * 2, max(1e-5, elapsed / 20))
    MPI.Request.Waitall(sends)  # every peer posted its receive before its Idup completed
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
    sys.stderr.write(creation_message(rank, size, timeout, missing) + "\n")
    sys.stderr.flush()
    time.sleep(0.5)  # mpiexec stops forwarding output once it handles the abort
    base.Abort(DEADLINE_EXIT_CODE)
