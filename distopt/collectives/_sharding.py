"""Optimizer-state sharding (ZeRO-1): which part of each flat arena a rank updates, and the
all-gather that hands every rank the parameters the others updated.

Gradients are summed in the same order as without sharding (so the bits are the same); on
the plain-MPI path only this rank's range is reduced when the step reads nothing else
(`reduce_scatter_flat`). Each rank then updates only its 1/N of every dtype's flat
parameter arena, keeping optimizer state for that part alone, and the updated parts are
all-gathered. Optimizers whose maths needs whole tensors (Adafactor, Lamb, Muon) own whole
tensors instead (`tensor_owners`), laid out so that each rank's tensors are one block of
the arena, which the same all-gather then fills. On one node the all-gather goes through a
shared-memory staging buffer; otherwise through `Allgatherv` in pieces.
"""

from __future__ import annotations

import numpy as np

from distopt.collectives import _timeline
from distopt.collectives._reduce import DEFAULT_PIECE_BYTES
from distopt.collectives._shm import SharedMemoryReducer
from distopt.collectives._windows import _share


class Sharding:
    """This rank's shard of every flat arena, and the all-gather of updated parameters."""

    def __init__(self, communicator, reducer, piece_bytes: int = DEFAULT_PIECE_BYTES):
        self.communicator = communicator
        self.rank, self.size = communicator.rank, communicator.size
        self.piece_bytes = piece_bytes
        self._groups = None
        if isinstance(reducer, SharedMemoryReducer) and reducer.groups.num_nodes == 1:
            self._groups = reducer.groups
        self._staging: dict[tuple, tuple] = {}

    def ranges(self, dtype, n: int) -> list[tuple[int, int]]:
        """Every rank's [start, stop) of an arena of `n` elements of `dtype`."""
        itemsize = np.dtype(dtype).itemsize
        return [_share(n, itemsize, r, self.size) for r in range(self.size)]

    def shard_range(self, dtype, n: int) -> tuple[int, int]:
        """This rank's [start, stop) of an arena of `n` elements of `dtype`."""
        return self.ranges(dtype, n)[self.rank]

    def tensor_owners(self, weights) -> list[int]:
        """The rank that updates each tensor, balancing the sum of `weights` per rank.

        Greedy (largest first, ties by position; each to the least loaded rank, ties to the
        lowest): deterministic, so every rank computes the same owners.
        """
        load = [0] * self.size
        owners = [0] * len(weights)
        for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
            rank = min(range(self.size), key=lambda r: (load[r], r))
            owners[i] = rank
            load[rank] += weights[i]
        return owners

    def allgather(self, arenas, ranges=None) -> None:
        """Fills every rank's shards of each arena from their owners, in place.

        `ranges[k]`: every rank's [start, stop) of `arenas[k]` (default: `self.ranges`).
        Collective: call on all ranks, in the same order, with arenas of the same sizes.
        """
        if self.size == 1:
            return
        with _timeline.span("allgather"):
            for k, arena in enumerate(arenas):
                parts = self.ranges(arena.dtype, arena.size) if ranges is None else ranges[k]
                if self._groups is not None:
                    self._through_shared_memory(arena, parts)
                else:
                    self._through_mpi(arena, parts)

    def _through_mpi(self, arena: np.ndarray, ranges) -> None:
        from mpi4py import MPI
        from mpi4py.util.dtlib import from_numpy_dtype

        datatype = from_numpy_dtype(arena.dtype)
        step = max(1, self.piece_bytes // arena.itemsize // self.size)
        longest = max(hi - lo for lo, hi in ranges)
        comm = self.communicator.mpi_comm
        for start in range(0, longest, step):
            counts = [max(0, min(step, hi - lo - start)) for lo, hi in ranges]
            displs = [min(lo + start, hi) for lo, hi in ranges]
            comm.Allgatherv(MPI.IN_PLACE, [arena, counts, displs, datatype])

    def _through_shared_memory(self, arena: np.ndarray, ranges) -> None:
        from mpi4py import MPI

        key = (arena.dtype, arena.size)
        if key not in self._staging:
            self._staging[key] = None  # /dev/shm has no room: over plain MPI
            if self._groups.room_for(arena.nbytes):
                node = self._groups.node
                nbytes = arena.nbytes if self._groups.local_rank == 0 else 0
                win = MPI.Win.Allocate_shared(nbytes, 1, comm=node)
                win.Lock_all(MPI.MODE_NOCHECK)
                memory = win.Shared_query(0)[0]
                self._staging[key] = (win, np.frombuffer(memory, arena.dtype, arena.size))
        if self._staging[key] is None:
            self._through_mpi(arena, ranges)
            return
        win, staging = self._staging[key]
        lo, hi = ranges[self.rank]
        self._groups.node.Barrier()  # every rank has read the previous step's staging
        staging[lo:hi] = arena[lo:hi]
        win.Sync()
        self._groups.node.Barrier()
        win.Sync()
        for r, (a, b) in enumerate(ranges):
            if r != self.rank and b > a:
                arena[a:b] = staging[a:b]

    def close(self) -> None:
        """Frees the staging windows. Collective: call on all ranks, in the same order."""
        for win, _ in filter(None, self._staging.values()):
            win.Unlock_all()
            win.Free()
        self._staging.clear()
