"""RMSprop (plain momentum, optional centering), as `keras.optimizers.RMSprop`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import check_bool, check_float


def _rmsprop_kernel(w, g, v, lr, rho, one_minus_rho, epsilon):
    v = rho * v + one_minus_rho * (g * g)
    return w - (lr * g) / np.sqrt(v + epsilon), v


def _rmsprop_momentum_kernel(w, g, v, mom, lr, rho, one_minus_rho, epsilon, momentum):
    v = rho * v + one_minus_rho * (g * g)
    mom = momentum * mom + (lr * g) / np.sqrt(v + epsilon)
    return w - mom, v, mom


def _centered_kernel(w, g, v, mg, lr, rho, one_minus_rho, epsilon):
    v = rho * v + one_minus_rho * (g * g)
    mg = rho * mg + one_minus_rho * g
    return w - (lr * g) / np.sqrt(v - mg * mg + epsilon), v, mg


def _centered_momentum_kernel(w, g, v, mom, mg, lr, rho, one_minus_rho, epsilon, momentum):
    v = rho * v + one_minus_rho * (g * g)
    mg = rho * mg + one_minus_rho * g
    mom = momentum * mom + (lr * g) / np.sqrt(v - mg * mg + epsilon)
    return w - mom, v, mom, mg


_KERNELS = {
    (False, False): _rmsprop_kernel,
    (True, False): _rmsprop_momentum_kernel,
    (False, True): _centered_kernel,
    (True, True): _centered_momentum_kernel,
}


class RMSprop(Optimizer):
    """RMSprop: `v = rho*v + (1-rho)*g^2; w -= lr*g / sqrt(v + epsilon)` (epsilon inside the
    root). `centered` subtracts the squared mean gradient from `v`; `momentum > 0` accumulates
    the increments (`mom = momentum*mom + increment; w -= mom`)."""

    def __init__(
        self,
        learning_rate=0.001,
        rho=0.9,
        momentum=0.0,
        epsilon=1e-7,
        centered=False,
        **kwargs,
    ):
        check_float("rho", rho, 0, 1)
        check_float("momentum", momentum, 0, 1)
        check_float("epsilon", epsilon, 0)
        check_bool("centered", centered)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho = rho
        self.momentum = momentum
        self.epsilon = epsilon
        self.centered = centered
        use_momentum, centered = momentum > 0, bool(centered)
        self._kernel = _KERNELS[use_momentum, centered]
        self._kernel_slots = ("velocity",) + ("momentum",) * use_momentum
        self._kernel_slots += ("average_gradient",) * centered

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._velocities = self.add_optimizer_variables(variables, "velocity")
        self._momentums = []
        if self.momentum > 0:
            self._momentums = self.add_optimizer_variables(variables, "momentum")
        self._average_gradients = []
        if self.centered:
            self._average_gradients = self.add_optimizer_variables(variables, "average_gradient")

    def _coefficients(self, lr, dtype):
        c = np.dtype(dtype).type
        coefficients = (c(lr), c(self.rho), c(1 - self.rho), c(self.epsilon))
        return coefficients + ((c(self.momentum),) if self.momentum > 0 else ())

    def get_config(self):
        return {
            **super().get_config(),
            "rho": self.rho,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "centered": self.centered,
        }
