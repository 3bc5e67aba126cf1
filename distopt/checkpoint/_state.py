"""Model and optimizer state as whole tensors: what each rank writes, and what it reads back.

A checkpoint stores every variable whole, whatever the world size it was saved at: under
ZeRO-1 each rank writes the parts it holds (`pieces`) and a restore reads, for each part
this rank holds now, the pieces that overlap it (`read_part`). So a checkpoint restores at
any world size, with or without sharding.
"""

from __future__ import annotations

import numpy as np

from distopt.checkpoint._errors import CheckpointError
from distopt.checkpoint._placement import Elements, PerRank, Whole
from distopt.checkpoint._safetensors import DTYPES, dtype_code


def entry(path: str, shape, dtype) -> dict:
    return {"path": path, "shape": list(shape), "dtype": dtype_code(dtype), "pieces": []}


def sources(places, shapes_by_rank) -> list[int | None]:
    """For each `Whole` variable, the rank that writes it: rank 0, or under per-tensor ZeRO-1
    the lowest rank holding it (non-empty); None for `Elements` and `PerRank` (every rank
    writes its own)."""
    out = []
    for k, place in enumerate(places):
        if isinstance(place, (Elements, PerRank)):
            out.append(None)
        elif place.placeholder_ok:
            holders = [r for r, shapes in enumerate(shapes_by_rank) if 0 not in shapes[k]]
            out.append(holders[0] if holders else 0)
        else:
            out.append(0)
    return out


def full_shape(var, place) -> tuple:
    return place.shape if isinstance(place, Elements) else tuple(var.shape)


def check_targets(manifest_entries, targets, what: str) -> None:
    """CheckpointError unless the saved tensors match the targets' count, shapes and dtypes.

    `targets`: (label, shape, dtype, may_be_placeholder) per tensor.
    """
    if len(manifest_entries) != len(targets):
        raise CheckpointError(
            f"The checkpoint holds {len(manifest_entries)} {what}, the restore was given "
            f"{len(targets)}: it was saved from another model or optimizer configuration."
        )
    problems = []
    for i, (e, (label, shape, dtype, placeholder)) in enumerate(zip(manifest_entries, targets)):
        saved_shape, saved_dtype = tuple(e["shape"]), np.dtype(DTYPES[e["dtype"]])
        if placeholder and shape == (0,):
            continue  # another rank's tensor under per-tensor ZeRO-1
        if saved_shape != tuple(shape) or saved_dtype != np.dtype(dtype):
            problems.append(
                f"{what} {i} ({label}): saved {e['path']} {saved_shape} {saved_dtype}, "
                f"given {tuple(shape)} {np.dtype(dtype)}"
            )
    if problems:
        raise CheckpointError(
            f"The checkpoint's {what} differ from the ones given to restore (another model or "
            "optimizer configuration?): "
            + "; ".join(problems[:5])
            + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        )


def read_part(reader, e: dict, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of the flattened saved tensor `e`, from its pieces."""
    dtype = np.dtype(DTYPES[e["dtype"]])
    out = None
    for piece in e["pieces"]:
        lo, hi = max(start, piece["start"]), min(stop, piece["stop"])
        if lo >= hi:
            continue
        data = reader(piece["file"], piece["key"], piece["crc32"]).reshape(-1)
        if data.size != piece["stop"] - piece["start"] or data.dtype != dtype:
            raise CheckpointError(
                f"Tensor `{piece['key']}` of {piece['file']} holds {data.size} {data.dtype} "
                f"elements; the manifest expects {piece['stop'] - piece['start']} "
                f"{dtype} for {e['path']}."
            )
        if (piece["start"], piece["stop"]) == (start, stop):
            return data  # the whole range in one piece: no copy
        if out is None:
            out = np.empty(stop - start, dtype=dtype)
        out[lo - start : hi - start] = data[lo - piece["start"] : hi - piece["start"]]
    return out if out is not None else np.empty(stop - start, dtype=dtype)


def target_part(var, place) -> tuple[int, int] | None:
    """The flat element range of the saved tensor this rank's `var` takes; None: nothing
    (a per-tensor ZeRO-1 placeholder)."""
    if isinstance(place, Elements):
        return place.start, place.stop
    if isinstance(place, Whole) and place.placeholder_ok and var.shape == (0,):
        return None
    return 0, var.size


def read_per_rank(reader, e: dict, rank: int, size: int, saved_size: int) -> np.ndarray:
    """This rank's accumulator: its own at the saved world size; else rank 0 takes the
    saved ranks' values combined (in rank order) and the others zeros."""
    per_rank = e["per_rank"]
    count = int(np.prod(e["shape"], dtype=np.int64))
    part = {**e, "per_rank": None}
    if size == saved_size:
        return read_part(reader, {**part, "pieces": per_rank["pieces"][rank]}, 0, count)
    out = np.zeros(count, dtype=np.dtype(DTYPES[e["dtype"]]))
    if rank == 0:
        for pieces in per_rank["pieces"]:
            value = read_part(reader, {**part, "pieces": pieces}, 0, count)
            if per_rank["combine"] == "max":
                np.maximum(out, value, out=out)
            else:
                out += value
    return out
