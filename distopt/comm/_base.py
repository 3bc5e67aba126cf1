"""The communicator interface the collectives layer is written against."""

from __future__ import annotations

import abc
from typing import Literal

import numpy as np

ReduceOpName = Literal["sum", "min", "max"]
_OPS = ("sum", "min", "max")


def _check_op(op: str) -> None:
    if op not in _OPS:
        raise ValueError(f"Argument `op` must be one of {_OPS}. Received: op={op!r}")


def _check_buffer(buf: np.ndarray, what: str = "buf") -> None:
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"Argument `{what}` must be a numpy array. Received: {type(buf).__name__}")
    if not buf.flags.c_contiguous or not buf.flags.writeable:
        raise ValueError(f"Argument `{what}` must be a writable C-contiguous numpy array.")


class Communicator(abc.ABC):
    """A group of processes (`size` of them, this one is `rank`).

    Every method is collective: call it on all ranks, in the same order, with buffers of the
    same shape and dtype.
    """

    rank: int
    size: int

    @abc.abstractmethod
    def allreduce(self, buf: np.ndarray, op: str = "sum") -> None:
        """Reduces `buf` across ranks in place. Collective: call on all ranks, in the same order."""

    @abc.abstractmethod
    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        """Overwrites `buf` with root's. Collective: call on all ranks, in the same order."""

    @abc.abstractmethod
    def allgather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's `data`, by rank. Collective: call on all ranks, in the same order."""

    @abc.abstractmethod
    def reduce_scatter(self, sendbuf: np.ndarray, recvbuf: np.ndarray, counts: list[int]) -> None:
        """SUM-reduces `sendbuf` and leaves block `rank` (of `counts`) in `recvbuf`.

        Collective: call on all ranks, in the same order.
        """

    @abc.abstractmethod
    def allgather(self, sendbuf: np.ndarray, recvbuf: np.ndarray, counts: list[int]) -> None:
        """Concatenates every rank's `sendbuf` (block sizes `counts`) into `recvbuf`.

        Collective: call on all ranks, in the same order.
        """

    @abc.abstractmethod
    def barrier(self) -> None:
        """Waits for every rank. Collective: call on all ranks."""

    @abc.abstractmethod
    def abort(self, errorcode: int = 1) -> None:
        """Ends every process of the job at once (MPI_Abort); does not return."""

    def close(self) -> None:
        """Frees what this communicator holds (nothing by default); idempotent.

        Collective: call on all ranks, in the same order.
        """
        return None

    def side_channel(self):
        """The point-to-point control channel of the deadline watchdog (None: not needed)."""
        return None

    @property
    def thread_multiple(self) -> bool:
        """True when another thread may talk on this communicator during a collective."""
        return True
