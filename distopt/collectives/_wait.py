"""Waiting for late ranks without burning a core.

MPICH's blocking collectives poll without pause: a rank that waits 5 s for a slow peer spends
5 s of CPU that the peer (or the data loader) could use on a shared node. `allreduce` starts
the same all-reduce non-blocking and tests it, first in a tight loop for `SPIN` seconds (ranks
that arrive together pay nothing more), then with sleeps that grow from `FIRST_SLEEP` to
`MAX_SLEEP`: a long wait costs about one wake-up per `MAX_SLEEP`, and at most about
`MAX_SLEEP` of latency after the last rank arrives. The guard's check, the first all-reduce of
every guarded collective, waits this way, so the payload that follows starts with every rank
present (`benchmarks/wait.py` measures both waits).
"""

from __future__ import annotations

import time

import numpy as np

SPIN = 1e-3
FIRST_SLEEP = 5e-5
MAX_SLEEP = 1e-3
ENABLED = True  # False: MPI's blocking call (busy polling), for the benchmark's baseline


def wait(request) -> None:
    """Completes an MPI `request`: spins for `SPIN` s, then sleeps between tests."""
    now = time.perf_counter
    end = now() + SPIN
    while not request.Test():
        if now() >= end:
            break
    else:
        return
    pause = FIRST_SLEEP
    while not request.Test():
        time.sleep(pause)
        pause = min(2 * pause, MAX_SLEEP)


def allreduce(communicator, buf: np.ndarray, op: str = "sum") -> None:
    """`communicator.allreduce(buf, op)` in place, waiting as described above on MPI.

    Collective: call on all ranks, in the same order.
    """
    comm = getattr(communicator, "mpi_comm", None)
    if not ENABLED or comm is None or communicator.size == 1:
        communicator.allreduce(buf, op)
        return
    from mpi4py import MPI

    ops = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX}
    wait(comm.Iallreduce(MPI.IN_PLACE, buf, op=ops[op]))
