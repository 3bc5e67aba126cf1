"""The shared-memory windows behind a gradient plan, and how a node splits the work."""

from __future__ import annotations

import numpy as np

from distopt.collectives._bucket import BucketPlan, dtype_totals

_ALIGN = 64  # bytes: shares start on cache lines, so two ranks never write one line


def _share(n: int, itemsize: int, part: int, parts: int) -> tuple[int, int]:
    per = -(-n // parts)
    step = max(1, _ALIGN // itemsize)
    per = -(-per // step) * step
    return min(n, part * per), min(n, (part + 1) * per)


class SharedPlan:
    """The windows and views behind one plan: L gradient segments and the result (local rank
    0's segment, or a separate buffer for small plans)."""

    def __init__(self, groups, shapes, dtypes, bucket_bytes, layout, in_place: bool):
        from mpi4py import MPI

        totals, offsets, nbytes = layout
        node = groups.node
        self.in_place = in_place
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


def plan_layout(shapes, dtypes):
    """(elements per dtype, byte offset per dtype, bytes per rank) of a plan's segment."""
    totals = dtype_totals(shapes, dtypes)
    offsets, nbytes = {}, 0
    for dt, n in totals.items():
        offsets[dt] = nbytes
        nbytes += -(-(n * dt.itemsize) // _ALIGN) * _ALIGN
    return totals, offsets, nbytes
