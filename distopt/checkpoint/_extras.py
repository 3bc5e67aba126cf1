"""User extras of a checkpoint: numeric arrays, JSON values and dataset positions."""

from __future__ import annotations

import json

import numpy as np

from distopt.checkpoint._errors import CheckpointError
from distopt.checkpoint._safetensors import DTYPES, dtype_code
from distopt.distribute._datasets import _Iterator


class Encoded:
    """Extras checked and split into tensors (`arrays`, by key) and manifest items."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.items: dict[str, dict] = {}

    def manifest(self, pieces_of) -> dict:
        out = {}
        for name, item in self.items.items():
            if item["kind"] == "array":
                kept = {k: v for k, v in item.items() if k != "key"}
                item = {**kept, "pieces": pieces_of(item["key"])}
            out[name] = item
        return out


def encode(extras) -> Encoded:
    """Checks `extras` (nothing is written when it raises) and encodes it."""
    enc = Encoded()
    if extras is None:
        return enc
    if not isinstance(extras, dict) or not all(isinstance(k, str) for k in extras):
        raise TypeError(
            "Argument `extras` must be a dict with string keys (values: numeric arrays, JSON "
            f"values, or dataset iterators). Received: {extras!r:.200}"
        )
    for j, (name, value) in enumerate(extras.items()):
        if isinstance(value, _Iterator):
            enc.items[name] = {"kind": "dataset", "steps": int(value._steps)}
        elif isinstance(value, (np.ndarray, np.generic)):
            arr = np.asarray(value)
            if arr.dtype.kind not in "fiub":
                raise TypeError(
                    f"Extra `{name}` must be a numeric or bool array. Received dtype {arr.dtype}."
                )
            key = f"x{j}"
            enc.arrays[key] = arr
            enc.items[name] = {
                "kind": "array",
                "key": key,
                "path": name,
                "shape": list(arr.shape),
                "dtype": dtype_code(arr.dtype),
            }
        else:
            try:
                value = json.loads(json.dumps(value, allow_nan=False))
            except (TypeError, ValueError) as e:
                raise TypeError(
                    f"Extra `{name}` must be a numeric array, a JSON value (number, string, "
                    "bool, None, list, dict with string keys; finite floats) or a dataset "
                    f"iterator. Received: {value!r:.200} ({e})"
                ) from e
            enc.items[name] = {"kind": "json", "value": value}
    return enc


def decode(items: dict, read) -> dict:
    """The extras of a manifest; `read(entry, start, stop)` loads an array entry's elements."""
    out = {}
    for name, item in items.items():
        if item["kind"] == "json":
            out[name] = item["value"]
        elif item["kind"] == "dataset":
            out[name] = item["steps"]
        else:
            size = int(np.prod(item["shape"], dtype=np.int64))
            data = read(item, 0, size)
            out[name] = data.astype(np.dtype(DTYPES[item["dtype"]])).reshape(item["shape"])
    return out


def check_datasets(datasets, items: dict) -> dict:
    if datasets is None:
        return {}
    if not isinstance(datasets, dict):
        raise CheckpointError(
            "Argument `datasets` must be a dict of extras names to fresh dataset iterators. "
            f"Received: {datasets!r:.200}"
        )
    for name, it in datasets.items():
        if items.get(name, {}).get("kind") != "dataset":
            saved = sorted(n for n, i in items.items() if i["kind"] == "dataset")
            raise CheckpointError(
                f"`datasets[{name!r}]`: the checkpoint saved no dataset position under that "
                f"name (it has {saved})."
            )
        if not isinstance(it, _Iterator) or it._steps:
            raise CheckpointError(
                f"`datasets[{name!r}]` must be a fresh iterator of a distopt distributed "
                f"dataset (`iter(strategy.experimental_distribute_dataset(...))`). "
                f"Received: {it!r:.200}"
            )
    return dict(datasets)
