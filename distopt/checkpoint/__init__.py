"""Checkpoints: variables, optimizer state (ZeRO-1 shards included) and extras, no pickle.

`CheckpointManager(directory, max_to_keep=3)` saves numbered checkpoints and restores them
at the same or another world size; `CheckpointError` reports a missing, damaged or
mismatched checkpoint (and nothing is changed). `load_keras_optimizer_state` and
`save_keras_optimizer_state` move an optimizer's state from and to a Keras 3 weights file.
"""

from distopt.checkpoint._errors import CheckpointError
from distopt.checkpoint._keras import (
    load_keras_optimizer_state,
    read_keras_optimizer_variables,
    save_keras_optimizer_state,
)
from distopt.checkpoint._manager import CheckpointManager

__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "load_keras_optimizer_state",
    "read_keras_optimizer_variables",
    "save_keras_optimizer_state",
]
