"""Optional 16-bit compression of float buckets on the wire: "bf16" or "fp16".

Each piece of a float32/float64 bucket is rounded to 16 bits (to nearest, ties to even),
summed by MPI with a 16-bit SUM operation, and widened back in place. bf16 keeps float32's
range (8 bits of mantissa); fp16 keeps 11 bits of mantissa but overflows above 65504, so
each rank divides by the number of ranks before rounding and the sum is multiplied back
after. Other dtypes are reduced uncompressed. Only MPI traffic is compressed: ranks of one
node that sum through shared memory do not round.
"""

from __future__ import annotations

import os
import sys

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


# numpy versions of narrow(x, scale, out) (fp16: x / scale), widen(h, scale, out) (fp16:
# times scale) and sum(a, b) into b; `_half_numba` compiles the same ones.
def narrow_bf16(x, scale, out):
    out[...] = _to_bf16(x)


def widen_bf16(h, scale, out):
    out[...] = _from_bf16(h)


def sum_bf16(a, b):
    b[...] = _to_bf16(_from_bf16(a) + _from_bf16(b))


def narrow_fp16(x, scale, out):
    out.view(np.float16)[...] = x / scale


def widen_fp16(h, scale, out):
    np.multiply(h.view(np.float16).astype(out.dtype), scale, out=out)


def sum_fp16(a, b):
    h = b.view(np.float16)
    np.add(h, a.view(np.float16), out=h)


_state: dict = {}


def _compiled():
    """`_half_numba` (same bits but NaN payloads; ~10-50x faster), or None without numba.

    `DISTOPT_ENGINE=numpy` keeps the numpy versions, as it does for optimizer kernels.
    """
    if "module" not in _state:
        module = None
        if os.environ.get("DISTOPT_ENGINE", "auto").lower() != "numpy":
            try:
                from distopt.collectives import _half_numba as module

                _self_check(module)
            except Exception:  # noqa: BLE001 - no numba, or it cannot compile for this CPU
                module = None
        _state["module"] = module
    return _state["module"]


def _functions(name: str, dtype) -> tuple:
    """(narrow, widen, sum) for `name`: compiled ones for float32 when they work."""
    compiled = _compiled()
    module = compiled if compiled is not None and dtype == np.float32 else sys.modules[__name__]
    return tuple(getattr(module, f"{step}_{name}") for step in ("narrow", "widen", "sum"))


def _self_check(module) -> None:
    # Compiles every function, outside any MPI callback, and refuses a build whose
    # roundings differ from numpy's (e.g. a CPU without float16 conversions).
    x = np.array([1.0, 1.00390625, 1 + 2**-11, -65519.0, 65520.0, 2**-25, 3e-6, 0.0], np.float32)
    one = np.float32(1)
    for name in COMPRESSIONS:
        wire, expected = np.empty(x.size, np.uint16), np.empty(x.size, np.uint16)
        with np.errstate(over="ignore"):
            globals()[f"narrow_{name}"](x, one, expected)
        getattr(module, f"narrow_{name}")(x, one, wire)
        getattr(module, f"sum_{name}")(wire, wire.copy())
        getattr(module, f"widen_{name}")(wire, one, np.empty(x.size, np.float32))
        if not np.array_equal(wire, expected):
            raise ArithmeticError(f"compiled {name} rounding differs from numpy's")


def _mpi_sum(name: str):
    def op(inbuf, inoutbuf, datatype) -> None:
        # The sum is on 16-bit values whatever the buffers' dtype: compiled when available.
        total = _functions(name, np.float32)[2]
        total(np.frombuffer(inbuf, dtype=np.uint16), np.frombuffer(inoutbuf, dtype=np.uint16))

    return op


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

            self._op = MPI.Op.Create(_mpi_sum(self.name), commute=True)
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
        narrow, widen, _ = _functions(self.name, buf.dtype)
        wire = np.empty(min(step, buf.size), np.uint16)
        for start in range(0, buf.size, step):
            piece = buf[start : start + step]
            w = wire[: piece.size]
            narrow(piece, scale, w)
            comm.Allreduce(MPI.IN_PLACE, [w, MPI.UINT16_T], op=op)
            widen(w, scale, piece)


def make_compression(name):
    """None, or the Compression named `name` (raises ValueError for an unknown name)."""
    return None if name is None else Compression(name)
