"""Lamb (layer-wise adaptive moments), as `keras.optimizers.Lamb`."""

from __future__ import annotations

import numpy as np

from distopt.optimizers import _arena, _engine
from distopt.optimizers._base import Optimizer
from distopt.optimizers._moments import bias_correction, check_moment_arguments


def _direction_kernel(
    u, g, m, v, one_minus_beta_1, one_minus_beta_2, bias_correction_1, bias_correction_2, epsilon
):
    """The Adam direction, written into `u` (its input value is unused)."""
    m = m + (g - m) * one_minus_beta_1
    v = v + (g * g - v) * one_minus_beta_2
    return (m / bias_correction_1) / (np.sqrt(v / bias_correction_2) + epsilon), m, v


class Lamb(Optimizer):
    """Lamb: an Adam direction rescaled per tensor by the trust ratio `||w|| / ||update||`.

    `update = m_hat / (sqrt(v_hat) + epsilon)`; `w -= ratio * lr * update`, with `ratio` 1
    when either norm is zero. Keras does not list Lamb among its string identifiers;
    `distopt.optimizers.get("lamb")` works.
    """

    _shards_whole_tensors = True

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, **kwargs):
        check_moment_arguments(beta_1, beta_2, epsilon)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if self._layout.owned is None:
            self._momentums, self._velocities = self.add_optimizer_variables(
                variables, ["momentum", "velocity"]
            )
        else:  # per-tensor ZeRO-1: state for this rank's tensors only, in the same order
            self._momentums, self._velocities = [], []
            for var in variables:
                moving = not var.overwrite_with_gradient
                for slots, name in ((self._momentums, "momentum"), (self._velocities, "velocity")):
                    slots.append(self._state_from_reference(var, name) if moving else None)
        self._directions = {}  # per dtype: scratch the size of the dtype's arena

    def _direction_coefficients(self, dtype):
        c = np.dtype(dtype).type
        step = c(self._step_count() + 1)
        return (
            c(1 - self.beta_1),
            c(1 - self.beta_2),
            bias_correction(self.beta_1, step, c),
            bias_correction(self.beta_2, step, c),
            c(self.epsilon),
        )

    @staticmethod
    def _trust_step(w, update, lr):
        """`w -= ratio * lr * update` with `ratio = ||w|| / ||update||` (1 if a norm is 0)."""
        w_norm = np.sqrt(np.sum(w * w))
        u_norm = np.sqrt(np.sum(update * update))
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else w.dtype.type(1)
        np.multiply(update, ratio * w.dtype.type(lr), out=update)
        np.subtract(w, update, out=w)

    def update_step(self, gradient, variable, learning_rate):
        i = self._trainable_variables_indices[id(variable)]
        w = variable.value.reshape(-1)
        g = np.asarray(gradient, dtype=variable.dtype).reshape(-1)
        slots = [self._momentums[i].value.reshape(-1), self._velocities[i].value.reshape(-1)]
        update = np.empty_like(w)
        _engine.run_kernel(
            _direction_kernel, update, g, slots, self._direction_coefficients(w.dtype)
        )
        self._trust_step(w, update, learning_rate)

    def _update_all(self, grads, variables, lr, fused=frozenset()):
        # One kernel pass over each dtype's arenas when the step covers it in layout order;
        # only the norms and the final scaling are per tensor.
        self._prepare_step(lr)
        layout = self._layout
        if layout.owned is not None:
            super()._update_all(grads, variables, lr, fused)
            return
        done = set()
        for dt, members in layout.groups.items():
            in_step = [k for k, v in enumerate(variables) if v.dtype == dt]
            if [layout.index[id(variables[k])] for k in in_step] != members:
                continue
            dt_grads = [grads[k] for k in in_step]
            flat_g = _arena.flat_span(dt_grads)
            if flat_g is None:
                flat_g = np.concatenate([g.reshape(-1) for g in dt_grads])
            direction = self._directions.setdefault(dt, layout.new_arena(dt))
            slots = [self._slot_arenas[n][dt] for n in ("momentum", "velocity")]
            coefficients = self._direction_coefficients(dt)
            _engine.run_kernel(_direction_kernel, direction, flat_g, slots, coefficients)
            for k, i in zip(in_step, members, strict=True):
                w = variables[k].value.reshape(-1)
                self._trust_step(w, layout.view(direction, i).reshape(-1), lr)
                done.add(k)
        for k, (g, v) in enumerate(zip(grads, variables, strict=True)):
            if k not in done:
                self.update_step(g, v, lr)

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }
