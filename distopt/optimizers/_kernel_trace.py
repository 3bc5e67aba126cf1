"""Records an elementwise kernel once, as a list of ufunc calls (a tape).

The kernel is called with symbolic stand-ins for its arrays and coefficients; every
arithmetic operator and numpy ufunc they meet is recorded with the dtype numpy gives its
result (found by running the same ufunc on one-element samples). The numpy engine turns the
tape into straight-line `out=` code, so the maths is still written only once, in the kernel.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

_CLIP = np._core.umath.clip if hasattr(np, "_core") else np.core.umath.clip


# Ufuncs whose results are fully specified by IEEE 754 (correctly rounded or exact), so numpy's
# SIMD loops and LLVM give the same bits. Others (power, exp, log, ...) are approximated by
# different libraries, so kernels that use them run on the numpy engine only.
EXACT = {
    np.add, np.subtract, np.multiply, np.true_divide, np.sqrt, np.negative, np.positive,
    np.absolute, np.square, np.maximum, np.minimum, np.fmax, np.fmin, np.sign, np.copysign,
    np.less, np.less_equal, np.greater, np.greater_equal, np.equal, np.not_equal,
    np.logical_and, np.logical_or, np.logical_not, np.isnan, np.isfinite, np.isinf,
    np.floor, np.ceil, np.trunc, np.rint, np.where, _CLIP,
}  # fmt: skip


class KernelError(TypeError):
    """A kernel uses something the engines cannot run identically."""


@dataclass
class Op:
    func: object  # a numpy ufunc, or np.where
    args: tuple  # value ids (ints) or constants (numpy scalars)
    result: int


@dataclass
class Tape:
    num_slots: int
    num_coefficients: int
    kinds: list = field(default_factory=list)  # per value: "array" or "scalar"
    dtypes: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    outputs: tuple = ()

    @property
    def exact(self) -> bool:
        """True when every operation gives the same bits in numpy and in compiled code."""
        return all(op.func in EXACT for op in self.ops)

    def new_value(self, kind: str, dtype: np.dtype) -> int:
        self.kinds.append(kind)
        self.dtypes.append(np.dtype(dtype))
        return len(self.kinds) - 1


class _Symbol:
    """A value of the kernel under tracing: an array chunk or a coefficient."""

    __array_priority__ = 1000
    __slots__ = ("tape", "id", "sample")

    def __init__(self, tape: Tape, vid: int, sample):
        self.tape, self.id, self.sample = tape, vid, sample

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or kwargs or ufunc.nout != 1:
            raise KernelError(
                f"Kernels may call ufuncs only plainly, with one output: `{ufunc.__name__}."
                f"{method}` with {sorted(kwargs)} is not supported."
            )
        return _record(self.tape, ufunc, inputs)

    def __array_function__(self, func, types, args, kwargs):
        if func is np.where and len(args) == 3 and not kwargs:
            return _record(self.tape, np.where, args)
        if func is np.clip and len(args) == 3 and not kwargs:
            return _record(self.tape, _CLIP, args)  # np.clip is this ufunc underneath
        raise KernelError(
            f"Kernels may use arithmetic, numpy ufuncs, `np.clip` and 3-argument `np.where` only; "
            f"`np.{func.__name__}` is not supported. Write it with ufuncs."
        )

    def __bool__(self):
        raise KernelError("Kernels cannot branch on values (`if x > y`); use `np.where`.")

    def _binary(ufunc, reflected=False):  # noqa: N805 - builds methods
        if reflected:
            return lambda self, other: _record(self.tape, ufunc, (other, self))
        return lambda self, other: _record(self.tape, ufunc, (self, other))

    __add__, __radd__ = _binary(np.add), _binary(np.add, True)
    __sub__, __rsub__ = _binary(np.subtract), _binary(np.subtract, True)
    __mul__, __rmul__ = _binary(np.multiply), _binary(np.multiply, True)
    __truediv__, __rtruediv__ = _binary(np.true_divide), _binary(np.true_divide, True)
    __pow__, __rpow__ = _binary(np.power), _binary(np.power, True)
    __lt__, __le__ = _binary(np.less), _binary(np.less_equal)
    __gt__, __ge__ = _binary(np.greater), _binary(np.greater_equal)
    __eq__, __ne__ = _binary(np.equal), _binary(np.not_equal)
    __hash__ = object.__hash__
    del _binary

    def __neg__(self):
        return _record(self.tape, np.negative, (self,))

    def __abs__(self):
        return _record(self.tape, np.absolute, (self,))


def _record(tape: Tape, func, inputs) -> _Symbol:
    args, samples, kind = [], [], "scalar"
    for x in inputs:
        if isinstance(x, _Symbol):
            args.append(x.id)
            samples.append(x.sample)
            if tape.kinds[x.id] == "array":
                kind = "array"
        elif isinstance(x, np.generic):
            args.append(x)
            samples.append(x)
        else:
            fname = getattr(func, "__name__", func)
            raise KernelError(
                f"Kernel constant {x!r} ({type(x).__name__}) in `{fname}`: "
                "pass every constant as a coefficient already cast to the arrays' dtype (a "
                "Python number would be promoted differently by the compiled engine)."
            )
    with np.errstate(all="ignore"):
        sample = func(*samples)
    if kind == "array":
        sample = np.asarray(sample).reshape(1)
    elif isinstance(sample, np.ndarray):
        sample = sample[()]
    result = tape.new_value(kind, sample.dtype)
    tape.ops.append(Op(func, tuple(args), result))
    return _Symbol(tape, result, sample)


def num_coefficients(kernel, num_slots: int) -> int:
    params = list(inspect.signature(kernel).parameters.values())
    if any(p.kind is not p.POSITIONAL_OR_KEYWORD for p in params) or len(params) < 2 + num_slots:
        raise KernelError(
            f"Kernel `{kernel.__name__}` must take (w, g, *{num_slots} slots, *coefficients) as "
            f"plain positional parameters. Received: {inspect.signature(kernel)}"
        )
    return len(params) - 2 - num_slots


def trace(kernel, num_slots: int, dtype, coefficient_dtypes) -> Tape:
    """Runs `kernel` on symbols of these dtypes; returns its tape (values 0.. are the inputs)."""
    dtype = np.dtype(dtype)
    tape = Tape(num_slots, num_coefficients(kernel, num_slots))
    if len(coefficient_dtypes) != tape.num_coefficients:
        raise KernelError(
            f"Kernel `{kernel.__name__}` takes {tape.num_coefficients} coefficients. "
            f"Received: {len(coefficient_dtypes)}"
        )
    one = np.ones(1, dtype)
    inputs = [_Symbol(tape, tape.new_value("array", dtype), one) for _ in range(2 + num_slots)] + [
        _Symbol(tape, tape.new_value("scalar", cd), np.ones((), cd)[()])
        for cd in coefficient_dtypes
    ]
    out = kernel(*inputs)
    if not isinstance(out, tuple) or len(out) != 1 + num_slots:
        raise KernelError(
            f"Kernel `{kernel.__name__}` must return a tuple (w, *slots) of {1 + num_slots} "
            f"values. Received: {out!r}"
        )
    for name, value in zip(["w"] + [f"slot {k}" for k in range(num_slots)], out):
        if not isinstance(value, _Symbol) or tape.kinds[value.id] != "array":
            raise KernelError(f"Kernel `{kernel.__name__}` returns a non-array for {name}.")
        if value.sample.dtype != dtype:
            raise KernelError(
                f"Kernel `{kernel.__name__}` turns {dtype} into {value.sample.dtype} for {name}: "
                "a constant or coefficient of another dtype promoted the maths."
            )
    tape.outputs = tuple(v.id for v in out)
    return tape
