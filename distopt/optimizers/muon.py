"""Muon (orthogonalised momentum for matrices, AdamW for the rest), as `keras.optimizers.Muon`."""

from __future__ import annotations

import math
import re

import numpy as np

from distopt._variable import Variable
from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import check_bool, check_float, check_int, describe
from distopt.optimizers._moments import adam_coefficients, check_moment_arguments
from distopt.optimizers.adam import _adam_kernel


class Muon(Optimizer):
    """Muon: 2-D variables step along the Newton-Schulz orthogonalisation of their momentum.

    A variable takes the AdamW path (`adam_beta_1`, `adam_beta_2`, `epsilon`, learning rate
    times `adam_lr_ratio`, decay `adam_weight_decay`) if it is not 2-D, if
    `exclude_embeddings` and its path contains "embedding", or if a regex of
    `exclude_layers` matches its path; otherwise the Muon path (decay `weight_decay`).
    """

    _shards_whole_tensors = True

    def __init__(
        self,
        learning_rate=0.001,
        adam_beta_1=0.9,
        adam_beta_2=0.999,
        adam_weight_decay=0.004,
        epsilon=1e-7,
        weight_decay=0.004,
        exclude_layers=None,
        exclude_embeddings=True,
        muon_a=3.4445,
        muon_b=-4.7750,
        muon_c=2.0315,
        adam_lr_ratio=1,
        momentum=0.95,
        ns_steps=5,
        nesterov=True,
        rms_rate=0.2,
        **kwargs,
    ):
        if adam_weight_decay is not None and not _is_real(adam_weight_decay):
            raise ValueError(
                "Argument `adam_weight_decay` must be a float or None. "
                f"Received: adam_weight_decay={describe(adam_weight_decay)}"
            )
        check_int("ns_steps", ns_steps, 0)
        check_bool("nesterov", nesterov)
        check_bool("exclude_embeddings", exclude_embeddings)
        if adam_weight_decay is not None:
            check_float("adam_weight_decay", adam_weight_decay, 0)
        check_moment_arguments(adam_beta_1, adam_beta_2, epsilon, prefix="adam_")
        for name, value in (("muon_a", muon_a), ("muon_b", muon_b), ("muon_c", muon_c)):
            check_float(name, value)
        check_float("adam_lr_ratio", adam_lr_ratio, 0)
        check_float("momentum", momentum, 0, 1)
        if rms_rate is not None:
            check_float("rms_rate", rms_rate, 0)
        layers = _check_patterns(exclude_layers)
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self.adam_beta_1 = adam_beta_1
        self.adam_beta_2 = adam_beta_2
        self.epsilon = epsilon
        self.muon_a = muon_a
        self.muon_b = muon_b
        self.muon_c = muon_c
        self.adam_lr_ratio = adam_lr_ratio
        self.momentum = momentum
        self.ns_steps = ns_steps
        self.nesterov = nesterov
        self.exclude_embeddings = exclude_embeddings
        self.exclude_layers = layers
        self.adam_weight_decay = adam_weight_decay
        self.rms_rate = rms_rate

    def _should_use_adamw(self, variable) -> bool:
        if len(variable.shape) != 2:
            return True
        if self.exclude_embeddings and "embedding" in variable.path.lower():
            return True
        return any(re.search(pattern, variable.path) for pattern in self.exclude_layers)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [None] * len(variables)
        self.adam_velocities = [None] * len(variables)
        for i, var in enumerate(variables):
            if var.overwrite_with_gradient:
                continue
            self.momentums[i] = self._state_from_reference(var, "momentum")
            if self._should_use_adamw(var):
                self.adam_velocities[i] = self._state_from_reference(var, "velocity")

    def _state_size(self, variable) -> int:
        return variable.size * (2 if self._should_use_adamw(variable) else 1)

    def update_step(self, gradient, variable, learning_rate):
        i = self._trainable_variables_indices[id(variable)]
        g = np.asarray(gradient, dtype=variable.dtype)
        m = self.momentums[i].value
        v = self.adam_velocities[i]
        if v is not None:
            lr = _scaled_learning_rate(learning_rate, self.adam_lr_ratio)
            self._adamw_update_step(g, variable.value, lr, m, v.value)
        else:
            self._muon_update_step(g, variable.value, learning_rate, m)

    def _muon_update_step(self, g, w, lr, m):
        dt = w.dtype.type
        momentum = dt(self.momentum)
        m += g + m * dt(self.momentum - 1)
        direction = g + momentum * m if self.nesterov else m
        update = self.zeropower_via_newtonschulz5(direction, self.ns_steps)
        w -= self.lr_adjust(dt(lr) * update)

    def _adamw_update_step(self, g, w, lr, m, v):
        c = w.dtype.type
        step = c(self._step_count() + 1)
        coefficients = adam_coefficients(
            lr, self.adam_beta_1, self.adam_beta_2, self.epsilon, step, c
        )
        w[...], m[...], v[...] = _adam_kernel(w, g, m, v, *coefficients)

    def lr_adjust(self, x):
        """Scales a 2-D update by `sqrt(max(rows, cols)) * rms_rate` (identity if None)."""
        if self.rms_rate is None:
            return x
        x = _as_float_array(x)
        dt = x.dtype.type
        return x * dt(math.sqrt(max(x.shape[0], x.shape[1]))) * dt(self.rms_rate)

    def zeropower_via_newtonschulz5(self, x, steps: int):
        """Approximately orthogonalises the last two axes of `x` by `steps` quintic
        Newton-Schulz iterations with coefficients (`muon_a`, `muon_b`, `muon_c`)."""
        x = _as_float_array(x)
        if x.ndim < 2:
            raise ValueError(
                "Expected gradient or momentum to have at least 2 dimensions. "
                f"Received: shape={x.shape}"
            )
        dt = x.dtype.type
        a, b, c = dt(self.muon_a), dt(self.muon_b), dt(self.muon_c)
        tall = x.shape[-2] > x.shape[-1]
        if tall:
            x = np.swapaxes(x, -1, -2)
        norm = np.sqrt(np.sum(x * x, axis=(-2, -1), keepdims=True))
        x = x / (norm + dt(1e-7))
        for _ in range(steps):
            gram = x @ np.swapaxes(x, -1, -2)
            poly = b * gram + c * gram @ gram
            x = a * x + poly @ x
        return np.swapaxes(x, -1, -2) if tall else x

    def _apply_weight_decay(self, variables, lr=None):
        """Decoupled decay with `adam_weight_decay` on AdamW-routed variables and
        `weight_decay` on Muon-routed ones (`lr` defaults to the current learning rate)."""
        if lr is None:
            lr = self._learning_rate_value()
        for var in variables:
            if not self._use_weight_decay(var):
                continue
            decay = self.adam_weight_decay if self._should_use_adamw(var) else self.weight_decay
            if decay is None:
                continue
            w = var.value
            dt = w.dtype.type
            w -= w * dt(decay) * dt(lr)

    def get_config(self):
        return {
            **super().get_config(),
            "adam_beta_1": self.adam_beta_1,
            "adam_beta_2": self.adam_beta_2,
            "epsilon": self.epsilon,
            "exclude_layers": self.exclude_layers,
            "muon_a": self.muon_a,
            "muon_b": self.muon_b,
            "muon_c": self.muon_c,
            "adam_lr_ratio": self.adam_lr_ratio,
            "momentum": self.momentum,
            "ns_steps": self.ns_steps,
            "nesterov": self.nesterov,
            "exclude_embeddings": self.exclude_embeddings,
            "adam_weight_decay": self.adam_weight_decay,
            "rms_rate": self.rms_rate,
        }


def _scaled_learning_rate(learning_rate, ratio):
    """`learning_rate * ratio` as Keras forms it: in the learning rate's own dtype (float32
    for the optimizer's variable, then cast to the model variable's), Python maths for a
    Python number."""
    if isinstance(learning_rate, Variable):
        learning_rate = learning_rate.value[()]
    if isinstance(learning_rate, (np.ndarray, np.generic)) and learning_rate.dtype.kind == "f":
        c = learning_rate.dtype.type
        return c(c(learning_rate) * c(ratio))
    return learning_rate * ratio


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_patterns(exclude_layers) -> list:
    message = (
        "Argument `exclude_layers` must be a list of regular expressions (strings) matched "
        f"against variable paths. Received: exclude_layers={exclude_layers!r}"
    )
    if isinstance(exclude_layers, str):
        raise ValueError(message + f". Wrap it in a list: [{exclude_layers!r}]")
    layers = list(exclude_layers or [])
    for pattern in layers:
        if not isinstance(pattern, str):
            raise ValueError(message)
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{message} ({pattern!r} is not a valid regex: {e})") from e
    return layers


def _as_float_array(x) -> np.ndarray:
    if isinstance(x, Variable):
        x = x.value
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return x
    # Lists and integer arrays become Keras's floatx, as `ops.convert_to_tensor` does.
    return np.asarray(x, dtype=np.float32)
