"""A one-process communicator: every collective is the identity."""

from __future__ import annotations

import os

import numpy as np

from distopt.comm._base import Communicator, _check_buffer, _check_op


class LocalCommunicator(Communicator):
    """One rank (rank 0 of size 1); collectives leave their buffers as they are."""

    rank = 0
    size = 1

    def allreduce(self, buf: np.ndarray, op: str = "sum") -> None:
        _check_op(op)
        _check_buffer(buf)

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        _check_buffer(buf)
        if root != 0:
            raise ValueError(f"Argument `root` must be 0 for a one-rank group. Received: {root}")

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        return [bytes(data)]

    def reduce_scatter(self, sendbuf: np.ndarray, recvbuf: np.ndarray, counts: list[int]) -> None:
        np.copyto(recvbuf, sendbuf[: counts[0]])

    def allgather(self, sendbuf: np.ndarray, recvbuf: np.ndarray, counts: list[int]) -> None:
        np.copyto(recvbuf[: counts[0]], sendbuf)

    def barrier(self) -> None:
        return None

    def abort(self, errorcode: int = 1) -> None:
        os._exit(errorcode)

    def __repr__(self) -> str:
        return "LocalCommunicator(rank=0, size=1)"
