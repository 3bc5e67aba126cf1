"""Flattening of nested lists / tuples / dicts of arrays (dict keys in sorted order)."""

from __future__ import annotations

from typing import Any


def flatten(value: Any) -> list:
    if isinstance(value, dict):
        return [leaf for k in sorted(value) for leaf in flatten(value[k])]
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in flatten(item)]
    return [value]


def pack_as(structure: Any, leaves: list) -> Any:
    it = iter(leaves)

    def rebuild(s):
        if isinstance(s, dict):
            return {k: rebuild(s[k]) for k in sorted(s)}
        if isinstance(s, tuple) and hasattr(s, "_fields"):
            return type(s)(*(rebuild(x) for x in s))
        if isinstance(s, (list, tuple)):
            return type(s)(rebuild(x) for x in s)
        return next(it)

    return rebuild(structure)


def flatten_with_paths(value: Any, path: str = "value") -> list[tuple[str, Any]]:
    """(path, leaf) pairs in `flatten` order; paths read like `value['w'][0]` (for messages)."""
    if isinstance(value, dict):
        return [p for k in sorted(value) for p in flatten_with_paths(value[k], f"{path}[{k!r}]")]
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in flatten_with_paths(item, f"{path}[{i}]")]
    return [(path, value)]
