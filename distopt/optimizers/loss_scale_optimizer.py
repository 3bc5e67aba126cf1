"""Dynamic loss scaling around another optimizer, as `keras.optimizers.LossScaleOptimizer`."""

from __future__ import annotations

import numpy as np

from distopt._variable import Variable
from distopt.optimizers import _slots
from distopt.optimizers._apply import SKIPPED
from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import describe
from distopt.optimizers._unscaling import (
    Unscaler,
    all_finite,
    finite_on_every_rank,
    reduce_and_check,
)
from distopt.optimizers._validation import check_gradients, variable_list

_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Old configs carried the base keys; Keras accepts them only at these defaults.
_BASE_DEFAULTS = {
    "weight_decay": None,
    "clipnorm": None,
    "global_clipnorm": None,
    "clipvalue": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


class LossScaleOptimizer(Optimizer):
    """Wraps `inner_optimizer` with a dynamic loss scale.

    Multiply the loss by the scale (`scale_loss`); gradients are divided by it before the
    inner update. A step whose gradients are not all finite is skipped and halves the scale;
    every `dynamic_growth_steps` finite steps in a row double it. Under a strategy the
    decision is taken on the aggregated gradients (or on an all-reduced flag when the inner
    optimizer accumulates locally), so every rank skips or updates together.
    """

    def __init__(
        self,
        inner_optimizer,
        initial_scale=2.0**15,
        dynamic_growth_steps=2000,
        name=None,
        **kwargs,
    ):
        if not kwargs.pop("dynamic", True):
            raise ValueError(
                "LossScaleOptimizer no longer supports `dynamic=False`. Instead, simply set "
                "`loss_scale_factor` directly on the `inner_optimizer`."
            )
        for arg, default in _BASE_DEFAULTS.items():
            if arg in kwargs:
                value = kwargs.pop(arg)
                if (default is None and value is not None) or value != default:
                    raise ValueError(
                        f"LossScaleOptimizer does not support `{arg}`. Instead, set `{arg}` on "
                        "the `inner_optimizer`."
                    )
        if kwargs:
            raise ValueError(
                f"LossScaleOptimizer does not support arguments: `{'`, `'.join(kwargs)}`."
            )
        if not isinstance(inner_optimizer, Optimizer):
            raise TypeError(
                "Argument `inner_optimizer` must be a distopt optimizer instance, e.g. "
                f"`SGD()`. Received: inner_optimizer={inner_optimizer!r}"
            )
        if (
            not isinstance(initial_scale, (int, float, np.integer, np.floating))
            or isinstance(initial_scale, bool)
            or not 0 < initial_scale <= _FLOAT32_MAX  # a huge int compares without overflow
        ):
            raise ValueError(
                "Argument `initial_scale` must be a finite number > 0. It is held as a float32. "
                f"Received: initial_scale={describe(initial_scale)}"
            )
        if (
            not isinstance(dynamic_growth_steps, (int, np.integer))
            or isinstance(dynamic_growth_steps, bool)
            or dynamic_growth_steps < 1
        ):
            raise ValueError(
                "Argument `dynamic_growth_steps` must be an integer >= 1. "
                f"Received: dynamic_growth_steps={describe(dynamic_growth_steps)}"
            )
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner_optimizer
        self.initial_scale = initial_scale
        self.dynamic_growth_steps = dynamic_growth_steps
        self._unscalers: dict = {}  # per cached variable list (its ListFacts): Unscaler or None
        # Otherwise the inner optimizer would unscale a second time.
        inner_optimizer.loss_scale_factor = None

    def build(self, variables):
        if self.built:
            return
        variables = variable_list(variables)
        self._agree_on_config()  # before any variable is made
        self.step_counter = self.add_variable((), "zeros", dtype="int32", name="step_counter")
        self.dynamic_scale = self.add_variable(
            (), self.initial_scale, dtype="float32", name="dynamic_scale"
        )
        self.inner_optimizer.build(variables)
        super().build(variables)

    @property
    def variables(self) -> list[Variable]:
        """Own variables (iteration, learning_rate, step_counter, dynamic_scale), then the
        inner optimizer's."""
        return list(self._variables) + self.inner_optimizer.variables

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.inner_optimizer.learning_rate = value

    def scale_loss(self, loss):
        """`loss * dynamic_scale` (the initial scale before build)."""
        return loss * (self.dynamic_scale.value if self.built else self.initial_scale)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def _apply(self, grads, variables, aggregate):
        inner = self.inner_optimizer
        unscaler = self._steady_unscaler(grads, variables)
        if unscaler is None:
            grads, strategy = self._checked(grads, variables)
        else:
            facts = unscaler.facts
            strategy = self._steady_strategy(facts, variables)
            inner._steady_strategy(facts, variables)
        inner_aggregate, finite = aggregate, None
        if aggregate is SKIPPED and strategy.num_replicas_in_sync > 1:
            # Agreed here, before a non-finite step could return without reaching the inner.
            strategy._agree_on_skip(variables)
            inner_aggregate = False
        if aggregate and strategy.num_replicas_in_sync > 1:
            if inner.gradient_accumulation_steps:
                # The inner optimizer reduces only on its update calls: agree on a flag.
                finite = finite_on_every_rank(strategy, grads)
            elif unscaler is None:
                grads, finite = reduce_and_check(strategy, grads, variables)
                inner_aggregate = False
            else:  # no overwrite variable: a plain reduction, finiteness decided below
                grads = strategy._reduce_gradients(grads, variables)
                inner_aggregate = False
        scale = self.dynamic_scale.value
        unscaled = None
        if unscaler is not None and finite is not False:
            unscaled = unscaler(grads, scale)  # one pass per dtype; None when not finite
            finite = unscaled is not None
        elif finite is None:
            finite = all_finite(grads)
        if not finite:
            strategy._release_gradients()
            self.step_counter.value[...] = 0
            self.dynamic_scale.value[...] *= np.float32(0.5)
            return
        if unscaled is None:
            unscaled = [
                g if g is None or v.overwrite_with_gradient else g / scale
                for g, v in zip(grads, variables)
            ]
        strategy._release_gradients()  # `unscaled` no longer reads the reduced buffers
        if unscaler is not None and type(inner)._apply is Optimizer._apply:
            # The views are steady by construction: skip the inner optimizer's own checks.
            inner._apply_steady(unscaled, variables, inner_aggregate, strategy, facts, True)
        else:
            inner._apply(unscaled, variables, inner_aggregate)
        if int(self.step_counter.value) == self.dynamic_growth_steps - 1:
            self.step_counter.value[...] = 0
            self.dynamic_scale.value[...] *= np.float32(2)
        else:
            self.step_counter.value[...] += 1

    def _checked(self, grads, variables):
        """Validates pair by pair (nothing changes when it raises) and builds if needed:
        (gradients as arrays or None, the current strategy)."""
        inner = self.inner_optimizer
        owner = inner if inner.built else self
        known = owner._trainable_variables_indices if owner.built else None
        grads = check_gradients(grads, variables, known)
        strategy = self._check_strategy(variables)
        inner._check_strategy(variables)
        if all(g is None for g in grads):
            raise ValueError("No gradients provided for any variable.")
        if not self.built:
            with _slots.name_scope(self):
                self.build(variables)
        return grads, strategy

    def _steady_unscaler(self, grads, variables):
        """The one-pass unscaler of `variables` in the steady state (a known list without
        overwrite variable, every gradient a float32/float64 ndarray of its variable's shape
        and dtype), else None."""
        state = self._steady_state(
            grads, variables, self.inner_optimizer._trainable_variables_indices
        )
        if state is None or not state[1]:
            return None
        facts = state[0]
        unscaler = self._unscalers.get(facts, False)
        if unscaler is False:
            if len(self._unscalers) >= 8:
                self._unscalers.clear()
            unscaler = Unscaler(facts) if Unscaler.fits(facts.dtypes) else None
            self._unscalers[facts] = unscaler
        return unscaler

    def get_config(self):
        from distopt.optimizers._registry import serialize

        return {
            "name": self.name,
            "inner_optimizer": serialize(self.inner_optimizer),
            "initial_scale": self.initial_scale,
            "dynamic_growth_steps": self.dynamic_growth_steps,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from distopt.optimizers._registry import deserialize

        config = dict(config)
        if "inner_optimizer" not in config:
            raise ValueError(
                "A LossScaleOptimizer config must hold `inner_optimizer` (the wrapped "
                "optimizer, serialized as `get_config()` returns it). "
                f"Received keys: {sorted(map(str, config))}"
            )
        inner = config.pop("inner_optimizer")
        if isinstance(inner, dict):
            inner = deserialize(inner, custom_objects=custom_objects)
        return cls(inner, **config)
