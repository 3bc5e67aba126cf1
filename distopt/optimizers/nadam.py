"""Nadam (Adam with Nesterov momentum and a momentum schedule), as `keras.optimizers.Nadam`."""

from __future__ import annotations

import numpy as np

from distopt import _naming
from distopt.optimizers._base import Optimizer, _internal_variable
from distopt.optimizers._moments import bias_correction, check_moment_arguments
from distopt.optimizers._slots import scoped_path


def _nadam_kernel(
    w, g, m, v, lr, one_minus_beta_1, one_minus_beta_2, u_next, one_minus_product_next,
    one_minus_u, one_minus_product, one_minus_beta_2_power, epsilon,
):  # fmt: skip
    m = m + (g - m) * one_minus_beta_1
    v = v + (g * g - v) * one_minus_beta_2
    m_hat = (u_next * m) / one_minus_product_next + (one_minus_u * g) / one_minus_product
    v_hat = v / one_minus_beta_2_power
    return w - (m_hat * lr) / (np.sqrt(v_hat) + epsilon), m, v


def _schedule_factor(step, c):
    """`1 - 0.5 * 0.96^t` (so `u_t = beta_1 * factor`), in the dtype whose scalar type is `c`."""
    return c(1) - c(0.5) * np.power(c(0.96), step)


class Nadam(Optimizer):
    """Nadam: Adam's moments with a Nesterov-corrected first moment,
    `m_hat = u_{t+1} m / (1 - prod u_{1..t+1}) + (1 - u_t) g / (1 - prod u_{1..t})`."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        check_moment_arguments(beta_1, beta_2, epsilon)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self._kernel = _nadam_kernel
        self._kernel_slots = ("momentum", "velocity")

    def build(self, variables):
        if self.built:
            return
        variables = list(variables)
        dtype = variables[0].dtype if variables else np.dtype("float32")
        super().build(variables)
        self._momentums, self._velocities = self.add_optimizer_variables(
            variables, ["momentum", "velocity"]
        )
        # Keras makes the running product last, outside `add_variable`, auto-named: only an
        # enclosing name scope (`apply` builds in the optimizer's) prefixes its path.
        name = _naming.uniquify("variable")
        self._u_product = self._track(_internal_variable(1.0, name, scoped_path(name), dtype))

    def _prepare_step(self, lr):
        u_product = self._u_product.value
        c = u_product.dtype.type
        step = c(self._step_count() + 1)
        u_product[...] = u_product * c(self.beta_1) * _schedule_factor(step, c)

    def _coefficients(self, lr, dtype):
        c = np.dtype(dtype).type
        t = self._step_count()
        beta_1, beta_2 = c(self.beta_1), c(self.beta_2)
        u_t = beta_1 * _schedule_factor(c(t + 1), c)
        u_next = beta_1 * _schedule_factor(c(t + 2), c)
        product = c(self._u_product.value)
        product_next = product * u_next
        return (
            c(lr), c(1) - beta_1, c(1) - beta_2, u_next, c(1) - product_next, c(1) - u_t,
            c(1) - product, bias_correction(beta_2, c(t + 1), c), c(self.epsilon),
        )  # fmt: skip

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }
