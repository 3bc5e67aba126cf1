"""Exit notices on `MPI_COMM_WORLD`: a rank that ends tells the others, so none waits for it.

Under an MPI launcher with several ranks, `import distopt` registers an exit hook that sends
every other rank of `COMM_WORLD` one 8-byte message (up to `MAX_NOTICES` ranks, on a tag no
collective uses) before `MPI_Finalize`. A rank creating an `MPIStrategy` polls for these, so a
peer that ended before creating its own is named within a second, not at the deadline. Once a
strategy exists, its watchdog learns of exits on the strategy's own side channel instead.

After its notice, an exiting rank waits (`linger`) until every other rank has sent its own, or
`EXIT_LINGER` s have passed, before `MPI_Finalize`. A peer that was waiting for it aborts the job
meanwhile: Hydra then kills this rank before it finalized, which keeps the abort's exit code. A
rank killed between `MPI_Finalize` and its exit would turn the job's status into "Killed (signal 9)"
(Hydra ORs the ranks' statuses), hiding the abort's code and message.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np

TAG_EXITED = 0x7D154
MAX_NOTICES = 64  # beyond this, N^2 notices cost more than naming the rank is worth
# Covers a waiting peer's detection (its watchdog ticks at most every second), its 0.5 s output
# grace and the abort's delivery on a loaded machine; only a rank whose peers go on working
# without a collective for longer than this waits it out in full.
EXIT_LINGER = 10.0
# Set for each rank by MPICH/Intel's Hydra (and srun --mpi=pmi2) and by Open MPI. Not
# SLURM_NTASKS: a batch script's own processes have it too, and are no rank.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_lock = threading.Lock()
_gone: set[int] = set()  # world ranks whose notice this process has received
_exit_end: list[float] = []


def launcher_size() -> int:
    """The number of ranks the launcher started, from its environment (1 if none says)."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return 1


def announce_exit(world, timeout: float = 0.5) -> None:
    """Tells every other rank of `world` (COMM_WORLD) that this rank is exiting; waits up
    to `timeout` s for the sends. Point-to-point only: needs no peer to be listening."""
    size, rank = world.Get_size(), world.Get_rank()
    if not 1 < size <= MAX_NOTICES:
        return
    token = np.array([rank], dtype=np.int64)
    requests = [world.Isend(token, dest=p, tag=TAG_EXITED) for p in range(size) if p != rank]
    end = time.monotonic() + timeout
    while requests and time.monotonic() < end:
        requests = [r for r in requests if not r.Test()]
        time.sleep(0.001)


def exit_deadline() -> float:
    """The `time.monotonic()` until which this exiting process waits for its peers' notices,
    fixed by the first call: one `EXIT_LINGER` budget for every channel it waits on."""
    with _lock:
        if not _exit_end:
            _exit_end.append(time.monotonic() + EXIT_LINGER)
        return _exit_end[0]


def linger(world) -> bool:
    """After `announce_exit`: waits until every other rank of `world` has announced its exit too,
    at most until `exit_deadline()`. True when all have. Receives their notices, so none is left
    unreceived at `MPI_Finalize` (UCX warns of each such message at exit)."""
    size, rank = world.Get_size(), world.Get_rank()
    if not 1 < size <= MAX_NOTICES:
        return True
    others = set(range(size)) - {rank}
    end = exit_deadline()
    while True:
        if others <= exited_ranks(world):
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.01)


def exited_ranks(world) -> set[int]:
    """World ranks known to have exited: the notices received so far (kept process-wide)."""
    from mpi4py import MPI

    status = MPI.Status()
    with _lock:
        while world.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_EXITED, status=status):
            buf = np.empty(1, dtype=np.int64)
            world.Recv(buf, source=status.Get_source(), tag=TAG_EXITED)
            _gone.add(status.Get_source())
        return set(_gone)


def exited_members(base) -> list[int]:
    """Ranks of communicator `base` whose world rank has announced its exit."""
    from mpi4py import MPI

    gone = sorted(exited_ranks(MPI.COMM_WORLD))
    if not gone:
        return []
    world_group, base_group = MPI.COMM_WORLD.Get_group(), base.Get_group()
    try:
        ranks = MPI.Group.Translate_ranks(world_group, gone, base_group)
    finally:
        world_group.Free()
        base_group.Free()
    return sorted(r for r in ranks if r != MPI.UNDEFINED)
