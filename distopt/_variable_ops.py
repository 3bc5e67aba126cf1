"""`keras.Variable`'s Python operators for `distopt.Variable`, with Keras's result dtypes.

Every operator reads the variable's current value and returns a new numpy value (the variable
is never changed). Result dtypes follow Keras's promotion: a Python number is "weak" and keeps
the variable's dtype (an int or bool variable with a Python float gives floatx, float32), a
float mixed with an int or bool array keeps the float's dtype, and true division of integers
gives float32. Comparisons and `&`, `|`, `^` (logical, as in Keras) give bool. 64-bit
dtypes are kept (Keras's numpy backend narrows them to 32 bits; JAX with x64 keeps them).
"""

from __future__ import annotations

import numpy as np

_FLOATX = np.dtype("float32")
# Keras standardises Python lists of numbers to its default int and float dtypes.
_DEFAULT_OF_KIND = {"b": np.dtype("bool"), "i": np.dtype("int32"), "f": _FLOATX}


def _operand(other):
    """`(array, dtype, weak_kind)` for `other`, or None if it is not numeric."""
    if isinstance(other, (int, float)):  # np.float64 too: it is a Python float
        return (
            other,
            None,
            "b" if isinstance(other, bool) else "i" if isinstance(other, int) else "f",
        )
    value = getattr(other, "_value", None)
    if isinstance(value, np.ndarray):  # a Variable
        return value, value.dtype, None
    try:
        arr = np.asarray(other)
    except (TypeError, ValueError):
        return None
    if arr.dtype.kind not in "biuf":
        return None
    if not isinstance(other, (np.ndarray, np.generic)):
        arr = arr.astype(_DEFAULT_OF_KIND[arr.dtype.kind if arr.dtype.kind != "u" else "i"])
    return arr, arr.dtype, None


def _result_dtype(dtype: np.dtype, other_dtype, weak_kind) -> np.dtype:
    if weak_kind is not None:
        if weak_kind == "b" or dtype.kind == "f" or (weak_kind == "i" and dtype.kind in "iu"):
            return dtype
        return _FLOATX if weak_kind == "f" else np.dtype("int32")
    if dtype.kind == "f" and other_dtype.kind != "f":
        return dtype
    if other_dtype.kind == "f" and dtype.kind != "f":
        return other_dtype
    return np.result_type(dtype, other_dtype)


def _binary(op, reflected=False, result=None):
    """An operator method `self <op> other` (or `other <op> self`) on numpy values."""

    def method(self, other):
        parsed = _operand(other)
        if parsed is None:
            return NotImplemented
        value, other_dtype, weak = parsed
        mine = self._value
        dtype = _result_dtype(mine.dtype, other_dtype, weak)
        if result == "float" and dtype.kind != "f":
            dtype = _FLOATX
        a = mine.astype(dtype, copy=False)
        b = np.asarray(value, dtype=dtype)
        return op(b, a) if reflected else op(a, b)

    return method


def _logical(op, reflected=False):
    """`and`/`or`/`xor` as Keras: logical, on the truth of each element, giving bool."""

    def method(self, other):
        parsed = _operand(other)
        if parsed is None:
            return NotImplemented
        other_value = np.asarray(parsed[0])
        return op(other_value, self._value) if reflected else op(self._value, other_value)

    return method


class VariableOperatorsMixin:
    """Keras's operators on `self._value`; results are numpy values."""

    __slots__ = ()
    # Variables stay usable as dict keys and set members (by identity), as before `==`
    # compared values.
    __hash__ = object.__hash__

    __eq__, __ne__ = _binary(np.equal), _binary(np.not_equal)
    __lt__ = _binary(np.less)
    __le__ = _binary(np.less_equal)
    __gt__ = _binary(np.greater)
    __ge__ = _binary(np.greater_equal)
    __add__, __radd__ = _binary(np.add), _binary(np.add, reflected=True)
    __sub__, __rsub__ = _binary(np.subtract), _binary(np.subtract, reflected=True)
    __mul__, __rmul__ = _binary(np.multiply), _binary(np.multiply, reflected=True)
    __truediv__ = _binary(np.true_divide, result="float")
    __rtruediv__ = _binary(np.true_divide, reflected=True, result="float")
    __floordiv__ = _binary(np.floor_divide)
    __rfloordiv__ = _binary(np.floor_divide, reflected=True)
    __mod__, __rmod__ = _binary(np.mod), _binary(np.mod, reflected=True)
    __pow__, __rpow__ = _binary(np.power), _binary(np.power, reflected=True)
    __matmul__ = _binary(np.matmul)
    __rmatmul__ = _binary(np.matmul, reflected=True)

    __and__, __rand__ = _logical(np.logical_and), _logical(np.logical_and, reflected=True)
    __or__, __ror__ = _logical(np.logical_or), _logical(np.logical_or, reflected=True)
    __xor__, __rxor__ = _logical(np.logical_xor), _logical(np.logical_xor, reflected=True)

    def __neg__(self):
        return np.negative(self._value)

    def __pos__(self):
        return self._value.copy()

    def __abs__(self):
        return np.abs(self._value)

    def __invert__(self):
        return np.invert(self._value)

    def __round__(self, ndigits=None):
        return np.round(self._value, decimals=ndigits or 0)

    def __getitem__(self, index):
        return self._value[index].copy()

    def _scalar(self, convert):
        if self._value.ndim > 0:
            raise TypeError(
                "Only scalar arrays can be converted to Python scalars. "
                f"Got: shape={self._value.shape}"
            )
        return convert(self._value)

    def __int__(self):
        return self._scalar(int)

    def __float__(self):
        return self._scalar(float)

    def __bool__(self):
        # Keras refuses: the truth of an array-valued variable is ambiguous, and an
        # identity-based truth would be silently wrong. Comparisons return numpy bools.
        raise TypeError(
            "A Variable cannot be used as a boolean (as `keras.Variable`). Compare it "
            "(`variable == 0`) or convert it (`bool(variable.numpy())`)."
        )
