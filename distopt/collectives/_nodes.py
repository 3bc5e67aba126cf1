"""Which ranks share memory, and whether /dev/shm has room for a shared window.

Ranks on one host are grouped into nodes with `MPI_Comm_split_type(SHARED)`; the env var
DISTOPT_RANKS_PER_NODE=k splits each host's ranks further into groups of k (in rank order),
e.g. to keep a shared window small or to run a multi-node layout on one host. Grouping never
changes results: every reducer sums in rank order, so only the world size fixes the bits.

A window's pages come from the tmpfs behind /dev/shm, which containers often cap at 64 MB;
touching a page past that cap kills the process with SIGBUS and no traceback. So a window is
mapped only when `statvfs` shows room for it; otherwise the caller takes the plain-MPI path.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

RANKS_PER_NODE_ENV = "DISTOPT_RANKS_PER_NODE"
SHM_DIR = "/dev/shm"
# Left free beside a window: MPICH's own segments and other windows of the job still grow.
HEADROOM_BYTES = 16 << 20
_warned: list[bool] = []


def ranks_per_node_from_env() -> int | None:
    """DISTOPT_RANKS_PER_NODE as a positive int (None when unset); ValueError otherwise."""
    raw = os.environ.get(RANKS_PER_NODE_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(
            f"Environment variable {RANKS_PER_NODE_ENV} must be a positive integer (ranks per "
            f"shared-memory group). Received: {RANKS_PER_NODE_ENV}={raw!r}. Unset it to group "
            "the ranks of each host together."
        )
    return int(raw)


class NodeGroups:
    """This rank's node (ranks sharing memory) and, on node leaders, the leaders' group.

    `ranks_per_node` splits each host's ranks into groups of that many consecutive ranks.
    `contiguous`: every node holds a block of consecutive ranks (so node sums, taken in
    node order, are prefixes of the rank-order sum). Collective: create on all ranks.
    """

    def __init__(self, mpi_comm, ranks_per_node: int | None = None):
        from mpi4py import MPI

        self.comm = mpi_comm
        rank = mpi_comm.Get_rank()
        self.node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        if ranks_per_node is not None:
            host = self.node
            self.node = host.Split(host.Get_rank() // ranks_per_node, key=rank)
            host.Free()
        self.local_rank = self.node.Get_rank()
        self.local_size = self.node.Get_size()
        members = np.empty(self.local_size, np.int64)
        self.node.Allgather(np.array([rank], np.int64), members)
        contiguous = members[-1] - members[0] == self.local_size - 1
        leader = self.local_rank == 0
        self.leaders = mpi_comm.Split(0 if leader else MPI.UNDEFINED, key=rank)
        counts = np.array([self.local_size, int(leader), int(contiguous)], dtype=np.int64)
        maxima = np.empty_like(counts)
        mpi_comm.Allreduce(counts, maxima, op=MPI.MAX)
        totals = np.empty_like(counts)
        mpi_comm.Allreduce(counts, totals, op=MPI.SUM)
        index = np.array([self.leaders.Get_rank() if leader else 0], np.int64)
        self.node.Bcast(index, root=0)
        self.node_index = int(index[0])  # nodes in rank order (leaders split by rank)
        self.max_local_size = int(maxima[0])
        self.num_nodes = int(totals[1])
        self.contiguous = int(totals[2]) == mpi_comm.Get_size()

    def room_for(self, nbytes: int) -> bool:
        """True when every node's /dev/shm can hold `nbytes` more (this node's share of a
        window). Warns once per process, on a short node's first rank, when it cannot.

        Collective: call on all ranks, in the same order.
        """
        from mpi4py import MPI

        free = shm_free_bytes()
        fits = free is None or free >= nbytes + HEADROOM_BYTES
        everywhere = np.array([int(fits)], np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, everywhere, op=MPI.MIN)
        if not fits and self.local_rank == 0 and not _warned:
            _warned.append(True)
            warnings.warn(
                f"Only {free >> 20} MB is free in {SHM_DIR}, but shared-memory gradient "
                f"buckets need {-(-nbytes >> 20)} MB more on this node: these gradients are "
                "summed over plain MPI instead (same results, more copying). Give the "
                "container more shared memory (`docker run --shm-size=1g`; in Kubernetes a "
                "memory-backed emptyDir on /dev/shm), or set DISTOPT_SHARED_MEMORY=0 to use "
                "plain MPI without this check.",
                RuntimeWarning,
                stacklevel=4,
            )
        return bool(everywhere[0])

    def free(self) -> None:
        """Frees the node and leaders' communicators. Collective: call on all ranks."""
        from mpi4py import MPI

        for comm in (self.node, self.leaders):
            if comm != MPI.COMM_NULL:
                comm.Free()


def shm_free_bytes(directory: str = SHM_DIR) -> int | None:
    """Bytes an unprivileged process may still use in `directory` (None: cannot tell)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
