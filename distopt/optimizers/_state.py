"""Whole-state operations of the base optimizer: config, saving, set_weights, stateless_apply."""

from __future__ import annotations

import warnings

import numpy as np

from distopt._variable import Variable
from distopt.optimizers._hyperparameters import describe as describe_value
from distopt.optimizers.schedules import LearningRateSchedule


def _checked_values(targets, values, describe) -> list[np.ndarray]:
    """`values` as arrays, each shaped like its target and representable in its dtype (an
    integer variable such as `iterations` takes only whole numbers in its range, never NaN);
    ValueError before anything changes."""
    out = []
    for var, value in zip(targets, values):
        try:
            arr = np.asarray(value.value if hasattr(value, "value") else value)
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"{describe(var)} must be given a numeric array ({e}).") from e
        if arr.dtype.kind not in "fiub":
            raise ValueError(
                f"{describe(var)} must be given a numeric array. Received dtype {arr.dtype}."
            )
        if arr.shape != var.shape:
            raise ValueError(
                f"{describe(var)} has shape {var.shape} not compatible with provided weight "
                f"shape {arr.shape}."
            )
        if var.dtype.kind in "iu" and not np.can_cast(arr.dtype, var.dtype):
            info = np.iinfo(var.dtype)
            with np.errstate(invalid="ignore"):
                whole = np.isfinite(arr) & (arr == np.round(arr))
                ok = bool(np.all(whole & (arr >= info.min) & (arr <= info.max)))
            if not ok:
                raise ValueError(
                    f"{describe(var)} holds {var.dtype} values: it must be given whole numbers "
                    f"in [{info.min}, {info.max}] (no NaN or inf). Received: {describe_value(arr)}"
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

    def get_config(self) -> dict:
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            from distopt.optimizers.schedules import serialize as serialize_schedule

            lr = serialize_schedule(lr)
        elif isinstance(lr, Variable):
            lr = float(lr.value)
        return {
            "name": self.name,
            "learning_rate": lr,
            "weight_decay": self.weight_decay,
            "clipnorm": self.clipnorm,
            "global_clipnorm": self.global_clipnorm,
            "clipvalue": self.clipvalue,
            "use_ema": self.use_ema,
            "ema_momentum": self.ema_momentum,
            "ema_overwrite_frequency": self.ema_overwrite_frequency,
            "loss_scale_factor": self.loss_scale_factor,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            from distopt.optimizers.schedules import deserialize as deserialize_schedule

            config["learning_rate"] = deserialize_schedule(
                config["learning_rate"], custom_objects=custom_objects
            )
        return cls(**config)

    def save_own_variables(self, store) -> None:
        """`store["0"], store["1"], ...` = the values of `variables`, in order."""
        for i, v in enumerate(self.variables):
            store[str(i)] = v.numpy()

    def load_own_variables(self, store) -> None:
        """Assigns `store[str(i)]` to `variables[i]` (Keras's warning if the counts differ)."""
        variables = self.variables  # a wrapper's includes its inner optimizer's
        if len(store.keys()) != len(variables):
            msg = (
                f"Skipping variable loading for optimizer '{self.name}', because it has "
                f"{len(variables)} variables whereas the saved optimizer has "
                f"{len(store.keys())} variables. "
            )
            if not variables or len(variables) <= 2 and not self.built:
                msg += "This is likely because the optimizer has not been called/built yet."
            warnings.warn(msg, stacklevel=2)
            return
        keys = set(map(str, store.keys()))
        missing = [str(i) for i in range(len(variables)) if str(i) not in keys]
        if missing:
            raise ValueError(
                f"Cannot load the state of optimizer '{self.name}': the store has no key(s) "
                f"{missing}; it must map '0'..'{len(variables) - 1}' to the values of "
                "`optimizer.variables`, as `save_own_variables` writes them. "
                f"Received keys: {sorted(keys)[:12]}"
            )
        # Every value is checked before the first is assigned: a bad store changes nothing.
        values = _checked_values(
            variables,
            [store[str(i)] for i in range(len(variables))],
            lambda v: f"Optimizer variable {v.path}",
        )
        for v, value in zip(variables, values):
            v.assign(value)

    def __reduce_ex__(self, protocol):
        """An unbuilt optimizer pickles as its config (as Keras's); a built one refuses."""
        if self.built:
            # Its slots are views into arenas laid out for the model's variables: a pickle
            # would copy each view separately and silently cut it off its arena.
            raise TypeError(
                f"A built {type(self).__name__} cannot be pickled: its state belongs to the "
                "variables it was built with. Save `serialize(optimizer)` and "
                "`save_own_variables(store)`; restore with `deserialize`, `build(variables)` and "
                "`load_own_variables(store)`."
            )
        from distopt.optimizers._registry import deserialize, serialize

        return deserialize, (serialize(self),)
