"""Gradient reducers: where a strategy's gradient buckets live and how they are summed.

A reducer allocates a plan's buffers (`make_plan`) and all-reduces them (`allreduce`), which
returns the reduced gradients as views shaped like the variables. `PieceReducer` uses MPI's
`Allreduce` on slices of at most `piece_bytes`; `SharedMemoryReducer` (in `_shm.py`) sums
through an MPI-3 shared-memory window. Every reducer is deterministic: the same inputs at the
same world size give the same bits, run after run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from distopt.collectives import _timeline
from distopt.collectives._bucket import BucketPlan
from distopt.collectives._reduce import (
    DEFAULT_PIECE_BYTES,
    allreduce_flat,
    reduce_scatter_flat,
)

SHARED_MEMORY_ENV = "DISTOPT_SHARED_MEMORY"


class PieceReducer:
    """Plain numpy buckets, all-reduced in place in pieces of at most `piece_bytes`."""

    shared_memory = False

    def __init__(self, communicator, piece_bytes: int = DEFAULT_PIECE_BYTES, compression=None):
        self.communicator = communicator
        self.piece_bytes = piece_bytes
        self.compression = compression

    def make_plan(self, shapes: Sequence, dtypes: Sequence, bucket_bytes: int) -> BucketPlan:
        """A plan in fresh numpy buffers. Local: no communication."""
        return BucketPlan(shapes, dtypes, bucket_bytes)

    def allreduce(self, plan: BucketPlan, mean: bool, grads=None, scatter=None) -> list:
        """Packs `grads` (if given) into `plan`, then SUM (or MEAN) of every rank's plan, in
        place; returns `plan.views`.

        `scatter` (dtype -> every rank's [start, stop) of that dtype's buffer) asks only for
        this rank's range of each buffer (ZeRO-1): a reduce-scatter, half the traffic, the
        same bits there; the rest of the views is then left unspecified. Ignored with
        compression. Collective: call on all ranks, in the same order, with identical plans.
        """
        if grads is not None:
            with _timeline.span("pack"):
                plan.pack(grads)
        size = self.communicator.size
        if scatter is not None and self.compression is None and size > 1:
            with _timeline.span("reduce_scatter"):
                for dt, buf in plan.buffers.items():
                    ranges = scatter[dt]
                    reduce_scatter_flat(self.communicator, buf, ranges, self.piece_bytes)
                    if mean:
                        lo, hi = ranges[self.communicator.rank]
                        np.divide(buf[lo:hi], size, out=buf[lo:hi])
            return list(plan.views)
        with _timeline.span("reduce"):
            for dt, start, stop in plan.buckets:
                buf = plan.buffers[dt][start:stop]
                if self.compression is not None and size > 1:
                    self.compression.allreduce(self.communicator, buf, self.piece_bytes)
                else:
                    allreduce_flat(self.communicator, buf, "sum", self.piece_bytes)
            if mean and size > 1:
                for buf in plan.buffers.values():
                    np.divide(buf, size, out=buf)
        return list(plan.views)

    def release(self) -> None:
        """Nothing to do: every rank reduces into its own memory."""

    def free_plan(self, plan: BucketPlan) -> None:
        """Nothing to free: the plan's numpy buffers go with their last reference."""

    def close(self) -> None:
        return None


_ENV_VALUES = {"": "auto", "auto": "auto", "0": False, "false": False, "no": False,
               "off": False, "1": True, "true": True, "yes": True, "on": True}  # fmt: skip


def resolve_shared_memory(shared_memory):
    """`shared_memory`, with "auto" overridden by env DISTOPT_SHARED_MEMORY=0/1 (or
    false/true, no/yes, off/on); any other value of the variable is a ValueError."""
    if isinstance(shared_memory, str) and shared_memory == "auto":
        raw = os.environ.get(SHARED_MEMORY_ENV, "")
        value = _ENV_VALUES.get(raw.strip().lower())
        if value is None:
            raise ValueError(
                f"Environment variable {SHARED_MEMORY_ENV} must be 1 (true, yes, on), 0 "
                f"(false, no, off) or auto. Received: {SHARED_MEMORY_ENV}={raw!r}"
            )
        return value
    return shared_memory


def make_reducer(
    communicator, shared_memory="auto", compression=None, piece_bytes=None, _ranks_per_node=None
):
    """The reducer for `communicator`: shared memory when some node holds several ranks.

    `shared_memory`: True, False or "auto" (env DISTOPT_SHARED_MEMORY=0/1 overrides "auto").
    Collective: call on all ranks, in the same order, with the same arguments.
    """
    piece_bytes = DEFAULT_PIECE_BYTES if piece_bytes is None else piece_bytes
    shared_memory = resolve_shared_memory(shared_memory)
    if shared_memory not in (True, False, "auto"):
        raise ValueError(
            "Argument `shared_memory` must be True, False or 'auto'. "
            f"Received: shared_memory={shared_memory!r}"
        )
    mpi_comm = getattr(communicator, "mpi_comm", None)
    if shared_memory is True and mpi_comm is None:
        raise ValueError(
            "`shared_memory=True` needs an MPI communicator (MPIStrategy). "
            f"Received: {communicator!r}"
        )
    if shared_memory is not False and mpi_comm is not None and communicator.size > 1:
        from distopt.collectives._shm import make_node_reducer

        reducer = make_node_reducer(communicator, piece_bytes, compression, _ranks_per_node)
        if reducer is not None:
            return reducer
    return PieceReducer(communicator, piece_bytes, compression)
