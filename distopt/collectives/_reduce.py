"""In-place all-reduce of flat buffers, issued in pieces sized for MPI's fast path."""

from __future__ import annotations

import numpy as np

from distopt.collectives._bucket import BucketPlan
from distopt.comm import Communicator

# MPI libraries allocate a temporary as large as the message on every large Allreduce; slices
# of this size stay on their eager/short path and reuse cached memory.
DEFAULT_PIECE_BYTES = 2 << 20


def allreduce_flat(
    comm: Communicator, buf: np.ndarray, op: str = "sum", piece_bytes: int = DEFAULT_PIECE_BYTES
) -> None:
    """All-reduces a 1-D contiguous buffer in place, in pieces of at most `piece_bytes`.

    Collective: call on all ranks, in the same order, with buffers of equal size and dtype.
    """
    if comm.size == 1 or buf.size == 0:
        return
    step = max(1, piece_bytes // buf.dtype.itemsize)
    for start in range(0, buf.size, step):
        comm.allreduce(buf[start : start + step], op)


def allreduce_plan(
    comm: Communicator, plan: BucketPlan, op: str = "sum", piece_bytes: int = DEFAULT_PIECE_BYTES
) -> None:
    """All-reduces every bucket of `plan` in place, in the plan's deterministic order.

    Collective: call on all ranks, in the same order, with identical plans.
    """
    for dt, start, stop in plan.buckets:
        allreduce_flat(comm, plan.buffers[dt][start:stop], op, piece_bytes)
