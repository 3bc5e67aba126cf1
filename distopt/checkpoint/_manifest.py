"""The JSON manifest of a checkpoint: what it holds, where, and how to check it.

A manifest read from disk is untrusted: `load` checks every field's type and range, and
accepts only file names and tensor keys of the forms this package writes, so no manifest
can point a restore outside its checkpoint folder.
"""

from __future__ import annotations

import json
import os
import platform
import re

import numpy as np

from distopt.checkpoint import _placement, _state
from distopt.checkpoint._errors import CheckpointError
from distopt.checkpoint._safetensors import DTYPES

FORMAT = "distopt.checkpoint"
FORMAT_VERSION = 1
NAME = "manifest.json"
SHARD = re.compile(r"shard-\d{5}\.safetensors")
KEY = re.compile(r"[vox]\d{1,9}")


def shard_name(rank: int) -> str:
    return f"shard-{rank:05d}.safetensors"


def versions() -> dict:
    import distopt

    return {
        "distopt": distopt.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _fail(path: str, what: str):
    raise CheckpointError(f"Checkpoint manifest {path} is invalid: {what}.")


def _int(path, where, x, low=0):
    if not isinstance(x, int) or isinstance(x, bool) or x < low:
        _fail(path, f"`{where}` must be an integer >= {low}, found {x!r}")
    return x


def _entry(path: str, where: str, entry, world_size: int = 1) -> dict:
    """A tensor entry: path, shape, dtype and pieces covering its elements exactly once."""
    if not isinstance(entry, dict):
        _fail(path, f"`{where}` must be an object")
    if not isinstance(entry.get("path"), str):
        _fail(path, f"`{where}.path` must be a string")
    shape = entry.get("shape")
    if not isinstance(shape, list):
        _fail(path, f"`{where}.shape` must be a list")
    for d in shape:
        _int(path, f"{where}.shape", d)
    if not isinstance(entry.get("dtype"), str) or entry["dtype"] not in DTYPES:
        found = entry.get("dtype")
        _fail(path, f"`{where}.dtype` must be one of {sorted(DTYPES)}, found {found!r}")
    pieces = entry.get("pieces")
    if not isinstance(pieces, list):
        _fail(path, f"`{where}.pieces` must be a list")
    size, covered = int(np.prod(shape, dtype=object)), 0
    for k, piece in enumerate(pieces):
        at = f"{where}.pieces[{k}]"
        if not isinstance(piece, dict):
            _fail(path, f"`{at}` must be an object")
        file, key = piece.get("file"), piece.get("key")
        if not isinstance(file, str) or not SHARD.fullmatch(file):
            _fail(path, f"`{at}.file` must be a shard file shard-NNNNN.safetensors: {file!r}")
        if not isinstance(key, str) or not KEY.fullmatch(key):
            _fail(path, f"`{at}.key` must be a tensor key like 'o12', found {key!r}")
        start = _int(path, f"{at}.start", piece.get("start"))
        stop = _int(path, f"{at}.stop", piece.get("stop"), start + 1)
        _int(path, f"{at}.crc32", piece.get("crc32"))
        if start != covered:
            _fail(path, f"`{at}` starts at element {start}, expected {covered}")
        covered = stop
    if covered != size and not (size == 0 and not pieces):
        _fail(path, f"`{where}` has pieces covering {covered} of its {size} elements")
    per_rank = entry.get("per_rank")
    if per_rank is not None:
        if not isinstance(per_rank, dict) or per_rank.get("combine") not in ("sum", "max"):
            _fail(path, f"`{where}.per_rank` must be an object with combine 'sum' or 'max'")
        ranks = per_rank.get("pieces")
        if not isinstance(ranks, list) or len(ranks) != world_size:
            _fail(path, f"`{where}.per_rank.pieces` must list the pieces of {world_size} ranks")
        for r, rank_pieces in enumerate(ranks):
            plain = {k: v for k, v in entry.items() if k != "per_rank"}
            _entry(path, f"{where}.per_rank.pieces[{r}]", {**plain, "pieces": rank_pieces}, 1)
    return entry


def load(path: str) -> dict:
    """The validated manifest at `path`; CheckpointError naming the problem otherwise."""
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError as e:
        raise CheckpointError(
            f"Checkpoint manifest {path} is missing: the checkpoint was not completely written "
            "or was removed."
        ) from e
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"Checkpoint manifest {path} is not valid JSON ({e}).") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        _fail(path, f"`format` must be {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        _fail(
            path,
            f"format_version {manifest.get('format_version')!r} is not {FORMAT_VERSION}, the "
            "version this distopt reads",
        )
    _int(path, "step", manifest.get("step"))
    world_size = _int(path, "world_size", manifest.get("world_size"), 1)
    for group in ("variables", "optimizer_variables"):
        entries = manifest.get(group)
        if not isinstance(entries, list):
            _fail(path, f"`{group}` must be a list")
        for i, e in enumerate(entries):
            _entry(path, f"{group}[{i}]", e, world_size)
    if manifest.get("optimizer") is not None and not isinstance(manifest["optimizer"], dict):
        _fail(path, "`optimizer` must be an object or null")
    extras = manifest.get("extras")
    if not isinstance(extras, dict):
        _fail(path, "`extras` must be an object")
    for name, item in extras.items():
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind == "array":
            _entry(path, f"extras[{name!r}]", item)
        elif kind == "dataset":
            _int(path, f"extras[{name!r}].steps", item.get("steps"))
        elif kind != "json" or "value" not in item:
            _fail(path, f"`extras[{name!r}]` must be an array, json or dataset item")
    return manifest


def write(directory: str, manifest: dict) -> None:
    """Writes `directory`/manifest.json durably (written, fsynced, then renamed)."""
    path = os.path.join(directory, NAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build(step, size, variables, optimizer, encoded, opt_vars, places, shapes, everyone):
    """The manifest of a save: `everyone[r]` maps each key rank r wrote to
    (file, start, stop, crc32); `shapes` are the optimizer variables' whole shapes."""
    from distopt.optimizers import serialize

    pieces: dict[str, list] = {}
    by_rank: list[dict] = []
    for written in everyone:
        mine = {}
        for key, (file, start, stop, crc) in written.items():
            piece = {"file": file, "key": key, "start": start, "stop": stop, "crc32": crc}
            pieces.setdefault(key, []).append(piece)
            mine[key] = [piece]
        by_rank.append(mine)
    for parts in pieces.values():
        parts.sort(key=lambda p: p["start"])

    def entry(key, path, shape, dtype, place=None):
        e = _state.entry(path, shape, dtype)
        e["pieces"] = pieces.get(key, [])
        if isinstance(place, _placement.PerRank):
            ranks = [mine.get(key, []) for mine in by_rank]
            e["pieces"] = ranks[0]
            e["per_rank"] = {"combine": place.combine, "pieces": ranks}
        return e

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": versions(),
        "step": step,
        "world_size": size,
        "optimizer": json.loads(json.dumps(serialize(optimizer), default=repr)),
        "variables": [entry(f"v{i}", v.path, v.shape, v.dtype) for i, v in enumerate(variables)],
        "optimizer_variables": [
            entry(f"o{k}", v.path, shape, v.dtype, p)
            for k, (v, p, shape) in enumerate(zip(opt_vars, places, shapes))
        ],
        "extras": encoded.manifest(lambda key: pieces.get(key, [])),
    }
