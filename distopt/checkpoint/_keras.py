"""Keras 3 interop: an optimizer's state in a `.weights.h5` or `.keras` file.

Keras stores a compiled model's optimizer variables under `optimizer/vars/0, 1, ...` in
`optimizer.variables` order (a `.keras` file is a zip holding `model.weights.h5`). When a
distopt optimizer is built for the model's trainable variables in the model's order, its
`variables` correspond one to one, so the state moves across in order: shapes and count
are checked first. Needs `h5py` (the `keras` extra).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile

import numpy as np

from distopt.checkpoint import _placement
from distopt.checkpoint._errors import CheckpointError

_GROUP = "optimizer/vars"
_WEIGHTS_IN_ZIP = "model.weights.h5"


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise ImportError(
            "Reading or writing Keras weight files needs h5py: `pip install distopt[keras]`."
        ) from e
    return h5py


def _open_weights(path: str, mode: str):
    """(h5 file, zip bytes holder or None) for a `.weights.h5` or a `.keras` file."""
    h5py = _h5py()
    if not os.path.exists(path):
        raise CheckpointError(f"Keras weights file {path} does not exist.")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if _WEIGHTS_IN_ZIP not in z.namelist():
                raise CheckpointError(
                    f"{path} is a zip without {_WEIGHTS_IN_ZIP}: not a .keras file."
                )
            buffer = io.BytesIO(z.read(_WEIGHTS_IN_ZIP))
        return h5py.File(buffer, mode), buffer
    try:
        return h5py.File(path, mode), None
    except OSError as e:
        raise CheckpointError(f"{path} is not a Keras .weights.h5 or .keras file ({e}).") from e


def read_keras_optimizer_variables(path) -> list[np.ndarray]:
    """The optimizer variables saved in a Keras `.weights.h5` or `.keras` file, in order."""
    path = os.fspath(path)
    f, _ = _open_weights(path, "r")
    with f:
        group = f.get(_GROUP)
        if group is None:
            raise CheckpointError(
                f"{path} holds no optimizer state (no `{_GROUP}` group): save a compiled, "
                "trained model."
            )
        return [np.asarray(group[str(i)]) for i in range(len(group))]


def _check(saved, optimizer, path):
    variables = optimizer.variables
    places = _placement.placements(optimizer)
    if len(saved) != len(variables):
        raise CheckpointError(
            f"{path} holds {len(saved)} optimizer variables, {type(optimizer).__name__} "
            f"'{optimizer.name}' has {len(variables)}: build it for the Keras model's "
            "trainable variables, in the same order, with the same optimizer options."
        )
    for i, (value, var, place) in enumerate(zip(saved, variables, places)):
        shape = place.shape if isinstance(place, _placement.Elements) else var.shape
        if getattr(place, "placeholder_ok", False) and var.shape == (0,):
            continue
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(
                f"Optimizer variable {i} ({var.path}) has shape {tuple(shape)}; {path} holds "
                f"{tuple(value.shape)} there: the variables do not correspond (same model, "
                "same order, same optimizer options?)."
            )
    return variables, places


def load_keras_optimizer_state(path, optimizer) -> None:
    """Loads the optimizer state of a Keras `.weights.h5` / `.keras` file into `optimizer`
    (built for the model's trainable variables, in order). Checks every shape first;
    nothing changes when it raises. Under a strategy, call it on all ranks: each takes its
    ZeRO-1 part, and rank 0 the gradient accumulators."""
    path = os.fspath(path)
    if not optimizer.built:
        raise CheckpointError(
            "Build the optimizer first: `optimizer.build(trainable_variables)` with the "
            "variables in the Keras model's order."
        )
    saved = read_keras_optimizer_variables(path)
    variables, places = _check(saved, optimizer, path)
    rank = _rank(optimizer)
    values = []
    for value, var, place in zip(saved, variables, places):
        if isinstance(place, _placement.Elements):
            value = value.reshape(-1)[place.start : place.stop]
        elif isinstance(place, _placement.PerRank) and rank != 0:
            value = np.zeros_like(value)  # the sum over ranks is the saved accumulator
        elif getattr(place, "placeholder_ok", False) and var.shape == (0,):
            continue
        values.append((var, value))
    for var, value in values:
        var.value[...] = value.reshape(var.shape)


def _rank(optimizer) -> int:
    strategy = getattr(optimizer, "_strategy", None)
    return strategy.communicator.rank if strategy is not None else 0


def _full_values(optimizer) -> list[np.ndarray]:
    """Every optimizer variable whole (gathered under ZeRO-1; accumulators summed or maxed).

    Collective under a strategy: call on all ranks, in the same order.
    """
    strategy = getattr(optimizer, "_strategy", None)
    comm = strategy.communicator if strategy is not None else None
    out = []
    for var, place in zip(optimizer.variables, _placement.placements(optimizer)):
        value = var.numpy()
        if comm is None or comm.size == 1 or place == _placement.Whole():
            out.append(value)
            continue
        parts = [np.frombuffer(b, dtype=var.dtype) for b in comm.allgather_bytes(value.tobytes())]
        if isinstance(place, _placement.Elements):
            value = np.concatenate(parts).reshape(place.shape)
        elif isinstance(place, _placement.PerRank):
            combine = np.maximum if place.combine == "max" else np.add
            value = parts[0].copy()
            for p in parts[1:]:
                combine(value, p, out=value)
            value = value.reshape(var.shape)
        else:  # per-tensor ZeRO-1: the owner's
            shapes = comm.allgather_bytes(json.dumps(list(var.shape)).encode())
            owner = next((r for r, p in enumerate(parts) if p.size), 0)
            value = parts[owner].reshape(json.loads(shapes[owner]))
        out.append(value)
    return out


def save_keras_optimizer_state(path, optimizer) -> None:
    """Writes `optimizer`'s state into an existing Keras `.weights.h5` / `.keras` file (e.g.
    from `model.save_weights`), replacing its optimizer variables, so that Keras's
    `model.load_weights` continues from distopt's state. The file must hold the same number
    of optimizer variables with the same shapes (checked first). Collective under a
    strategy: call on all ranks; rank 0 writes."""
    path = os.fspath(path)
    values = _full_values(optimizer)
    if _rank(optimizer) != 0:
        return
    saved = read_keras_optimizer_variables(path)
    if len(saved) != len(values) or any(a.shape != b.shape for a, b in zip(saved, values)):
        shapes = [a.shape for a in saved], [b.shape for b in values]
        raise CheckpointError(
            f"{path} holds optimizer variables of shapes {shapes[0]}, the optimizer "
            f"{shapes[1]}: the variables do not correspond."
        )
    f, buffer = _open_weights(path, "r+")
    with f:
        group = f[_GROUP]
        for i, (old, value) in enumerate(zip(saved, values)):
            group[str(i)][...] = value.astype(old.dtype)
    if buffer is not None:
        _replace_in_zip(path, _WEIGHTS_IN_ZIP, buffer.getvalue())


def _replace_in_zip(path: str, member: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".tmp") as tmp:
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
            for info in src.infolist():
                dst.writestr(info, data if info.filename == member else src.read(info))
    shutil.move(tmp.name, path)
