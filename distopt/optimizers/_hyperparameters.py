"""Constructor checks for optimizer hyperparameters, with Keras-style messages."""

from __future__ import annotations

import math
import numbers


def check_float(name: str, value, low=None, high=None, low_open=False) -> None:
    """A finite real number (not a bool) within [low, high] (or (low, high] with `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Argument `{name}` must be a float. Received: {name}={value!r}")
    if not math.isfinite(value):
        raise ValueError(f"Argument `{name}` must be a finite float. Received: {name}={value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        if high is None:
            what = f"> {low}" if low_open else f">= {low}"
        else:
            what = f"in {left}{low}, {high}]"
        raise ValueError(f"Argument `{name}` must be a float {what}. Received: {name}={value}")


def check_int(name: str, value, low: int) -> None:
    """An int (not a bool) >= `low`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(
            f"Argument `{name}` must be an integer >= {low}. Received: {name}={value!r}"
        )
