"""`distopt.Variable`: a named numpy array that optimizers update in place."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from distopt import _naming
from distopt._variable_ops import VariableOperatorsMixin

_FLOATX = "float32"
_creation = threading.local()
# Counts changes, after creation, of the attributes an optimizer checks once per variable
# list (`constraint`, `overwrite_with_gradient`, the strategy binding): its cached checks are
# redone when this moves.
revision = [0]


def _creation_hooks() -> list:
    hooks = getattr(_creation, "hooks", None)
    if hooks is None:
        hooks = _creation.hooks = []
    return hooks


class _VariableCreationHook:
    """Context manager a strategy scope uses to see each variable created inside it."""

    def __init__(self, hook: Callable[[Variable], None]):
        self._hook = hook

    def __enter__(self):
        _creation_hooks().append(self._hook)
        return self

    def __exit__(self, *exc):
        _creation_hooks().pop()
        return False


def _standardize_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(
            f"Argument `dtype` must be a numpy dtype or its name. Received: dtype={dtype!r}"
        ) from e
    if dt.kind not in "fiub":
        raise ValueError(
            f"Argument `dtype` must be a float, int or bool dtype. Received: dtype={dtype!r}"
        )
    return dt


class Variable(VariableOperatorsMixin):
    """A numpy-backed variable, as `keras.Variable`.

    `value` is the live array (optimizers update it in place; it may become a view into an
    optimizer's flat parameter arena at build). `numpy()` returns a copy. With `dtype=None`
    the dtype is Keras's floatx, float32; pass `dtype="float64"` for double precision.
    A variable created under `strategy.scope()` is bound to that strategy and starts with
    rank 0's value on every rank. Arithmetic, comparisons and `int`/`float` work on its value
    as on `keras.Variable` and give numpy values (`optimizer.iterations == 0`).
    """

    def __init__(
        self,
        initial_value,
        name: str | None = None,
        trainable: bool = True,
        dtype=None,
        constraint: Callable | None = None,
        overwrite_with_gradient: bool = False,
    ):
        if name is not None and (not isinstance(name, str) or "/" in name or not name):
            raise ValueError(
                f"Argument `name` must be a non-empty string without '/'. Received: name={name!r}"
            )
        if constraint is not None and not callable(constraint):
            raise ValueError(
                f"Argument `constraint` must be callable. Received: constraint={constraint!r}"
            )
        if callable(initial_value):
            initial_value = initial_value()
        if isinstance(initial_value, Variable):
            initial_value = initial_value.value
        dt = _standardize_dtype(dtype if dtype is not None else _FLOATX)
        try:
            value = np.array(initial_value, dtype=dt, copy=True, order="C")
        except (TypeError, ValueError) as e:
            raise TypeError(
                "Argument `initial_value` must be array-like (a number, list or ndarray) "
                f"or a zero-argument callable returning one. Received: {initial_value!r}"
            ) from e
        self._value: np.ndarray = value
        self._name = name if name is not None else _naming.uniquify("variable")
        self._path = self._name
        self.trainable = bool(trainable)
        self._constraint = constraint
        self._overwrite_with_gradient = bool(overwrite_with_gradient)
        # Set by the owner that re-homed this variable's storage into a flat arena.
        self._arena_owner: object | None = None
        self._bound_strategy = None
        for hook in reversed(_creation_hooks()):
            hook(self)
            break

    # -- properties -------------------------------------------------------------------------
    @property
    def value(self) -> np.ndarray:
        return self._value

    @property
    def name(self) -> str:
        return self._name

    @property
    def path(self) -> str:
        return self._path

    @property
    def constraint(self) -> Callable | None:
        return self._constraint

    @constraint.setter
    def constraint(self, value: Callable | None) -> None:
        self._constraint = value
        revision[0] += 1

    @property
    def overwrite_with_gradient(self) -> bool:
        return self._overwrite_with_gradient

    @overwrite_with_gradient.setter
    def overwrite_with_gradient(self, value: bool) -> None:
        self._overwrite_with_gradient = value
        revision[0] += 1

    @property
    def _strategy(self):
        """The strategy whose scope created this variable (None: no strategy)."""
        return self._bound_strategy

    @_strategy.setter
    def _strategy(self, strategy) -> None:
        self._bound_strategy = strategy
        revision[0] += 1

    @property
    def shape(self) -> tuple[int, ...]:
        return self._value.shape

    @property
    def dtype(self) -> np.dtype:
        return self._value.dtype

    @property
    def ndim(self) -> int:
        return self._value.ndim

    @property
    def size(self) -> int:
        return self._value.size

    def numpy(self) -> np.ndarray:
        return self._value.copy()

    def __array__(self, dtype=None, copy=None):
        if dtype is None:
            return self._value.copy() if copy else self._value
        return self._value.astype(dtype)

    def __repr__(self) -> str:
        return (
            f"<Variable path={self.path}, shape={self.shape}, dtype={self.dtype.name}, "
            f"value={self._value!r}>"
        )

    # -- assignment -------------------------------------------------------------------------
    def _checked(self, value) -> np.ndarray:
        if isinstance(value, Variable):
            value = value.value
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"Cannot assign {value!r} to variable `{self.path}`: expected an array-like"
            ) from e
        if arr.dtype.kind not in "fiub":
            raise TypeError(
                f"Cannot assign a value of dtype {arr.dtype} to variable `{self.path}` "
                f"({self.dtype}): expected a numeric array"
            )
        if arr.shape != self.shape and not (arr.ndim == 0 and self.ndim == 0):
            raise ValueError(
                f"Cannot assign a value of shape {arr.shape} to variable `{self.path}` of shape "
                f"{self.shape}. Pass a value of shape {self.shape}."
            )
        return arr

    def assign(self, value) -> Variable:
        """Writes `value` (same shape) into the variable's storage, cast to its dtype."""
        arr = self._checked(value)
        np.copyto(self._value, arr, casting="unsafe")
        return self

    def assign_add(self, delta) -> Variable:
        arr = self._checked(delta)
        np.add(self._value, arr, out=self._value, casting="unsafe")
        return self

    def assign_sub(self, delta) -> Variable:
        arr = self._checked(delta)
        np.subtract(self._value, arr, out=self._value, casting="unsafe")
        return self

    # -- storage ----------------------------------------------------------------------------
    def _rehome(self, view: np.ndarray, owner: object) -> None:
        """Moves storage into `view` (same shape/dtype), e.g. a slice of a flat arena."""
        np.copyto(view, self._value)
        self._value = view
        self._arena_owner = owner
