"""Process-wide unique names (Keras's auto-naming), reset by `distopt.utils.clear_session()`."""

import re
import threading

_lock = threading.Lock()
_counters: dict[str, int] = {}


def to_snake_case(name: str) -> str:
    """Keras snake case: `AdamW` -> `adam_w`, `RMSprop` -> `rm_sprop`."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub(r"([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def uniquify(base: str) -> str:
    """The first call returns `base`, the n-th `base_{n-1}`."""
    with _lock:
        n = _counters.get(base, 0)
        _counters[base] = n + 1
    return base if n == 0 else f"{base}_{n}"


def reset() -> None:
    with _lock:
        _counters.clear()
