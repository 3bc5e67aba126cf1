"""`LearningRateSchedule`, the base of every schedule, and the helpers schedules share."""

from __future__ import annotations

import numbers

import numpy as np

from distopt._variable import Variable
from distopt.optimizers._hyperparameters import _finite, describe


class LearningRateSchedule:
    """A serializable learning-rate schedule: `schedule(step)` returns the learning rate.

    Optimizers call it with their raw call counter (`optimizer._iterations`, pre-increment),
    so the first update uses `schedule(0)`.
    """

    def __call__(self, step):
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override "
            "`__call__(self, step)`."
        )

    def get_config(self):
        raise NotImplementedError(
            f"Learning rate schedule '{self.__class__.__name__}' must override `get_config()` "
            "in order to be serializable."
        )

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def compute_dtype(initial_learning_rate) -> np.dtype:
    """Keras computes in the dtype of `initial_learning_rate`: float32 for a Python number,
    the numpy dtype for a numpy float (e.g. `np.float64(0.1)` computes in float64) and a
    float Variable's dtype."""
    if isinstance(initial_learning_rate, (np.floating, np.ndarray, Variable)):
        dtype = np.asarray(initial_learning_rate).dtype
        if dtype.kind == "f":
            return dtype
    return np.dtype("float32")


def as_step(step, dtype) -> np.ndarray:
    """The step (int, float, numpy scalar or Variable) cast to the compute dtype, 0-d."""
    arr = np.asarray(step)
    if arr.shape != () or arr.dtype.kind not in "fiub":
        raise ValueError(
            "A learning rate schedule takes a scalar step (an int, a float or a scalar "
            f"Variable). Received: step={step!r}"
        )
    return arr.astype(dtype)[()]


def check_initial_learning_rate(value) -> None:
    """A number, or (as Keras) a scalar Variable or 0-d array, read at every call."""
    if isinstance(value, (Variable, np.ndarray)):
        if value.shape != () or value.dtype.kind not in "fiu":
            raise ValueError(
                "Argument `initial_learning_rate` must be a number, a scalar Variable or a 0-d "
                f"numeric array. Received: a {type(value).__name__} of shape {value.shape} "
                f"and dtype {value.dtype}"
            )
        return
    check_number("initial_learning_rate", value)


def initial_value(initial_learning_rate, c):
    """The current initial learning rate (a Variable's value now) as scalar type `c`."""
    return c(np.asarray(initial_learning_rate))


def check_number(name: str, value, allow_none: bool = False, low=None) -> None:
    """A finite real number (not a bool), >= `low` when given; NaN and inf would only ever
    give a NaN or infinite learning rate."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Argument `{name}` must be a number. Received: {name}={describe(value)}")
    if not _finite(name, value):
        raise ValueError(f"Argument `{name}` must be a finite number. Received: {name}={value!r}")
    if low is not None and value < low:
        raise ValueError(f"Argument `{name}` must be >= {low}. Received: {name}={value!r}")


def check_positive_steps(name: str, value) -> None:
    check_number(name, value)
    if value <= 0:
        raise ValueError(f"Argument `{name}` must be > 0. Received: {name}={value}")
