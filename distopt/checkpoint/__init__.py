"""Checkpoints: variables, optimizer state (ZeRO-1 shards included) and extras, no pickle.

`CheckpointManager(directory, max_to_keep=3)` saves numbered checkpoints and restores them
at the same or another world size; `CheckpointError` reports a missing, damaged or
mismatched checkpoint (and nothing is changed).
"""

from distopt.checkpoint._errors import CheckpointError
from distopt.checkpoint._manager import CheckpointManager

__all__ = ["CheckpointError", "CheckpointManager"]
