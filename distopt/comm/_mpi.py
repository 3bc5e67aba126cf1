"""The MPI communicator (mpi4py, buffer API only)."""

from __future__ import annotations

import numpy as np

from distopt.comm._base import Communicator, _check_buffer, _check_op
from distopt.comm._launch_check import check_world_size
from distopt.comm._side import SideChannel


def _mpi():
    # Imported lazily so that single-process use never initialises MPI.
    from mpi4py import MPI

    return MPI


class MPICommunicator(Communicator):
    """Wraps a private `Dup()` of `comm` (default `MPI.COMM_WORLD`), so our traffic never
    matches the application's own messages. `dup(comm)` makes the copy (default `comm.Dup()`).
    Collective: create on all ranks of `comm`, in the same order."""

    def __init__(self, comm=None, *, dup=None):
        MPI = _mpi()
        base = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(base, MPI.Intracomm):
            raise TypeError(
                f"Argument `comm` must be an mpi4py intracommunicator. Received: {comm!r}"
            )
        if comm is None:
            check_world_size(base.Get_size())
        self._comm = base.Dup() if dup is None else dup(base)
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()
        self._ops = {"sum": MPI.SUM, "min": MPI.MIN, "max": MPI.MAX}
        self._in_place = MPI.IN_PLACE
        self._side: SideChannel | None = None

    @property
    def mpi_comm(self):
        """The private mpi4py communicator."""
        return self._comm

    def allreduce(self, buf: np.ndarray, op: str = "sum") -> None:
        _check_op(op)
        _check_buffer(buf)
        self._comm.Allreduce(self._in_place, buf, op=self._ops[op])

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        _check_buffer(buf)
        self._comm.Bcast(buf, root=root)

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        data = bytes(data)
        sizes = np.zeros(self.size, dtype=np.int64)
        self._comm.Allgather(np.array([len(data)], dtype=np.int64), sizes)
        recv = np.empty(int(sizes.sum()), dtype=np.uint8)
        counts = [int(s) for s in sizes]
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        send = np.frombuffer(data, dtype=np.uint8) if data else np.empty(0, np.uint8)
        self._comm.Allgatherv(send, [recv, counts, displs, _mpi().BYTE])
        return [recv[d : d + c].tobytes() for d, c in zip(displs, counts)]

    def reduce_scatter(self, sendbuf: np.ndarray, recvbuf: np.ndarray, counts: list[int]) -> None:
        _check_buffer(recvbuf, "recvbuf")
        self._comm.Reduce_scatter(sendbuf, recvbuf, recvcounts=list(counts), op=self._ops["sum"])

    def allgather(self, sendbuf: np.ndarray, recvbuf: np.ndarray, counts: list[int]) -> None:
        _check_buffer(recvbuf, "recvbuf")
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
        self._comm.Allgatherv(sendbuf, [recvbuf, list(counts), displs])

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, errorcode: int = 1) -> None:
        self._comm.Abort(errorcode)

    def close(self) -> None:
        """Frees the private communicator (then `mpi_comm` is `MPI.COMM_NULL`); idempotent.

        Collective: call on all ranks, in the same order.
        """
        MPI = _mpi()
        if self._comm != MPI.COMM_NULL and not MPI.Is_finalized():
            self._side = None
            self._comm.Free()

    def side_channel(self) -> SideChannel:
        if self._side is None:
            self._side = SideChannel(self._comm, _mpi())
        return self._side

    @property
    def thread_multiple(self) -> bool:
        MPI = _mpi()
        return MPI.Query_thread() >= MPI.THREAD_MULTIPLE

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, size={self.size})"
