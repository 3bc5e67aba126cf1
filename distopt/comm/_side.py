"""A point-to-point control channel beside the collectives, for the deadline watchdog.

Messages are fixed-length int64 arrays sent on the strategy's own communicator with tags
no collective uses (point-to-point never matches collective traffic). Only the watchdog
thread and the exit hook touch the channel, never both at once, so it needs no lock.
"""

from __future__ import annotations

import time

import numpy as np

MESSAGE_LEN = 6
_TAG_REQUEST = 0x7D150
_TAG_REPLY = 0x7D151
_TAG_NOTICE = 0x7D152


class SideChannel:
    """Census requests, replies and one-way notices between ranks of an mpi4py communicator."""

    def __init__(self, mpi_comm, MPI):
        self._comm = mpi_comm
        self._MPI = MPI
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()
        self._pending: list = []  # (request, buffer) of sends not known to be complete

    def _isend(self, message: np.ndarray, dest: int, tag: int) -> None:
        buf = np.ascontiguousarray(message, dtype=np.int64)
        self._pending.append((self._comm.Isend(buf, dest=dest, tag=tag), buf))

    def _prune(self) -> None:
        self._pending = [(r, b) for r, b in self._pending if not r.Test()]

    def poll(self, answer) -> list[tuple[int, np.ndarray]]:
        """Answers pending census requests with `answer()`; returns notices as (source, msg)."""
        MPI = self._MPI
        status = MPI.Status()
        while self._comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_REQUEST, status=status):
            buf = np.empty(MESSAGE_LEN, np.int64)
            self._comm.Recv(buf, source=status.Get_source(), tag=_TAG_REQUEST)
            self._isend(answer(), status.Get_source(), _TAG_REPLY)
        notices = []
        while self._comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_NOTICE, status=status):
            buf = np.empty(MESSAGE_LEN, np.int64)
            self._comm.Recv(buf, source=status.Get_source(), tag=_TAG_NOTICE)
            notices.append((status.Get_source(), buf))
        self._prune()
        return notices

    def census(self, answer, timeout: float, skip=()) -> tuple[dict[int, np.ndarray], list]:
        """Asks every other rank (but those in `skip`) for its state; waits at most `timeout` s.

        Keeps answering other ranks' requests meanwhile, and stops waiting for a rank whose
        notice arrives. Returns ({rank: reply}, notices).
        """
        request = answer()
        receives = {}
        for peer in range(self.size):
            if peer != self.rank and peer not in skip:
                self._isend(request, peer, _TAG_REQUEST)
                buf = np.empty(MESSAGE_LEN, np.int64)
                receives[peer] = (self._comm.Irecv(buf, source=peer, tag=_TAG_REPLY), buf)
        replies, notices = {}, []
        end = time.monotonic() + timeout
        while receives and time.monotonic() < end:
            for peer, (req, buf) in list(receives.items()):
                if req.Test():
                    replies[peer] = buf
                    del receives[peer]
            for source, msg in self.poll(answer):
                notices.append((source, msg))
                receives.pop(source, None)
            time.sleep(0.005)
        return replies, notices

    def notify_all(self, message: np.ndarray, timeout: float = 0.5) -> None:
        """Sends `message` to every other rank; waits up to `timeout` s for the sends."""
        for peer in range(self.size):
            if peer != self.rank:
                self._isend(message, peer, _TAG_NOTICE)
        end = time.monotonic() + timeout
        while self._pending and time.monotonic() < end:
            self._prune()
            time.sleep(0.001)
