"""`get`, `serialize` and `deserialize` for optimizers."""

from __future__ import annotations

from distopt.optimizers._base import Optimizer
from distopt.optimizers._hyperparameters import check_config_depth, describe
from distopt.optimizers.adadelta import Adadelta
from distopt.optimizers.adafactor import Adafactor
from distopt.optimizers.adagrad import Adagrad
from distopt.optimizers.adam import Adam
from distopt.optimizers.adamax import Adamax
from distopt.optimizers.adamw import AdamW
from distopt.optimizers.ftrl import Ftrl
from distopt.optimizers.lamb import Lamb
from distopt.optimizers.lion import Lion
from distopt.optimizers.loss_scale_optimizer import LossScaleOptimizer
from distopt.optimizers.muon import Muon
from distopt.optimizers.nadam import Nadam
from distopt.optimizers.rmsprop import RMSprop
from distopt.optimizers.schedule_free_adamw import ScheduleFreeAdamW
from distopt.optimizers.sgd import SGD

# Keyed by lower-cased class name, as Keras's table (plus Lamb, which Keras forgot).
_BUILTINS: dict[str, type[Optimizer]] = {
    cls.__name__.lower(): cls
    for cls in (SGD, Adam, RMSprop, AdamW, Adadelta, Adagrad, Adamax, Nadam, Ftrl, Lion)
}


def _register(cls: type[Optimizer]) -> type[Optimizer]:
    _BUILTINS[cls.__name__.lower()] = cls
    return cls


# Per-tensor optimizers and the loss-scale wrapper.
for _cls in (Adafactor, Lamb, LossScaleOptimizer, Muon, ScheduleFreeAdamW):
    _register(_cls)


def serialize(optimizer: Optimizer) -> dict:
    """`{"module", "class_name", "config", "registered_name"}`, as Keras."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"`serialize` takes an Optimizer. Received: {optimizer!r}")
    return {
        "module": "distopt.optimizers",
        "class_name": type(optimizer).__name__,
        "config": optimizer.get_config(),
        "registered_name": None,
    }


def deserialize(config: dict, custom_objects=None) -> Optimizer:
    """Rebuilds an optimizer from `serialize`'s dict (class names are case-insensitive)."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            "`deserialize` takes a dict with 'class_name' and 'config' keys. "
            f"Received: {describe(config)}"
        )
    check_config_depth(config)
    name = config["class_name"]
    custom = dict(custom_objects or {})
    cls = custom.get(name) or _BUILTINS.get(str(name).lower())
    if cls is None:
        raise ValueError(f"Could not interpret optimizer identifier: {name}")
    return cls.from_config(config.get("config", {}), custom_objects=custom_objects)


def get(identifier):
    """An optimizer from a name (any case), a `serialize` dict, or an instance; None -> None."""
    if identifier is None:
        return None
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        cls = _BUILTINS.get(identifier.lower())
        if cls is not None:
            return cls()
    raise ValueError(f"Could not interpret optimizer identifier: {identifier}")
