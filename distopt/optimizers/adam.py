"""Adam (with AMSGrad), as `keras.optimizers.Adam`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import check_bool
from distopt.optimizers._moments import adam_coefficients, check_moment_arguments


def _adam_kernel(w, g, m, v, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    m = m + (g - m) * one_minus_beta_1
    v = v + (g * g - v) * one_minus_beta_2
    return w - (m * alpha) / (np.sqrt(v) + epsilon), m, v


def _amsgrad_kernel(w, g, m, v, v_hat, alpha, one_minus_beta_1, one_minus_beta_2, epsilon):
    m = m + (g - m) * one_minus_beta_1
    v = v + (g * g - v) * one_minus_beta_2
    v_hat = np.maximum(v_hat, v)
    return w - (m * alpha) / (np.sqrt(v_hat) + epsilon), m, v, v_hat


class Adam(Optimizer):
    """Adam: `w -= lr * sqrt(1-beta_2^t)/(1-beta_1^t) * m / (sqrt(v) + epsilon)`.

    `epsilon` is Keras's "epsilon hat" (outside the square root, not bias-corrected).
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        **kwargs,
    ):
        check_moment_arguments(beta_1, beta_2, epsilon)
        check_bool("amsgrad", amsgrad)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.amsgrad = amsgrad
        if amsgrad:
            self._kernel = _amsgrad_kernel
            self._kernel_slots = ("momentum", "velocity", "velocity_hat")
        else:
            self._kernel = _adam_kernel
            self._kernel_slots = ("momentum", "velocity")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._momentums, self._velocities = self.add_optimizer_variables(
            variables, ["momentum", "velocity"]
        )
        if self.amsgrad:
            self._velocity_hats = self.add_optimizer_variables(variables, "velocity_hat")

    def _coefficients(self, lr, dtype):
        c = np.dtype(dtype).type
        step = c(self._step_count() + 1)
        return adam_coefficients(lr, self.beta_1, self.beta_2, self.epsilon, step, c)

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "amsgrad": self.amsgrad,
        }
