"""Cosine decay (with optional linear warmup) and cosine decay with warm restarts (SGDR).

Computed in the dtype of `initial_learning_rate` with Keras's operation order: the restart
index of `CosineDecayRestarts` comes from a float32 logarithm, whose rounding decides on which
step a restart happens, so float32 maths is kept on purpose.
"""

from __future__ import annotations

import math

import numpy as np

from distopt.optimizers.schedules._base import (
    LearningRateSchedule,
    as_step,
    check_initial_learning_rate,
    check_number,
    check_positive_steps,
    compute_dtype,
    initial_value,
)


def _cosine(fraction, c):
    return c(0.5) * (c(1) + np.cos(c(math.pi) * fraction))


class CosineDecay(LearningRateSchedule):
    """Cosine decay from `initial_learning_rate` (or `warmup_target` after a linear warmup of
    `warmup_steps`) down to `alpha` times it over `decay_steps`."""

    def __init__(
        self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
        warmup_target=None, warmup_steps=0,
    ):  # fmt: skip
        check_initial_learning_rate(initial_learning_rate)
        check_positive_steps("decay_steps", decay_steps)
        check_number("alpha", alpha)
        check_number("warmup_target", warmup_target, allow_none=True)
        check_number("warmup_steps", warmup_steps)
        if warmup_steps < 0:
            raise ValueError(
                f"Argument `warmup_steps` must be >= 0. Received: warmup_steps={warmup_steps}"
            )
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_target = warmup_target
        self.warmup_steps = warmup_steps

    def _decay(self, step, decay_steps, decay_from, c):
        decayed = c(1 - self.alpha) * _cosine(step / decay_steps, c) + c(self.alpha)
        return decay_from * decayed

    def __call__(self, step):
        dtype = compute_dtype(self.initial_learning_rate)
        c = dtype.type
        lr0 = initial_value(self.initial_learning_rate, c)
        decay_steps = c(self.decay_steps)
        s = as_step(step, dtype)
        if self.warmup_target is None:
            return self._decay(np.minimum(s, decay_steps), decay_steps, lr0, c)
        target, warmup_steps = c(self.warmup_target), c(self.warmup_steps)
        s = np.minimum(s, decay_steps + warmup_steps)
        if s < warmup_steps:
            return (target - lr0) * (s / warmup_steps) + lr0
        return self._decay(s - warmup_steps, decay_steps, target, c)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


class CosineDecayRestarts(LearningRateSchedule):
    """Cosine decay restarted every period; period i lasts `first_decay_steps * t_mul**i`
    steps and starts at `initial_learning_rate * m_mul**i` (`alpha` is not scaled)."""

    def __init__(
        self, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0,
        name="SGDRDecay",
    ):  # fmt: skip
        check_initial_learning_rate(initial_learning_rate)
        check_positive_steps("first_decay_steps", first_decay_steps)
        check_number("t_mul", t_mul)
        check_number("m_mul", m_mul)
        check_number("alpha", alpha)
        if t_mul <= 0:
            raise ValueError(f"Argument `t_mul` must be > 0. Received: t_mul={t_mul}")
        self.initial_learning_rate = initial_learning_rate
        self.first_decay_steps = first_decay_steps
        self._t_mul = t_mul
        self._m_mul = m_mul
        self.alpha = alpha
        self.name = name

    def __call__(self, step):
        dtype = compute_dtype(self.initial_learning_rate)
        c = dtype.type
        t_mul, alpha = c(self._t_mul), c(self.alpha)
        fraction = as_step(step, dtype) / c(self.first_decay_steps)
        if t_mul == 1:
            restart = np.floor(fraction)
            fraction = fraction - restart
        else:
            restart = np.floor(np.log(c(1) - fraction * (c(1) - t_mul)) / np.log(t_mul))
            periods_done = (c(1) - np.power(t_mul, restart)) / (c(1) - t_mul)
            fraction = (fraction - periods_done) / np.power(t_mul, restart)
        decayed = np.power(c(self._m_mul), restart) * _cosine(fraction, c)
        return initial_value(self.initial_learning_rate, c) * ((c(1) - alpha) * decayed + alpha)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self._t_mul,
            "m_mul": self._m_mul,
            "alpha": self.alpha,
            "name": self.name,
        }
