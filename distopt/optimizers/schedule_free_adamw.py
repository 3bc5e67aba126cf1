"""Schedule-Free AdamW, as `keras.optimizers.ScheduleFreeAdamW`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import MAX_STEPS, check_float, check_int
from distopt.optimizers._moments import bias_correction, check_moment_arguments


def _schedule_free_kernel(
    w, g, z, v, lr, one_minus_beta_2, bias_correction_2, epsilon, beta_1, one_minus_beta_1,
    weight, one_minus_weight,
):  # fmt: skip
    v = v + (g * g - v) * one_minus_beta_2
    z_new = z - lr * g / (np.sqrt(v / bias_correction_2) + epsilon)
    x_old = (w - one_minus_beta_1 * z) / beta_1  # the average, recovered from y and old z
    x_new = one_minus_weight * x_old + weight * z_new
    return one_minus_beta_1 * z_new + beta_1 * x_new, z_new, v


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
        check_moment_arguments(beta_1, beta_2, epsilon)
        # The running average is recovered by dividing by beta_1: 0 can only give NaN.
        check_float("beta_1", beta_1, 0, 1, low_open=True)
        check_int("warmup_steps", warmup_steps, 0, MAX_STEPS)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.warmup_steps = warmup_steps
        self._kernel = _schedule_free_kernel
        self._kernel_slots = ("momentum", "velocity")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._momentums, self._velocities = self.add_optimizer_variables(
            variables, ["momentum", "velocity"]
        )
        # z starts as the variable: copy each dtype's parameters (this rank's part under
        # ZeRO-1 sharding) into its momentum arena.
        layout = self._layout
        for dt, members in layout.groups.items():
            z = self._slot_arenas["momentum"][dt]
            if layout.params[dt] is not None:
                lo, hi = layout.shards.get(dt, (0, z.size))
                z[...] = layout.params[dt][lo:hi]
            else:
                for i in members:
                    layout.view(z, i)[...] = layout.variables[i].value

    def _coefficients(self, lr, dtype):
        c = np.dtype(dtype).type
        one = c(1)
        step = c(self._step_count() + 1)
        beta_1, beta_2 = c(self.beta_1), c(self.beta_2)
        lr = c(lr)
        if self.warmup_steps > 0:
            lr = lr * np.minimum(step / c(self.warmup_steps), one)
        weight = one / step
        bias_correction_2 = bias_correction(beta_2, step, c)
        return (lr, one - beta_2, bias_correction_2, c(self.epsilon), beta_1, one - beta_1,
                weight, one - weight)  # fmt: skip

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "warmup_steps": self.warmup_steps,
        }
