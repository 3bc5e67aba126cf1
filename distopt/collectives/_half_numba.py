"""Compiled 16-bit conversions and sums for wire compression (used when numba imports).

Each function gives the numpy version's bits (`_compress.py`; tests compare millions of bit
patterns) except for NaN payloads: bf16 rounds to nearest even, NaN -> 0x7FC0; fp16 uses the
hardware's float32 <-> float16 conversions (F16C on x86: numpy's rounding, but a signalling
NaN comes back quiet). An fp16 sum is done in float32 and rounded once, which is the
correctly rounded fp16 sum (24 >= 2 * 11 + 2 bits), as numpy's float16 add computes it.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_OPTIONS = {"error_model": "numpy", "fastmath": False, "nogil": True, "cache": False}


@intrinsic
def _as_f32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return types.float32(types.uint32), codegen


@intrinsic
def _as_u32(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))

    return types.uint32(types.float32), codegen


@numba.njit(inline="always", **_OPTIONS)
def _bf16(x):
    b = np.int64(_as_u32(x))
    if (b & 0x7FFFFFFF) > 0x7F800000:  # rounding would carry a NaN's payload elsewhere
        return np.uint16(0x7FC0)
    return np.uint16((b + 0x7FFF + ((b >> 16) & 1)) >> 16)


@numba.njit(inline="always", **_OPTIONS)
def _from_bf16(h):
    return _as_f32(np.uint32(np.int64(h) << 16))


@intrinsic
def _fp16(typingctx, value):
    # LLVM's float -> half truncation rounds to nearest even (one vcvtps2ph with F16C).
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def _from_fp16(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


# The same signatures as the numpy versions in `_compress.py`: narrow(x, scale, out),
# widen(h, scale, out), sum(a, b) into b. bf16 keeps float32's range and ignores `scale`.
@numba.njit(**_OPTIONS)
def narrow_bf16(x, scale, out):
    for i in range(x.shape[0]):
        out[i] = _bf16(x[i])


@numba.njit(**_OPTIONS)
def widen_bf16(h, scale, out):
    for i in range(h.shape[0]):
        out[i] = _from_bf16(h[i])


@numba.njit(**_OPTIONS)
def sum_bf16(a, b):
    for i in range(b.shape[0]):
        b[i] = _bf16(_from_bf16(a[i]) + _from_bf16(b[i]))


@numba.njit(**_OPTIONS)
def narrow_fp16(x, scale, out):
    for i in range(x.shape[0]):
        out[i] = _fp16(x[i] / scale)


@numba.njit(**_OPTIONS)
def widen_fp16(h, scale, out):
    for i in range(h.shape[0]):
        out[i] = _from_fp16(h[i]) * scale


@numba.njit(**_OPTIONS)
def sum_fp16(a, b):
    for i in range(b.shape[0]):
        b[i] = _fp16(_from_fp16(a[i]) + _from_fp16(b[i]))
