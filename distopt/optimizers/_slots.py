"""Creating optimizer variables: tracked scalars, per-variable state, and arena slots."""

from __future__ import annotations

import threading

import numpy as np

from distopt._variable import Variable, _VariableCreationHook

_scopes = threading.local()


def _stack() -> list:
    stack = getattr(_scopes, "stack", None)
    if stack is None:
        stack = _scopes.stack = []
    return stack


class name_scope:
    """Keras's optimizer name scope: variables created inside get `{optimizer.name}/` (and
    any enclosing optimizer's name) before their name. `apply` builds inside it; a direct
    `build()` does not, so state made outside `add_variable` keeps a bare path, as Keras."""

    def __init__(self, optimizer):
        self._optimizer = optimizer
        self._pushed = False

    def __enter__(self):
        stack = _stack()
        if not stack or stack[-1] is not self._optimizer:
            stack.append(self._optimizer)
            self._pushed = True
        return self

    def __exit__(self, *exc):
        if self._pushed:
            _stack().pop()
        return False


def scoped_path(name: str, optimizer=None) -> str:
    """`name` under the current name scopes, and under `optimizer`'s if not innermost."""
    stack = _stack()
    names = [o.name for o in stack]
    if optimizer is not None and (not stack or stack[-1] is not optimizer):
        names.append(optimizer.name)
    return "/".join([*names, name])


def _internal_variable(value, name, path, dtype) -> Variable:
    # Optimizer state is identical on every rank by construction: no strategy broadcast.
    with _VariableCreationHook(lambda v: None):
        var = Variable(value, name=name, trainable=False, dtype=dtype)
    var._path = path
    return var


def _fill_value(initializer):
    if initializer == "zeros":
        return 0
    if initializer == "ones":
        return 1
    if isinstance(initializer, (int, float)):
        return initializer
    raise ValueError(
        "Argument `initializer` must be 'zeros', 'ones', a number or a callable "
        f"`(shape, dtype) -> array`. Received: initializer={initializer!r}"
    )


def _initial_value(initializer, shape, dtype):
    if callable(initializer):
        return np.asarray(initializer(shape, dtype), dtype=dtype)
    return np.full(shape, _fill_value(initializer), dtype=dtype)


class SlotsMixin:
    def add_variable(
        self, shape, initializer="zeros", dtype=None, aggregation="none", layout=None, name=None
    ):
        """Creates and tracks a non-trainable optimizer variable (`dtype=None` is float32)."""
        name = name or "variable"
        dt = np.dtype(dtype or "float32")
        value = _initial_value(initializer, tuple(shape), dt)
        return self._track(_internal_variable(value, name, scoped_path(name, self), dt))

    def add_variable_from_reference(self, reference_variable, name=None, initializer="zeros"):
        """A tracked variable shaped like `reference_variable`, named `{path}_{name}`."""
        ref = reference_variable
        return self._track_like(ref, name, _initial_value(initializer, ref.shape, ref.dtype))

    def _state_from_reference(self, reference_variable, name, initializer="zeros"):
        """`add_variable_from_reference`, but under per-tensor ZeRO-1 a variable another
        rank updates gets an empty 1-D placeholder (same name and place in `variables`)."""
        if self._layout.owns(reference_variable):
            return self.add_variable_from_reference(reference_variable, name, initializer)
        empty = np.empty(0, dtype=reference_variable.dtype)
        return self._track_like(reference_variable, name, empty)

    def _track_like(self, ref, name, value):
        # Keras's name for state of `ref`: `{path}_{name}`.
        full = f"{ref.path.replace('/', '_')}_{name or 'var'}"
        return self._track(_internal_variable(value, full, scoped_path(full, self), ref.dtype))

    def _state_size(self, variable) -> int:
        """Elements of state kept for `variable` (balances per-tensor ZeRO-1 across ranks)."""
        return variable.size

    def add_optimizer_variables(self, trainable_variables, name, initializer="zeros"):
        """Slots in the flat arenas, interleaved per variable; None for overwrite variables.

        Returns a list (one name) or a tuple of lists (a list of names).
        """
        names = [name] if isinstance(name, str) else list(name)
        inits = (
            initializer if isinstance(initializer, (list, tuple)) else [initializer] * len(names)
        )
        if len(inits) != len(names):
            raise ValueError(
                "The number of provided names must match the number of provided initializers. "
                f" Received name='{name}', initializer='{initializer}'"
            )
        layout = self._layout
        for n, init in zip(names, inits):
            if n not in self._slot_arenas and not callable(init):
                self._slot_arenas[n] = {
                    dt: layout.new_arena(dt, _fill_value(init), n in self._kernel_slots)
                    for dt in layout.totals
                }
        result = [[] for _ in names]
        for var in trainable_variables:
            i = layout.index.get(id(var))
            for k, (n, init) in enumerate(zip(names, inits)):
                if i is None:
                    result[k].append(None)
                    continue
                full = f"{var.path.replace('/', '_')}_{n}"
                slot = self._track(_internal_variable(0, full, scoped_path(full, self), var.dtype))
                arena = self._slot_arenas.get(n, {}).get(var.dtype)
                view = layout.view(arena, i) if arena is not None else np.empty_like(var.value)
                if callable(init):
                    view[...] = init(var.shape, var.dtype)
                slot._value = view
                result[k].append(slot)
        for n, slots in zip(names, result):
            self._slots[n] = slots
        return result[0] if isinstance(name, str) else tuple(result)
