"""Optional 16-bit compression of float buckets on the wire: "bf16" or "fp16".

Each piece of a float32/float64 bucket is rounded to 16 bits (to nearest, ties to even),
summed by MPI with a 16-bit SUM operation, and widened back in place. bf16 keeps float32's
range (8 bits of mantissa); fp16 keeps 11 bits of mantissa but overflows above 65504, so
each rank divides by the number of ranks before rounding and the sum is multiplied back
after. Other dtypes are reduced uncompressed. Only MPI traffic is compressed: ranks of one
node that sum through shared memory do not round.
"""

from __future__ import annotations

import numpy as np

COMPRESSIONS = ("bf16", "fp16")
_F32_TO_BF16_BIAS = np.uint32(0x7FFF)


def _to_bf16(x: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + _F32_TO_BF16_BIAS + ((bits >> np.uint32(16)) & np.uint32(1))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # rounding would carry a NaN's payload into the exponent or the sign
        out[nan] = 0x7FC0
    return out


def _from_bf16(h: np.ndarray) -> np.ndarray:
    return (h.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _sum_bf16(inbuf, inoutbuf, datatype) -> None:
    a = np.frombuffer(inbuf, dtype=np.uint16)
    b = np.frombuffer(inoutbuf, dtype=np.uint16)
    b[...] = _to_bf16(_from_bf16(a) + _from_bf16(b))


def _sum_fp16(inbuf, inoutbuf, datatype) -> None:
    b = np.frombuffer(inoutbuf, dtype=np.float16)
    np.add(b, np.frombuffer(inbuf, dtype=np.float16), out=b)


class Compression:
    """SUM-all-reduces float buckets through 16-bit messages."""

    def __init__(self, name: str):
        if name not in COMPRESSIONS:
            raise ValueError(
                f"Argument `compression` must be None, 'bf16' or 'fp16'. Received: {name!r}"
            )
        self.name = name
        self._op = None

    def _mpi_op(self):
        if self._op is None:
            from mpi4py import MPI

            fn = _sum_bf16 if self.name == "bf16" else _sum_fp16
            self._op = MPI.Op.Create(fn, commute=True)
        return self._op

    def allreduce(self, communicator, buf: np.ndarray, piece_bytes: int) -> None:
        """SUM of `buf` over ranks, in place, through 16-bit pieces.

        Collective: call on all ranks, in the same order, with buffers of equal size and dtype.
        """
        from mpi4py import MPI

        from distopt.collectives._reduce import allreduce_flat

        if buf.dtype not in (np.float32, np.float64):
            allreduce_flat(communicator, buf, "sum", piece_bytes)
            return
        comm, op, size = communicator.mpi_comm, self._mpi_op(), communicator.size
        step = max(1, piece_bytes // 2)
        scale = buf.dtype.type(size)
        for start in range(0, buf.size, step):
            piece = buf[start : start + step]
            if self.name == "bf16":
                wire = _to_bf16(piece)
            else:
                wire = (piece / scale).astype(np.float16)
            comm.Allreduce(MPI.IN_PLACE, [wire, MPI.UINT16_T], op=op)
            if self.name == "bf16":
                piece[...] = _from_bf16(wire)
            else:
                np.multiply(wire.astype(buf.dtype), scale, out=piece)


def make_compression(name):
    """None, or the Compression named `name` (raises ValueError for an unknown name)."""
    return None if name is None else Compression(name)
