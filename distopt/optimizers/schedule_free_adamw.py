"""Schedule-Free AdamW, as `keras.optimizers.ScheduleFreeAdamW`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import check_float


class ScheduleFreeAdamW(Optimizer):
    """Schedule-Free AdamW (Defazio et al., 2024): no learning-rate schedule needed.

    The `momentum` slot holds the gradient sequence `z` (a copy of the variable at build);
    the variable holds the interpolation `y = (1 - beta_1) z + beta_1 x` of `z` and the
    running average `x`. `warmup_steps > 0` ramps the learning rate linearly over those steps.
    """

    def __init__(
        self,
        learning_rate=0.0025,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        warmup_steps=0,
        **kwargs,
    ):
        check_float("beta_1", beta_1, 0, 1)
        check_float("beta_2", beta_2, 0, 1)
        check_float("epsilon", epsilon, 0)
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(
                "Argument `warmup_steps` must be an integer >= 0. "
                f"Received: warmup_steps={warmup_steps!r}"
            )
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.warmup_steps = warmup_steps

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._momentums, self._velocities = self.add_optimizer_variables(
            variables, ["momentum", "velocity"]
        )
        for var, z in zip(variables, self._momentums):
            if z is not None:
                z.value[...] = var.value

    def update_step(self, gradient, variable, learning_rate):
        dt = variable.dtype.type
        i = self._trainable_variables_indices[id(variable)]
        z = self._momentums[i].value
        v = self._velocities[i].value
        g = np.asarray(gradient, dtype=variable.dtype)
        w = variable.value
        one = dt(1)
        step = dt(self._step_count() + 1)
        beta_1 = dt(self.beta_1)
        beta_2 = dt(self.beta_2)
        lr = dt(learning_rate)
        if self.warmup_steps > 0:
            lr = lr * np.minimum(step / dt(self.warmup_steps), one)
        z_old = z.copy()
        v += (g * g - v) * (one - beta_2)
        denominator = np.sqrt(v / (one - np.power(beta_2, step))) + dt(self.epsilon)
        z -= lr * g / denominator
        weight = one / step
        x_old = (w - (one - beta_1) * z_old) / beta_1
        x_new = (one - weight) * x_old + weight * z
        w[...] = (one - beta_1) * z + beta_1 * x_new

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "warmup_steps": self.warmup_steps,
        }
