"""Constructor checks for optimizer hyperparameters, with Keras-style messages."""

from __future__ import annotations

import math
import numbers
import reprlib

import numpy as np

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


def describe(value) -> str:
    """A short repr: bounded in length and depth (a deeply nested dict does not recurse)."""
    return _SHORT.repr(value)


def _finite(name: str, value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range: 10**400
        raise ValueError(
            f"Argument `{name}` must be a finite float; this integer is beyond float range. "
            f"Received: {name}={describe(value)}"
        ) from None


def check_float(name: str, value, low=None, high=None, low_open=False) -> None:
    """A finite real number (not a bool) within [low, high] (or (low, high] with `low_open`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Argument `{name}` must be a float. Received: {name}={describe(value)}")
    if not _finite(name, value):
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


# Step counts beyond what the int32 `iterations` counter can reach mean nothing.
MAX_STEPS = 2**31 - 1


def check_int(name: str, value, low: int, high: int | None = None) -> None:
    """An int (not a bool) >= `low` (and <= `high` when given)."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < low
        or (high is not None and value > high)
    ):
        most = "" if high is None else f" It may be at most {high}."
        raise ValueError(
            f"Argument `{name}` must be an integer >= {low}.{most} "
            f"Received: {name}={describe(value)}"
        )


def check_bool(name: str, value) -> None:
    """True or False (a numpy bool too): a flag, never a truthy string or list."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"Argument `{name}` must be a bool (True or False). Received: "
            f"{name}={describe(value)} of type {type(value).__name__}"
        )


MAX_CONFIG_DEPTH = 50


def check_config_depth(config, what: str = "config") -> None:
    """ValueError when `config` nests dicts and lists more than `MAX_CONFIG_DEPTH` deep (real
    configs nest a few levels; a deeper one would only exhaust the interpreter's stack)."""
    stack = [(config, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise ValueError(
                f"Argument `{what}` nests more than {MAX_CONFIG_DEPTH} levels of dicts and "
                "lists; optimizer and schedule configs nest a few levels (a "
                "LossScaleOptimizer holds one inner optimizer's config). "
                f"Received: {what}={describe(config)}"
            )
        children = node.values() if isinstance(node, dict) else node
        if isinstance(node, (dict, list, tuple)):
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, tuple)))
