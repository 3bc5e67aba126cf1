"""Lamb (layer-wise adaptive moments), as `keras.optimizers.Lamb`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import check_float


class Lamb(Optimizer):
    """Lamb: an Adam direction rescaled per tensor by the trust ratio `||w|| / ||update||`.

    `update = m_hat / (sqrt(v_hat) + epsilon)`; `w -= ratio * lr * update`, with `ratio` 1
    when either norm is zero. Keras does not list Lamb among its string identifiers;
    `distopt.optimizers.get("lamb")` works.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        check_float("beta_1", beta_1, 0, 1)
        check_float("beta_2", beta_2, 0, 1)
        check_float("epsilon", epsilon, 0)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._momentums, self._velocities = self.add_optimizer_variables(
            variables, ["momentum", "velocity"]
        )

    def update_step(self, gradient, variable, learning_rate):
        dt = variable.dtype.type
        i = self._trainable_variables_indices[id(variable)]
        m = self._momentums[i].value
        v = self._velocities[i].value
        g = np.asarray(gradient, dtype=variable.dtype)
        w = variable.value
        step = dt(self._step_count() + 1)
        one = dt(1)
        m += (g - m) * dt(1 - self.beta_1)
        v += (g * g - v) * dt(1 - self.beta_2)
        m_hat = m / (one - np.power(dt(self.beta_1), step))
        v_hat = v / (one - np.power(dt(self.beta_2), step))
        update = m_hat / (np.sqrt(v_hat) + dt(self.epsilon))
        w_norm = np.sqrt(np.sum(w * w))
        u_norm = np.sqrt(np.sum(update * update))
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else one
        w -= ratio * dt(learning_rate) * update

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }
