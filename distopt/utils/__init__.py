"""Utilities: `clear_session()` resets automatic names, as `keras.utils.clear_session()`."""

from distopt import _naming

__all__ = ["clear_session"]


def clear_session() -> None:
    """Resets the automatic-name counters (`adam`, `adam_1`, ... start again)."""
    _naming.reset()
