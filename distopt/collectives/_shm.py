"""Intra-node aggregation through MPI-3 shared memory; only node leaders talk across nodes.

Every rank's gradient buckets live in its segment of a shared window, so a gradient computed
into `strategy.gradient_buffers(...)` is visible to the other ranks of its node without a
message or a copy. Reduction: each local rank adds, for its 1/L share of the buffers, the
segments of local ranks 1..L-1 in that order into local rank 0's segment, in place (an
in-place add moves a third less memory than writing a separate result). Every rank's
optimizer reads it.

The sum is ((x0 + x1) + x2) + ... in rank order, as on the plain-MPI path, so the bits
depend on the world size alone, not on how ranks are placed on nodes. Across nodes (each a
block of consecutive ranks) the node sums form a chain: node m's leader receives the sum of
the ranks before it, its node adds its own ranks to that prefix, and passes it on; the last
node's leader broadcasts the total. With compression the leaders all-reduce the node sums
instead (rounded anyway); when nodes are not blocks of ranks the plain path is used.
A plan whose window would not fit in /dev/shm is a plain plan, reduced over plain MPI.

Because the result overwrites local rank 0's gradients, local rank 0 must not write its
next gradients before every rank has read this result: `release()` (called by the optimizer
once the update has consumed the gradients) is a node barrier, and a reduction that finds
the previous one unreleased passes that barrier before packing. Plans under IN_PLACE_BYTES
sum, in the same order, into a separate shared result instead and need no release.
"""

from __future__ import annotations

import numpy as np

from distopt.collectives import _timeline
from distopt.collectives._bucket import BucketPlan
from distopt.collectives._nodes import NodeGroups
from distopt.collectives._windows import SharedPlan, _share, plan_layout

_CHUNK = 1 << 16  # elements summed per pass while the partial result stays in L2
# Plans at least this large sum in place (saving a third of the memory traffic) at the price
# of a release barrier per step; smaller ones, where that barrier would dominate, sum into a
# separate result buffer.
IN_PLACE_BYTES = 4 << 20
_TAG_CHAIN = 0x7D162  # apart from _reduce's tags and the deadline's side channel's


def node_bytes(nbytes: int, local_size: int) -> int:
    """/dev/shm bytes of a plan with `nbytes` per rank on a node of `local_size` ranks."""
    return nbytes * (local_size + (nbytes < IN_PLACE_BYTES))


class SharedMemoryReducer:
    """Sums gradient plans through node-shared memory, then across node leaders."""

    shared_memory = True

    def __init__(self, communicator, piece_bytes: int, compression=None, groups=None):
        from distopt.collectives._reducers import PieceReducer

        self.communicator = communicator
        self.piece_bytes = piece_bytes
        self.compression = compression
        self.groups = groups = groups or NodeGroups(communicator.mpi_comm)
        self._plain = PieceReducer(communicator, piece_bytes, compression)
        self._shared: dict[int, SharedPlan] = {}
        self._outstanding = False  # a result not yet released by every rank
        self._chain = groups.num_nodes > 1 and compression is None
        if groups.local_rank == 0 and groups.num_nodes > 1:
            from distopt.comm import MPICommunicator

            # Wraps the leaders' communicator without a copy: `groups.free()` frees it.
            self._leaders = MPICommunicator(groups.leaders, dup=lambda comm: comm)

    def make_plan(self, shapes, dtypes, bucket_bytes: int) -> BucketPlan:
        """A plan whose buffers are this rank's segment of a new shared window, or, when
        some node's /dev/shm lacks the room, a plain plan (see `_nodes.NodeGroups.room_for`).

        Collective: call on all ranks, in the same order, with the same shapes and dtypes.
        """
        layout = plan_layout(shapes, dtypes)
        if not self.groups.room_for(node_bytes(layout[2], self.groups.local_size)):
            return self._plain.make_plan(shapes, dtypes, bucket_bytes)
        in_place = layout[2] >= IN_PLACE_BYTES
        shared = SharedPlan(self.groups, shapes, dtypes, bucket_bytes, layout, in_place)
        self._shared[id(shared.plan)] = shared
        return shared.plan

    def result_views(self, plan: BucketPlan) -> list:
        """The views `allreduce(plan)` returns (they live in the plan's window)."""
        shared = self._shared.get(id(plan))
        return [] if shared is None else shared.result_plan.views

    def free_plan(self, plan: BucketPlan) -> None:
        """Frees `plan`'s window (if it has one); the plan must not be used again.

        Collective: call on all ranks, in the same order, for the same plan.
        """
        shared = self._shared.pop(id(plan), None)
        if shared is not None:
            self.release()  # nobody still reads its result
            shared.free()

    def _sync(self, shared: SharedPlan) -> None:
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
        shared = self._shared.get(id(plan))
        self.release()
        if shared is None:
            return self._plain.allreduce(plan, mean, grads, scatter)
        if grads is not None:
            with _timeline.span("pack"):
                plan.pack(grads)
        groups = self.groups
        chain_from = self._chain and groups.node_index > 0  # a prefix arrives from before
        with _timeline.span("reduce"):
            if chain_from and groups.local_rank == 0:
                self._receive_prefix(shared)
            self._sync(shared)  # every rank's gradients (and the prefix) are written
            last = groups.node_index == groups.num_nodes - 1
            self._fold(shared, chain_from, mean and (groups.num_nodes == 1 or self._chain and last))
            self._sync(shared)  # this node's part of the sum is complete
            if groups.num_nodes > 1:
                if groups.local_rank == 0:
                    if self._chain:
                        self._pass_on(shared)
                    else:
                        self._across_nodes(shared, mean)
                self._sync(shared)
        self._outstanding = shared.in_place and groups.local_size > 1
        return list(shared.result_plan.views)

    def _fold(self, shared: SharedPlan, prefix: bool, divide: bool) -> None:
        """Adds this node's segments, in rank order, into the result (which holds the sum of
        the earlier nodes' ranks if `prefix`), over this rank's share; `divide`: then / size."""
        groups, size = self.groups, self.communicator.size
        for dt, n in shared.totals.items():
            lo, hi = _share(n, dt.itemsize, groups.local_rank, groups.local_size)
            segments = [s[dt] for s in shared.segments]
            out = shared.result[dt]
            # In place the prefix was already added into segment 0 (x + p == p + x exactly).
            start = 1 if shared.in_place else 0 if prefix else 2
            rest = segments[start:]
            fresh = not shared.in_place and not prefix  # the result is written, not added to
            # Chunks keep a partial sum in L2 across several passes; with one pass per
            # element (two ranks) they only add calls: measured 5.4 -> 5.0 ms for 51 MB.
            passes = len(rest) + fresh + divide
            chunk = _CHUNK if passes > 1 else max(1, hi - lo)
            for a in range(lo, hi, chunk):
                b = min(a + chunk, hi)
                if fresh:
                    if len(segments) == 1:
                        np.copyto(out[a:b], segments[0][a:b])
                    else:
                        np.add(segments[0][a:b], segments[1][a:b], out=out[a:b])
                for seg in rest:
                    np.add(out[a:b], seg[a:b], out=out[a:b])
                if divide:
                    np.divide(out[a:b], size, out=out[a:b])

    def _pieces(self, buf: np.ndarray):
        step = max(1, self.piece_bytes // buf.itemsize)
        for a in range(0, buf.size, step):
            yield a, min(a + step, buf.size)

    def _receive_prefix(self, shared: SharedPlan) -> None:
        """Node leader: the sum of every earlier rank, from the previous node's leader, into
        the result (added to segment 0 when that is the result)."""
        comm, source = self._leaders.mpi_comm, self.groups.node_index - 1
        for out in shared.result.values():
            scratch = np.empty(min(out.size, self.piece_bytes // out.itemsize + 1), out.dtype)
            for a, b in self._pieces(out):
                if shared.in_place:
                    comm.Recv(scratch[: b - a], source, _TAG_CHAIN)
                    np.add(out[a:b], scratch[: b - a], out=out[a:b])
                else:
                    comm.Recv(out[a:b], source, _TAG_CHAIN)

    def _pass_on(self, shared: SharedPlan) -> None:
        """Node leader: the running sum to the next node; then the last node's total to all."""
        comm, groups = self._leaders.mpi_comm, self.groups
        last = groups.num_nodes - 1
        if groups.node_index < last:
            for out in shared.result.values():
                for a, b in self._pieces(out):
                    comm.Send(out[a:b], groups.node_index + 1, _TAG_CHAIN)
        for out in shared.result.values():
            for a, b in self._pieces(out):
                comm.Bcast(out[a:b], root=last)

    def _across_nodes(self, shared: SharedPlan, mean: bool) -> None:
        # Compressed: the leaders all-reduce the node sums (rounded on the wire anyway).
        size = self.communicator.size
        for buf in shared.result.values():
            self.compression.allreduce(self._leaders, buf, self.piece_bytes)
            if mean:
                np.divide(buf, size, out=buf)

    def close(self) -> None:
        """Frees every window and communicator. Collective: call on all ranks, in the same order."""
        for shared in self._shared.values():
            shared.free()
        self._shared.clear()
        self.groups.free()


def make_node_reducer(communicator, piece_bytes, compression=None, ranks_per_node=None):
    """A SharedMemoryReducer, or None when no node holds more than one rank, or when nodes
    are not blocks of consecutive ranks (then only the plain path sums in rank order).

    Collective: call on all ranks, in the same order.
    """
    groups = NodeGroups(communicator.mpi_comm, ranks_per_node)
    if groups.max_local_size < 2 or not (groups.contiguous or compression is not None):
        groups.free()
        return None
    return SharedMemoryReducer(communicator, piece_bytes, compression, groups)
