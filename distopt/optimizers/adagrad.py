"""Adagrad, as `keras.optimizers.Adagrad`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import check_float


def _adagrad_kernel(w, g, acc, lr, epsilon):
    acc = acc + g * g
    return w - (lr * g) / np.sqrt(acc + epsilon), acc


class Adagrad(Optimizer):
    """Adagrad: `acc += g^2; w -= lr*g / sqrt(acc + epsilon)`; `acc` starts at
    `initial_accumulator_value`."""

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, **kwargs):
        check_float("initial_accumulator_value", initial_accumulator_value, 0)
        check_float("epsilon", epsilon, 0)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon
        self._kernel = _adagrad_kernel
        self._kernel_slots = ("accumulator",)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._accumulators = self.add_optimizer_variables(
            variables, "accumulator", initializer=self.initial_accumulator_value
        )

    def _coefficients(self, lr, dtype):
        c = np.dtype(dtype).type
        return c(lr), c(self.epsilon)

    def get_config(self):
        return {
            **super().get_config(),
            "initial_accumulator_value": self.initial_accumulator_value,
            "epsilon": self.epsilon,
        }
