"""`serialize` / `deserialize` for learning-rate schedules (Keras's dict format)."""

from __future__ import annotations

from distopt.optimizers._hyperparameters import check_config_depth, describe
from distopt.optimizers.schedules._base import LearningRateSchedule
from distopt.optimizers.schedules._cosine import CosineDecay, CosineDecayRestarts
from distopt.optimizers.schedules._decay import (
    ExponentialDecay,
    InverseTimeDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
)

_BUILTINS = {
    cls.__name__: cls
    for cls in (
        ExponentialDecay, PiecewiseConstantDecay, PolynomialDecay, InverseTimeDecay,
        CosineDecay, CosineDecayRestarts,
    )
}  # fmt: skip


def serialize(learning_rate_schedule) -> dict:
    """`{"module", "class_name", "config", "registered_name"}` of a schedule."""
    if not isinstance(learning_rate_schedule, LearningRateSchedule):
        raise TypeError(
            f"`serialize` takes a LearningRateSchedule. Received: {learning_rate_schedule!r}"
        )
    return {
        "module": "distopt.optimizers.schedules",
        "class_name": type(learning_rate_schedule).__name__,
        "config": learning_rate_schedule.get_config(),
        "registered_name": None,
    }


def deserialize(config, custom_objects=None) -> LearningRateSchedule:
    """A schedule from `serialize`'s dict (or `{"class_name", "config"}`); `custom_objects`
    maps class names to user-defined schedule classes."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            "`deserialize` takes a dict with 'class_name' and 'config' keys, as returned by "
            f"`serialize`. Received: {describe(config)}"
        )
    check_config_depth(config)
    name = config["class_name"]
    cls = dict(custom_objects or {}).get(name) or _BUILTINS.get(name)
    if cls is None:
        raise ValueError(
            f"Could not interpret learning rate schedule class_name: {name!r}. Built-in "
            f"schedules are {sorted(_BUILTINS)}; pass custom classes in `custom_objects`."
        )
    return cls.from_config(dict(config.get("config", {})))
