"""Intra-node aggregation through MPI-3 shared memory; only node leaders talk across nodes.

Every rank's gradient buckets live in its segment of a shared window, so a gradient computed
into `strategy.gradient_buffers(...)` is visible to the other ranks of its node without a
message or a copy. Reduction: each local rank adds, for its 1/L share of the buffers, the
segments of local ranks 1..L-1 in that order into local rank 0's segment, in place (an
in-place add moves a third less memory than writing a separate result); node leaders then
all-reduce that segment across nodes. Every rank's optimizer reads it.

Because the result overwrites local rank 0's gradients, local rank 0 must not write its
next gradients before every rank has read this result: `release()` (called by the optimizer
once the update has consumed the gradients) is a node barrier, and a reduction that finds
the previous one unreleased passes that barrier before packing. Plans under IN_PLACE_BYTES
sum, in the same order, into a separate shared result instead and need no release.
"""

from __future__ import annotations

import numpy as np

from distopt.collectives import _timeline
from distopt.collectives._bucket import BucketPlan, dtype_totals
from distopt.collectives._reduce import allreduce_flat

_ALIGN = 64  # bytes: shares start on cache lines, so two ranks never write one line
_CHUNK = 1 << 16  # elements summed per pass while the partial result stays in L2
# Plans at least this large sum in place (saving a third of the memory traffic) at the price
# of a release barrier per step; smaller ones, where that barrier would dominate, sum into a
# separate result buffer.
IN_PLACE_BYTES = 4 << 20


class NodeGroups:
    """This rank's node (ranks sharing memory) and, on node leaders, the leaders' group.

    `ranks_per_node` groups consecutive ranks instead of asking MPI (tests use it to run
    several "nodes" on one host). Collective: create on all ranks of `mpi_comm`.
    """

    def __init__(self, mpi_comm, ranks_per_node: int | None = None):
        from mpi4py import MPI

        rank = mpi_comm.Get_rank()
        if ranks_per_node is None:
            self.node = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        else:
            self.node = mpi_comm.Split(rank // ranks_per_node, key=rank)
        self.local_rank = self.node.Get_rank()
        self.local_size = self.node.Get_size()
        leader = self.local_rank == 0
        self.leaders = mpi_comm.Split(0 if leader else MPI.UNDEFINED, key=rank)
        counts = np.array([self.local_size, int(leader)], dtype=np.int64)
        maxima = np.empty_like(counts)
        mpi_comm.Allreduce(counts, maxima, op=MPI.MAX)
        totals = np.empty_like(counts)
        mpi_comm.Allreduce(counts, totals, op=MPI.SUM)
        self.max_local_size = int(maxima[0])
        self.num_nodes = int(totals[1])

    def free(self) -> None:
        """Frees the node and leaders' communicators. Collective: call on all ranks."""
        from mpi4py import MPI

        for comm in (self.node, self.leaders):
            if comm != MPI.COMM_NULL:
                comm.Free()


def _share(n: int, itemsize: int, part: int, parts: int) -> tuple[int, int]:
    per = -(-n // parts)
    step = max(1, _ALIGN // itemsize)
    per = -(-per // step) * step
    return min(n, part * per), min(n, (part + 1) * per)


class _SharedPlan:
    """The windows and views behind one plan: L gradient segments and the result (local rank
    0's segment, or a separate buffer for small plans)."""

    def __init__(self, groups: NodeGroups, shapes, dtypes, bucket_bytes):
        from mpi4py import MPI

        totals = dtype_totals(shapes, dtypes)
        offsets, nbytes = {}, 0
        for dt, n in totals.items():
            offsets[dt] = nbytes
            nbytes += -(-(n * dt.itemsize) // _ALIGN) * _ALIGN
        node = groups.node
        self.in_place = nbytes >= IN_PLACE_BYTES
        self.windows = [MPI.Win.Allocate_shared(nbytes, 1, comm=node)]
        if not self.in_place:
            own = nbytes if groups.local_rank == 0 else 0
            self.windows.append(MPI.Win.Allocate_shared(own, 1, comm=node))
        for win in self.windows:
            win.Lock_all(MPI.MODE_NOCHECK)

        def arrays(win, owner):
            memory = win.Shared_query(owner)[0]
            return {
                dt: np.frombuffer(memory, dtype=dt, count=n, offset=offsets[dt])
                for dt, n in totals.items()
            }

        self.segments = [arrays(self.windows[0], r) for r in range(groups.local_size)]
        self.result = self.segments[0] if self.in_place else arrays(self.windows[1], 0)
        for buf in self.segments[groups.local_rank].values():
            buf[...] = 0
        self.totals = totals
        self.plan = BucketPlan(shapes, dtypes, bucket_bytes, self.segments[groups.local_rank])
        self.result_plan = BucketPlan(shapes, dtypes, bucket_bytes, self.result)

    def free(self) -> None:
        for win in self.windows:
            win.Unlock_all()
            win.Free()


class SharedMemoryReducer:
    """Sums gradient plans through node-shared memory, then across node leaders."""

    shared_memory = True

    def __init__(self, communicator, piece_bytes: int, compression=None, groups=None):
        self.communicator = communicator
        self.piece_bytes = piece_bytes
        self.compression = compression
        self.groups = groups or NodeGroups(communicator.mpi_comm)
        self._shared: dict[int, _SharedPlan] = {}
        self._outstanding = False  # a result not yet released by every rank

    def make_plan(self, shapes, dtypes, bucket_bytes: int) -> BucketPlan:
        """A plan whose buffers are this rank's segment of a new shared window.

        Collective: call on all ranks, in the same order, with the same shapes and dtypes.
        """
        shared = _SharedPlan(self.groups, shapes, dtypes, bucket_bytes)
        self._shared[id(shared.plan)] = shared
        return shared.plan

    def _sync(self, shared: _SharedPlan) -> None:
        # MPI-3 unified model: a barrier between two Syncs orders every rank's stores
        # before every other rank's loads.
        for win in shared.windows:
            win.Sync()
        self.groups.node.Barrier()
        for win in shared.windows:
            win.Sync()

    def release(self) -> None:
        """Every rank has read the last result: local rank 0 may write gradients again.

        Collective: call on all ranks, in the same order (a no-op when nothing is pending).
        """
        if self._outstanding:
            self._outstanding = False
            self.groups.node.Barrier()

    def allreduce(self, plan: BucketPlan, mean: bool, grads=None, scatter=None) -> list:
        """Packs `grads` (if given) into `plan`, then SUM (or MEAN) over all ranks; returns
        views of the node's result. `scatter` is ignored: within a node each rank already
        sums only its share, into memory every rank reads.

        The views are read-only by convention and valid until `release()` or the next
        reduction. Collective: call on all ranks, in the same order, with identical plans.
        """
        shared = self._shared[id(plan)]
        self.release()
        if grads is not None:
            with _timeline.span("pack"):
                plan.pack(grads)
        groups = self.groups
        size = self.communicator.size
        divide_here = mean and groups.num_nodes == 1
        with _timeline.span("reduce"):
            self._sync(shared)  # every rank's gradients are written
            for dt, n in shared.totals.items():
                lo, hi = _share(n, dt.itemsize, groups.local_rank, groups.local_size)
                segments = [s[dt] for s in shared.segments]
                out = shared.result[dt]
                rest = segments[1:] if shared.in_place else segments[2:]
                # Chunks keep a partial sum in L2 across several passes; with one pass per
                # element (two ranks) they only add calls: measured 5.4 -> 5.0 ms for 51 MB.
                passes = len(rest) + (not shared.in_place) + divide_here
                chunk = _CHUNK if passes > 1 else max(1, hi - lo)
                for a in range(lo, hi, chunk):
                    b = min(a + chunk, hi)
                    if not shared.in_place:  # a separate result: the same sums, in order
                        if len(segments) == 1:
                            np.copyto(out[a:b], segments[0][a:b])
                        else:
                            np.add(segments[0][a:b], segments[1][a:b], out=out[a:b])
                    for seg in rest:
                        np.add(out[a:b], seg[a:b], out=out[a:b])
                    if divide_here:
                        np.divide(out[a:b], size, out=out[a:b])
            self._sync(shared)  # the node's sum is complete
            if groups.num_nodes > 1:
                if groups.local_rank == 0:
                    self._across_nodes(shared, mean, size)
                self._sync(shared)
        self._outstanding = shared.in_place and groups.local_size > 1
        return list(shared.result_plan.views)

    def _across_nodes(self, shared: _SharedPlan, mean: bool, size: int) -> None:
        from distopt.comm import MPICommunicator

        if not hasattr(self, "_leaders"):
            self._leaders = MPICommunicator(self.groups.leaders)
        for buf in shared.result.values():
            if self.compression is not None:
                self.compression.allreduce(self._leaders, buf, self.piece_bytes)
            else:
                allreduce_flat(self._leaders, buf, "sum", self.piece_bytes)
            if mean:
                np.divide(buf, size, out=buf)

    def close(self) -> None:
        """Frees every window and communicator. Collective: call on all ranks, in the same order."""
        for shared in self._shared.values():
            shared.free()
        self._shared.clear()
        leaders = self.__dict__.pop("_leaders", None)
        if leaders is not None:
            leaders.close()
        self.groups.free()


def make_node_reducer(communicator, piece_bytes, compression=None, ranks_per_node=None):
    """A SharedMemoryReducer, or None when no node holds more than one rank.

    Collective: call on all ranks, in the same order.
    """
    groups = NodeGroups(communicator.mpi_comm, ranks_per_node)
    if groups.max_local_size < 2:
        return None
    return SharedMemoryReducer(communicator, piece_bytes, compression, groups)
