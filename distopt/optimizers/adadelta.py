"""Adadelta, as `keras.optimizers.Adadelta`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import check_float


def _adadelta_kernel(w, g, e_grad, e_delta, lr, rho, one_minus_rho, epsilon):
    e_grad = rho * e_grad + one_minus_rho * (g * g)
    delta = -((np.sqrt(e_delta + epsilon) * g) / np.sqrt(e_grad + epsilon))
    e_delta = rho * e_delta + one_minus_rho * (delta * delta)
    return w + lr * delta, e_grad, e_delta


class Adadelta(Optimizer):
    """Adadelta: `E_g = rho*E_g + (1-rho)*g^2; delta = -sqrt(E_d + eps) * g / sqrt(E_g + eps);
    E_d = rho*E_d + (1-rho)*delta^2; w += lr*delta`."""

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, **kwargs):
        check_float("rho", rho, 0, 1)
        check_float("epsilon", epsilon, 0)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho = rho
        self.epsilon = epsilon
        self._kernel = _adadelta_kernel
        self._kernel_slots = ("accumulated_grad", "accumulated_delta_var")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # One call: Keras interleaves the two slots per variable.
        self._accumulated_grads, self._accumulated_delta_vars = self.add_optimizer_variables(
            variables, ["accumulated_grad", "accumulated_delta_var"]
        )

    def _coefficients(self, lr, dtype):
        c = np.dtype(dtype).type
        return c(lr), c(self.rho), c(1 - self.rho), c(self.epsilon)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}
