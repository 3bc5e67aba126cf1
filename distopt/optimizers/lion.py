"""Lion (evolved sign momentum), as `keras.optimizers.Lion`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import check_float


def _lion_kernel(w, g, m, lr, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2):
    w = w - lr * np.sign(m * beta_1 + g * one_minus_beta_1)
    return w, m * beta_2 + g * one_minus_beta_2


class Lion(Optimizer):
    """Lion: `w -= lr * sign(beta_1*m + (1-beta_1)*g)`, then `m = beta_2*m + (1-beta_2)*g`."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, **kwargs):
        check_float("beta_1", beta_1)
        if beta_1 <= 0 or beta_1 > 1:
            raise ValueError(
                "Argument `beta_1` must be in the [0, 1] range. Otherwise, the optimizer "
                f"degenerates to SignSGD. Received: beta_1={beta_1}."
            )
        check_float("beta_2", beta_2, 0, 1)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self._kernel = _lion_kernel
        self._kernel_slots = ("momentum",)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._momentums = self.add_optimizer_variables(variables, "momentum")

    def _coefficients(self, lr, dtype):
        c = np.dtype(dtype).type
        beta_1, beta_2 = c(self.beta_1), c(self.beta_2)
        return c(lr), beta_1, c(1) - beta_1, beta_2, c(1) - beta_2

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2}
