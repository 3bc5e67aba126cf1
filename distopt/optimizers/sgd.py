"""SGD with optional (Nesterov) momentum, as `keras.optimizers.SGD`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import check_bool, describe


def _sgd_kernel(w, g, lr):
    return (w - g * lr,)


def _momentum_kernel(w, g, m, lr, momentum):
    m = m * momentum - g * lr
    return w + m, m


def _nesterov_kernel(w, g, m, lr, momentum):
    m = m * momentum - g * lr
    return w + (m * momentum - g * lr), m


class SGD(Optimizer):
    """Gradient descent: `w -= lr * g`, or with momentum `m = momentum*m - lr*g; w += m`
    (Nesterov: `w += momentum*m - lr*g`)."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        if not isinstance(momentum, float) or not 0 <= momentum <= 1:
            raise ValueError(
                "`momentum` must be a float between [0, 1]. "
                f"Received: momentum={describe(momentum)}"
            )
        check_bool("nesterov", nesterov)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = momentum
        self.nesterov = bool(nesterov)
        if momentum == 0:
            self._kernel, self._kernel_slots = _sgd_kernel, ()
        else:
            kernel = _nesterov_kernel if self.nesterov else _momentum_kernel
            self._kernel, self._kernel_slots = kernel, ("momentum",)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self.momentum != 0:
            self.momentums = self.add_optimizer_variables(variables, "momentum")

    def _coefficients(self, lr, dtype):
        if self.momentum == 0:
            return (np.asarray(lr, dtype=dtype)[()],)
        return (np.asarray(lr, dtype=dtype)[()], np.asarray(self.momentum, dtype=dtype)[()])

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}
