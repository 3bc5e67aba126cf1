"""Adamax (Adam with the infinity norm), as `keras.optimizers.Adamax`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._base import Optimizer
from distopt.optimizers._moments import bias_correction, check_moment_arguments


def _adamax_kernel(w, g, m, u, lr, one_minus_beta_1, beta_2, epsilon, one_minus_beta_1_power):
    m = m + (g - m) * one_minus_beta_1
    u = np.maximum(beta_2 * u, np.abs(g))
    return w - (lr * m) / (one_minus_beta_1_power * (u + epsilon)), m, u


class Adamax(Optimizer):
    """Adamax: `m += (g - m)(1 - beta_1); u = max(beta_2*u, |g|);
    w -= lr*m / ((1 - beta_1^t)(u + epsilon))`."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        check_moment_arguments(beta_1, beta_2, epsilon)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self._kernel = _adamax_kernel
        self._kernel_slots = ("momentum", "norm")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._m, self._u = self.add_optimizer_variables(variables, ["momentum", "norm"])

    def _coefficients(self, lr, dtype):
        c = np.dtype(dtype).type
        bias_correction_1 = bias_correction(self.beta_1, c(self._step_count() + 1), c)
        return c(lr), c(1 - self.beta_1), c(self.beta_2), c(self.epsilon), bias_correction_1

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }
