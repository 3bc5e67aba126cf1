"""Whole-state operations of the base optimizer: `set_weights` and `stateless_apply`."""

from __future__ import annotations

import numpy as np


def _checked_values(targets, values, describe) -> list[np.ndarray]:
    """`values` as arrays, each shaped like its target; ValueError before anything changes."""
    out = []
    for var, value in zip(targets, values):
        arr = np.asarray(value.value if hasattr(value, "value") else value)
        if arr.dtype.kind not in "fiub":
            raise ValueError(
                f"{describe(var)} must be given a numeric array. Received dtype {arr.dtype}."
            )
        if arr.shape != var.shape:
            raise ValueError(
                f"{describe(var)} has shape {var.shape} not compatible with provided weight "
                f"shape {arr.shape}."
            )
        out.append(arr)
    return out


class StateMixin:
    def set_weights(self, weights):
        """Assigns `weights[i]` to `variables[i]` (extra or missing entries are ignored).

        Every shape is checked before anything is assigned.
        """
        if not self.built:
            raise ValueError(
                "You are calling `set_weights()` on an optimizer that has not yet been built. "
                "Please call `optimizer.build(trainable_variables)` to create the optimizer "
                "weights before calling `set_weights()`."
            )
        variables = self.variables
        weights = list(weights)
        values = _checked_values(variables, weights, lambda v: f"Optimizer variable {v.path}")
        for var, value in zip(variables, values):
            var.assign(value)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        """Pure form of `apply`: returns `(new_trainable_values, new_optimizer_values)`.

        The given values stand in for the built trainable variables and `optimizer.variables`
        during the call; afterwards every variable holds its previous value again. Aggregates
        across replicas like `apply`: call it on all ranks.
        """
        cls = type(self).__name__
        if not self.built:
            raise ValueError(
                f"To call `stateless_apply`, {cls} must be built (i.e. its variables must have "
                "been created). You can build it via `optimizer.build(trainable_variables)`."
            )
        own = self.variables
        model = list(self._trainable_variables)
        optimizer_variables = list(optimizer_variables)
        trainable_variables = list(trainable_variables)
        if len(optimizer_variables) != len(own):
            raise ValueError(
                "Argument `optimizer_variables` must be a list of tensors corresponding 1:1 to "
                f"{cls}().variables. Received list with length {len(optimizer_variables)}, but "
                f"expected {len(own)} variables."
            )
        if len(trainable_variables) != len(model):
            raise ValueError(
                "Argument `optimizer_variables` must be a list of tensors corresponding 1:1 to "
                "the trainable variables list that the optimizer was built with. Received "
                f"len(trainable_variables) == {len(trainable_variables)} whereas the optimizer "
                f"was built with {len(model)} variables."
            )
        values = _checked_values(
            own + model, optimizer_variables + trainable_variables, lambda v: f"Variable {v.path}"
        )
        saved = [v.numpy() for v in own + model]
        try:
            for var, value in zip(own + model, values):
                var.assign(value)
            self.apply(grads)
            new_model = [v.numpy() for v in model]
            new_own = [v.numpy() for v in own]
        finally:
            for var, value in zip(own + model, saved):
                var.assign(value)
        return new_model, new_own
