"""Adafactor (factored second moments), as `keras.optimizers.Adafactor`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._base import Optimizer, _internal_variable
from distopt.optimizers._hyperparameters import check_bool, check_float
from distopt.optimizers._slots import scoped_path


def _rms(x: np.ndarray):
    return np.sqrt(np.mean(x * x))


class Adafactor(Optimizer):
    """Adafactor: second moments of a variable of rank >= 2 kept as row and column means.

    Per variable: `r` (shape[:-1]) and `c` (shape[:-2] + shape[-1:]) for rank >= 2, or two
    int32 placeholder scalars for rank < 2 (as Keras, so `variables` and saved state line up),
    then `velocity`. The step size is `max(epsilon_2, RMS(w)) * min(lr, 1/sqrt(step))` and the
    normalised update is clipped to RMS `clip_threshold`.
    """

    _shards_whole_tensors = True

    def __init__(
        self,
        learning_rate=0.001,
        beta_2_decay=-0.8,
        epsilon_1=1e-30,
        epsilon_2=1e-3,
        clip_threshold=1.0,
        relative_step=True,
        **kwargs,
    ):
        check_float("beta_2_decay", beta_2_decay)
        check_float("epsilon_1", epsilon_1, 0)
        check_float("epsilon_2", epsilon_2, 0)
        check_float("clip_threshold", clip_threshold, 0, low_open=True)
        check_bool("relative_step", relative_step)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_2_decay = beta_2_decay
        self.epsilon_1 = epsilon_1
        self.epsilon_2 = epsilon_2
        self.clip_threshold = clip_threshold
        self.relative_step = relative_step

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._r, self._c, self._v = [], [], []
        for var in variables:
            if var.ndim < 2:
                # Keras's placeholders are made outside `add_variable`: only an enclosing
                # name scope (`apply` builds in the optimizer's) prefixes their path.
                for factors in (self._r, self._c):
                    dummy = _internal_variable(0, var.name, scoped_path(var.name), "int32")
                    factors.append(self._track(dummy))
            elif var.overwrite_with_gradient:
                self._r.append(None)
                self._c.append(None)
            else:
                shape = var.shape
                owned = self._layout.owns(var)  # else an empty placeholder (ZeRO-1)
                r_shape = shape[:-1] if owned else (0,)
                c_shape = shape[:-2] + shape[-1:] if owned else (0,)
                self._r.append(self.add_variable(r_shape, dtype=var.dtype, name=var.name))
                self._c.append(self.add_variable(c_shape, dtype=var.dtype, name=var.name))
            if var.overwrite_with_gradient:
                self._v.append(None)
            else:
                self._v.append(self._state_from_reference(var, "velocity"))

    def _state_size(self, variable) -> int:
        if variable.ndim < 2:
            return variable.size
        shape = variable.shape
        return variable.size + int(np.prod(shape[:-1])) + int(np.prod(shape[:-2] + shape[-1:]))

    def update_step(self, gradient, variable, learning_rate):
        dt = variable.dtype.type
        i = self._trainable_variables_indices[id(variable)]
        g = np.asarray(gradient, dtype=variable.dtype)
        w = variable.value
        one = dt(1)
        step = dt(self._step_count() + 1)
        lr = dt(learning_rate)
        inverse_sqrt_step = one / np.sqrt(step)
        if self.relative_step and not callable(self._learning_rate):
            lr = np.minimum(lr, inverse_sqrt_step)
        rho = np.minimum(lr, inverse_sqrt_step)
        alpha = np.maximum(dt(self.epsilon_2), _rms(w)) * rho
        g2 = g * g + dt(self.epsilon_1)
        beta_2 = one - np.power(step, dt(self.beta_2_decay))
        v = self._v[i].value
        if variable.ndim >= 2:
            r, c = self._r[i].value, self._c[i].value
            r[...] = beta_2 * r + (one - beta_2) * np.mean(g2, axis=-1)
            c[...] = beta_2 * c + (one - beta_2) * np.mean(g2, axis=-2)
            row = r / np.mean(r, axis=-1, keepdims=True)
            v[...] = row[..., None] * c[..., None, :]
        else:
            v[...] = beta_2 * v + (one - beta_2) * g2
        u = g / np.sqrt(v)
        u /= np.maximum(one, _rms(u) / dt(self.clip_threshold))
        w -= alpha * u

    def get_config(self):
        return {
            **super().get_config(),
            "beta_2_decay": self.beta_2_decay,
            "epsilon_1": self.epsilon_1,
            "epsilon_2": self.epsilon_2,
            "clip_threshold": self.clip_threshold,
            "relative_step": self.relative_step,
        }
