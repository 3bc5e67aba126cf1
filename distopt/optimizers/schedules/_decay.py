"""Exponential, piecewise-constant, polynomial and inverse-time decay, as Keras computes them.

Each computes in the dtype of `initial_learning_rate` (float32 for a Python float), with the
same operation order as Keras, so values match Keras's float32 results.
"""

from __future__ import annotations

import numpy as np

from distopt.optimizers._hyperparameters import check_bool, describe
from distopt.optimizers.schedules._base import (
    LearningRateSchedule,
    as_step,
    check_initial_learning_rate,
    check_number,
    check_positive_steps,
    compute_dtype,
    initial_value,
)


class _RateDecay(LearningRateSchedule):
    """What `ExponentialDecay` and `InverseTimeDecay` share: their arguments, their config and
    the decay progress `step / decay_steps` (floored if `staircase`)."""

    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase, name):
        check_initial_learning_rate(initial_learning_rate)
        check_positive_steps("decay_steps", decay_steps)
        # A negative rate gives a NaN (exponential) or a pole (inverse time).
        check_number("decay_rate", decay_rate, low=0)
        check_bool("staircase", staircase)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name

    def _progress(self, step):
        """The progress and the compute dtype's scalar type."""
        dtype = compute_dtype(self.initial_learning_rate)
        c = dtype.type
        p = as_step(step, dtype) / c(self.decay_steps)
        return (np.floor(p) if self.staircase else p), c

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class ExponentialDecay(_RateDecay):
    """`initial_learning_rate * decay_rate ** (step / decay_steps)` (floored if `staircase`)."""

    def __init__(
        self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
        name="ExponentialDecay",
    ):  # fmt: skip
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def __call__(self, step):
        p, c = self._progress(step)
        return initial_value(self.initial_learning_rate, c) * np.power(c(self.decay_rate), p)


class PiecewiseConstantDecay(LearningRateSchedule):
    """`values[0]` while `step <= boundaries[0]`, `values[i]` for
    `boundaries[i-1] < step <= boundaries[i]`, `values[-1]` after the last boundary."""

    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        boundaries, values = list(boundaries), list(values)
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "The length of boundaries should be 1 less than the length of values. "
                f"Received: boundaries={boundaries} of length {len(boundaries)}, and "
                f"values={values} of length {len(values)}."
            )
        for i, b in enumerate(boundaries):
            check_number(f"boundaries[{i}]", b)
        for i, v in enumerate(values):
            check_number(f"values[{i}]", v)
        if any(a > b for a, b in zip(boundaries, boundaries[1:])):
            raise ValueError(
                "Argument `boundaries` must be sorted in increasing order. "
                f"Received: boundaries={describe(boundaries)}"
            )
        self.boundaries = boundaries
        self.values = values
        self.name = name

    def __call__(self, step):
        raw = np.asarray(step)
        step = as_step(step, raw.dtype)
        # The result has the dtype of values[0] as Keras converts it (Python float -> float32).
        result = np.asarray(self.values[0])
        if result.dtype == np.float64 and not isinstance(self.values[0], np.floating):
            result = result.astype(np.float32)
        dtype = result.dtype
        bounds = [np.asarray(b).astype(raw.dtype)[()] for b in self.boundaries]
        index = len(bounds)
        for i, b in enumerate(bounds):
            if step <= b:
                index = i
                break
        return np.asarray(self.values[index]).astype(dtype)[()]

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """`(lr0 - end) * (1 - step / decay_steps) ** power + end`; with `cycle` the horizon
    grows to the first multiple of `decay_steps` beyond the step."""

    def __init__(
        self, initial_learning_rate, decay_steps, end_learning_rate=0.0001, power=1.0,
        cycle=False, name="PolynomialDecay",
    ):  # fmt: skip
        check_initial_learning_rate(initial_learning_rate)
        check_positive_steps("decay_steps", decay_steps)
        check_number("end_learning_rate", end_learning_rate)
        check_number("power", power)
        check_bool("cycle", cycle)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = cycle
        self.name = name

    def __call__(self, step):
        dtype = compute_dtype(self.initial_learning_rate)
        c = dtype.type
        lr0, end = initial_value(self.initial_learning_rate, c), c(self.end_learning_rate)
        s = as_step(step, dtype)
        horizon = c(self.decay_steps)
        if self.cycle:
            multiplier = c(1.0) if s == 0 else np.ceil(s / c(self.decay_steps))
            horizon = horizon * multiplier
        else:
            s = np.minimum(s, horizon)
        p = s / horizon
        return (lr0 - end) * np.power(c(1) - p, c(self.power)) + end

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }


class InverseTimeDecay(_RateDecay):
    """`initial_learning_rate / (1 + decay_rate * step / decay_steps)` (floored if
    `staircase`)."""

    def __init__(
        self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
        name="InverseTimeDecay",
    ):  # fmt: skip
        super().__init__(initial_learning_rate, decay_steps, decay_rate, staircase, name)

    def __call__(self, step):
        p, c = self._progress(step)
        return initial_value(self.initial_learning_rate, c) / (c(1) + c(self.decay_rate) * p)
