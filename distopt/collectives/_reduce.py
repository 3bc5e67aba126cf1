"""In-place all-reduce of flat buffers, in pieces, with a summation order fixed by rank.

A float SUM over MPI is done here rather than by `MPI_Allreduce`: each piece is cut into one
part per rank; every rank receives its part from all the others (point to point), adds
them in rank order, ((x0 + x1) + x2) + ..., and sends the sum back to all. That is the
order of the shared-memory reducer, so on one node both paths give the same bits, and the
bits do not depend on which MPI library (or which of its algorithms) runs underneath.
It also moves no more data than MPI's reduce-scatter/all-gather algorithm and allocates
nothing per call: MPI libraries allocate a temporary as large as the message on each large
`Allreduce`. MIN and MAX of numbers take the same route with `np.minimum` / `np.maximum`,
which propagate NaN: every rank gets the one result its owner formed (MPI's MIN/MAX compare
with `<`, so a NaN on one rank reaches some ranks and not others). Other ops use
`Allreduce` in pieces.
"""

from __future__ import annotations

import threading

import numpy as np

from distopt.collectives._bucket import BucketPlan
from distopt.comm import Communicator

# Pieces this size stay on MPI's eager/short path and in L2 while their sum is formed.
DEFAULT_PIECE_BYTES = 2 << 20
_MIN_PART_BYTES = 256 << 10  # with many ranks, parts stay large enough to be cheap messages
_ALIGN = 64  # bytes: MPI copies run at a third of their speed between misaligned buffers
_TAG_PARTS, _TAG_SUMS = 0x7D160, 0x7D161  # apart from the deadline's side channel's tags
_local = threading.local()
_UFUNCS = {"sum": np.add, "min": np.minimum, "max": np.maximum}


def allreduce_flat(
    comm: Communicator, buf: np.ndarray, op: str = "sum", piece_bytes: int = DEFAULT_PIECE_BYTES
) -> None:
    """All-reduces a 1-D contiguous buffer in place, in pieces of about `piece_bytes`.

    A float or integer SUM over MPI adds in rank order, MIN and MAX of real numbers fold in
    rank order and propagate NaN (see the module docstring).
    Collective: call on all ranks, in the same order, with buffers of equal size and dtype.
    """
    if comm.size == 1 or buf.size == 0:
        return
    mpi_comm = getattr(comm, "mpi_comm", None)
    kinds = "iufc" if op == "sum" else "iuf"
    if op in _UFUNCS and mpi_comm is not None and buf.dtype.kind in kinds:
        _pairwise_sum(mpi_comm, comm.rank, comm.size, buf, piece_bytes, _UFUNCS[op])
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


def _parts(n: int, line: int, size: int) -> list[int]:
    """Bounds of every rank's part of an `n`-element piece, in whole cache lines."""
    per = -(-n // size)
    per = -(-per // line) * line
    return [min(n, r * per) for r in range(size + 1)]


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's receive buffer of at least `nbytes`, starting on a cache line."""
    held = getattr(_local, "scratch", None)
    if held is None or held.size < nbytes:
        raw = np.empty(nbytes + _ALIGN, np.uint8)
        skip = -raw.__array_interface__["data"][0] % _ALIGN
        _local.scratch = held = raw[skip : skip + nbytes]
    return held


def _part_elements(buf: np.ndarray, size: int, piece_bytes: int) -> tuple[int, int]:
    """(elements per part, elements per cache line) for `buf` among `size` ranks."""
    line = max(1, _ALIGN // buf.dtype.itemsize)
    per = max(piece_bytes // size, _MIN_PART_BYTES) // buf.dtype.itemsize
    return -(-per // line) * line, line


def _pairwise_sum(mpi_comm, rank, size, buf: np.ndarray, piece_bytes: int, ufunc=np.add) -> None:
    per, line = _part_elements(buf, size, piece_bytes)

    def rounds():
        # Pieces and parts start a whole number of lines from the buffer's start.
        for a in range(0, buf.size, per * size):
            bounds = _parts(min(per * size, buf.size - a), line, size)
            yield [(a + lo, a + hi) for lo, hi in zip(bounds, bounds[1:])]

    _sum_rounds(mpi_comm, rank, size, buf, per, rounds(), send_back=True, ufunc=ufunc)


def reduce_scatter_flat(
    comm: Communicator, buf: np.ndarray, ranges, piece_bytes: int = DEFAULT_PIECE_BYTES
) -> None:
    """Leaves in `buf[ranges[rank]]` the SUM over ranks of that range, added in rank order as
    `allreduce_flat` adds it (the same bits); the rest of `buf` is left unspecified.

    `ranges`: every rank's [start, stop), the same list on every rank. Float and integer
    dtypes. Collective: call on all ranks, in the same order, with buffers of equal size.
    """
    if comm.size == 1 or buf.size == 0:
        return
    rank, size = comm.rank, comm.size
    per, _ = _part_elements(buf, size, piece_bytes)
    longest = max(hi - lo for lo, hi in ranges)
    rounds = (
        [(min(lo + j, hi), min(lo + j + per, hi)) for lo, hi in ranges]
        for j in range(0, longest, per)
    )
    _sum_rounds(comm.mpi_comm, rank, size, buf, per, rounds, send_back=False)


def _sum_rounds(mpi_comm, rank, size, buf, per, rounds, send_back: bool, ufunc=np.add) -> None:
    """For each round (every rank's [start, stop) of `buf`, at most `per` elements): the
    others' values of my range arrive, I combine them with `ufunc` in rank order, and with
    `send_back` every rank receives every result."""
    itemsize = buf.dtype.itemsize
    # Receive rows start at the same offset from a cache line as `buf` (and so as the parts).
    shift = buf.__array_interface__["data"][0] % _ALIGN
    row = per * itemsize + _ALIGN
    scratch = _scratch((size - 1) * row + _ALIGN)
    rows = {}  # where each other rank's values of my part arrive
    for k, src in enumerate(r for r in range(size) if r != rank):
        rows[src] = scratch[k * row + shift : k * row + shift + per * itemsize]
    exchange = _sendrecv if size == 2 else _all_at_once
    for bounds in rounds:
        lo, hi = bounds[rank]
        got = {src: row[: (hi - lo) * itemsize] for src, row in rows.items()}
        parts = {r: buf[bounds[r][0] : bounds[r][1]].view(np.uint8) for r in rows}
        exchange(mpi_comm, parts, got, _TAG_PARTS)  # everyone's x_rank of my part
        mine = buf[lo:hi]
        if hi > lo:
            values = {r: g.view(buf.dtype) for r, g in got.items()}
            _sum_in_rank_order(mine, values, rank, size, ufunc)
        if send_back:
            own = mine.view(np.uint8)
            exchange(mpi_comm, dict.fromkeys(rows, own), parts, _TAG_SUMS)  # and the sums


def _sendrecv(mpi_comm, sends: dict, receives: dict, tag: int) -> None:
    ((peer, out),) = sends.items()
    mpi_comm.Sendrecv(out, peer, tag, receives[peer], peer, tag)


def _all_at_once(mpi_comm, sends: dict, receives: dict, tag: int) -> None:
    # Every exchange posted at once: whichever peer is ready goes first, so one rank that
    # the host descheduled does not hold up the pairs queued behind it.
    from mpi4py import MPI

    requests = [mpi_comm.Irecv(buf, peer, tag) for peer, buf in receives.items()]
    requests += [mpi_comm.Isend(buf, peer, tag) for peer, buf in sends.items()]
    MPI.Request.Waitall(requests)


def _sum_in_rank_order(mine: np.ndarray, got: dict, rank: int, size: int, ufunc=np.add) -> None:
    """mine = ((x0 + x1) + x2) + ... (`ufunc` for +), where x_rank is `mine`, got[r] is x_r."""
    if rank == 0:
        for r in range(1, size):
            ufunc(mine, got[r], out=mine)
        return
    acc = got[0]
    for r in range(1, rank):
        ufunc(acc, got[r], out=acc)
    ufunc(acc, mine, out=mine)
    for r in range(rank + 1, size):
        ufunc(mine, got[r], out=mine)
