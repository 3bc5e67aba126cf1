"""Checking `grads_and_vars` before anything is touched."""

from __future__ import annotations

import operator
from collections.abc import Iterable

import numpy as np

from distopt import _variable
from distopt._variable import Variable

# One-element type sets: `set(map(type, xs)) == _TUPLES` checks a whole list at C speed.
_TUPLES, _PAIRS, _VARIABLES, _ARRAYS = {tuple}, {2}, {Variable}, {np.ndarray}
_shape = operator.attrgetter("shape")
_dtype = operator.attrgetter("dtype")


def _describe(x) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def as_gradient(g, var: Variable) -> np.ndarray:
    """`g` as a numeric ndarray of `var`'s shape, or a TypeError / ValueError naming `var`."""
    if isinstance(g, Variable):
        g = g.value
    if isinstance(g, (str, bytes, dict, set)):
        raise TypeError(
            f"The gradient for variable `{var.path}` must be array-like (an ndarray, number or "
            f"nested list). Received: {type(g).__name__} {_describe(g)}"
        )
    try:
        arr = np.asarray(g)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"The gradient for variable `{var.path}` must be array-like. Received: {_describe(g)}"
        ) from e
    if arr.dtype.kind not in "fiu":
        raise TypeError(
            f"The gradient for variable `{var.path}` must be a real numeric array. "
            f"Received dtype {arr.dtype}: {_describe(g)}"
        )
    if arr.shape != var.shape:
        raise ValueError(
            f"The gradient for variable `{var.path}` has shape {arr.shape}, but the variable "
            f"has shape {var.shape}. Pass one gradient of the variable's shape per variable."
        )
    return arr


def unzip_pairs(grads_and_vars) -> tuple[list, list[Variable]]:
    """Materialises (gradient, variable) pairs; TypeError for malformed input."""
    if isinstance(grads_and_vars, (str, bytes, dict)) or not isinstance(grads_and_vars, Iterable):
        raise TypeError(
            "`grads_and_vars` must be an iterable of (gradient, variable) pairs, e.g. "
            f"`zip(grads, variables)`. Received: {_describe(grads_and_vars)}"
        )
    pairs = list(grads_and_vars)
    if pairs and set(map(type, pairs)) == _TUPLES and set(map(len, pairs)) == _PAIRS:
        grads, variables = map(list, zip(*pairs))  # the common case, transposed at C speed
        if set(map(type, variables)) == _VARIABLES:
            return grads, variables
    grads, variables = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(
                f"`grads_and_vars` must contain (gradient, variable) pairs; item {i} is "
                f"{_describe(pair)}. Pass e.g. `zip(grads, variables)`."
            )
        g, v = pair
        if not isinstance(v, Variable):
            raise TypeError(
                f"Item {i} of `grads_and_vars` pairs a gradient with {_describe(v)}, which is "
                "not a `distopt.Variable`. Optimizers update `distopt.Variable` objects only."
            )
        grads.append(g)
        variables.append(v)
    return grads, variables


def check_gradients(grads: list, variables: list[Variable], known: dict | None) -> list:
    """Converts gradients (None kept) and checks shapes, duplicates and membership."""
    if not variables:
        raise ValueError(
            "`grads_and_vars` is empty: no gradient at all was provided. Pass at least one "
            "(gradient, variable) pair."
        )
    ids = [id(v) for v in variables]
    unique = set(ids)
    if len(unique) == len(ids) and (known is None or unique <= known.keys()):
        # Steady state (no duplicate, no unknown variable): only the gradients need a look,
        # and a float ndarray of the right shape is taken as it is.
        return [
            g
            if type(g) is np.ndarray and g.shape == v._value.shape and g.dtype.kind in "fiu"
            else (None if g is None else as_gradient(g, v))
            for g, v in zip(grads, variables)
        ]
    seen: set[int] = set()
    out = []
    for g, v in zip(grads, variables):
        if id(v) in seen:
            raise ValueError(
                f"Variable `{v.path}` appears more than once in `grads_and_vars`. Sum its "
                "gradients and pass it once."
            )
        seen.add(id(v))
        if known is not None and id(v) not in known:
            raise ValueError(
                f"Unknown variable: {v!r}. This optimizer can only be called for the variables "
                "it was originally built with. When working with a new set of variables, you "
                "should recreate a new optimizer instance."
            )
        out.append(None if g is None else as_gradient(g, v))
    return out


class ListFacts:
    """What a built optimizer knows once about a variable list that passed
    `check_gradients`: no duplicate, no unknown variable, each variable's shape and dtype
    (fixed for a variable's life) and, while `_variable.revision` stays at `revision`,
    whether any overwrites with its gradient or has a constraint, and the strategies the
    variables are bound to. Holds the variables, so their ids are not reused."""

    __slots__ = ("variables", "shapes", "dtypes", "dtype", "revision", "overwrite",
                 "constrained", "bound")  # fmt: skip

    def __init__(self, variables: tuple):
        self.variables = variables
        self.shapes = [v._value.shape for v in variables]
        self.dtypes = [v._value.dtype for v in variables]
        self.dtype = {self.dtypes[0]} if len(set(self.dtypes)) == 1 else None
        self.refresh()

    def refresh(self) -> None:
        self.revision = _variable.revision[0]
        self.overwrite = any(v.overwrite_with_gradient for v in self.variables)
        self.constrained = any(v.constraint is not None for v in self.variables)
        self.bound = {v._strategy for v in self.variables} - {None}


def steady_gradients(grads: list, facts: ListFacts) -> bool | None:
    """None unless every gradient is an ndarray of its variable's shape and a real dtype
    (what `check_gradients` passes through unchanged); else whether every dtype already is
    its variable's (no cast needed). Whole-list checks at C speed, for the steady state."""
    if set(map(type, grads)) != _ARRAYS or list(map(_shape, grads)) != facts.shapes:
        return None
    dtypes = set(map(_dtype, grads))
    for dt in dtypes:
        if dt.kind not in "fiu":
            return None
    if facts.dtype is not None:
        return dtypes == facts.dtype
    return list(map(_dtype, grads)) == facts.dtypes


def list_facts(cache: dict, variables: list[Variable], known: dict) -> ListFacts | None:
    """The facts of `variables` from `cache` (keyed on the variables themselves), computed
    and remembered when they are unique, non-empty and all in `known`; else None."""
    held = tuple(variables)
    facts = cache.get(held)
    if facts is not None:
        if facts.revision != _variable.revision[0]:
            facts.refresh()
    elif held:
        unique = set(map(id, held))
        if len(unique) == len(held) and unique <= known.keys():
            if len(cache) >= 8:
                cache.clear()
            facts = cache[held] = ListFacts(held)
    return facts


def variable_list(variables) -> list[Variable]:
    """`variables` as a list, or a TypeError naming the first that is not a Variable, or a
    ValueError naming the first that is not floating-point (as in Keras, whose backends
    differentiate floating-point variables only: an integer or bool one has no gradient)."""
    variables = list(variables)
    for v in variables:
        if not isinstance(v, Variable):
            raise TypeError(f"`build` takes distopt.Variable objects. Received: {v!r}")
    for v in variables:
        if v.dtype.kind != "f":
            raise ValueError(
                f"Variable `{v.path}` has dtype {v.dtype}, but optimizers update floating-point "
                "variables only (gradients exist only for those). Create it with a float dtype, "
                "or leave it out of the variables passed to the optimizer."
            )
    return variables


def _root(array):
    """The object that owns `array`'s memory (the end of its chain of `.base`)."""
    while getattr(array, "base", None) is not None:
        array = array.base
    return array


def snapshot_aliases(grads: list, variables) -> list:
    """`grads`, with a copy of each gradient whose memory belongs to the same buffer as one of
    `variables` (e.g. a view of another variable): updates that go variable by variable then
    read every gradient as it was passed, whatever the order, as one fused pass does."""
    roots = {id(_root(v._value)) for v in variables}
    out = None
    for k, g in enumerate(grads):
        if g is not None and id(_root(g)) in roots:
            if out is None:
                out = list(grads)
            out[k] = np.array(g)
    return grads if out is None else out
