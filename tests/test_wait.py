"""Ranks waiting for a late one sleep between tests of the request instead of spinning."""

import threading
import time

import numpy as np
import pytest

from distopt.distribute import MPIStrategy, ReduceOp

LATE = 1.5  # seconds the last rank arrives after the others


def _voluntary_switches() -> int:
    """How often this thread gave up the CPU by itself (sleeping or blocking): a thread
    that busy-polls is only ever preempted."""
    with open(f"/proc/self/task/{threading.get_native_id()}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc/self/task/<tid>/status")


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_ranks_waiting_for_a_late_rank_sleep(comm_world):
    if comm_world.size < 2:
        pytest.skip("needs a peer to wait for")
    strategy = MPIStrategy()
    late = strategy.communicator.rank == comm_world.size - 1
    x = np.ones(3)
    strategy.reduce(ReduceOp.SUM, x)  # everyone is in step from here
    if late:
        time.sleep(LATE)
    before = _voluntary_switches()
    start = time.monotonic()
    total = strategy.reduce(ReduceOp.SUM, x)
    waited, switches = time.monotonic() - start, _voluntary_switches() - before
    strategy.close()
    np.testing.assert_array_equal(total, np.full(3, comm_world.size))
    if not late and waited > LATE / 2:
        # Back-off sleeps of at most 1 ms: hundreds of voluntary switches over the wait, where
        # MPI's busy polling makes none (measured: 1103 against 0 over 1.5 s).
        assert switches >= 50, (switches, waited)
