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
