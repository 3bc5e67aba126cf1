"""One restore: read and check everything first (`prepare`), then assign (`commit`)."""

from __future__ import annotations

import json
import os

import numpy as np

from distopt.checkpoint import _extras, _manifest, _placement, _safetensors, _state
from distopt.checkpoint._errors import CheckpointError


def _comparable(serialized):
    """An optimizer's class and config without what a restore sets or may differ in: its
    automatic name, and a constant learning rate (an optimizer variable, restored). A damaged
    manifest's non-object parts are kept as they are, to show up as differences."""
    if not isinstance(serialized, dict):
        return serialized
    config = serialized.get("config")
    if not isinstance(config, dict):
        return {"class_name": serialized.get("class_name"), "config": config}
    config = dict(config)
    config.pop("name", None)
    if not isinstance(config.get("learning_rate"), dict):
        config.pop("learning_rate", None)
    if isinstance(config.get("inner_optimizer"), dict):
        config["inner_optimizer"] = _comparable(config["inner_optimizer"])
    return {"class_name": serialized.get("class_name"), "config": config}


def _differences(saved, given, prefix="") -> list[str]:
    if not (isinstance(saved, dict) and isinstance(given, dict)):
        return [] if saved == given else [f"{prefix or 'value'}: saved {saved!r}, given {given!r}"]
    out = []
    for key in sorted(set(saved) | set(given), key=str):
        out += _differences(saved.get(key), given.get(key), f"{prefix}{key}.")
    return [d.replace(".:", ":") for d in out]


class _Reader:
    """Opens each shard file once; reads tensors checked against the manifest's CRC-32."""

    def __init__(self, folder: str):
        self.folder = folder
        self.files: dict[str, tuple] = {}
        self.cache: dict[tuple, np.ndarray] | None = None  # None: read without keeping

    def __call__(self, file: str, key: str, crc: int) -> np.ndarray:
        if self.cache is not None and (file, key) in self.cache:
            return self.cache[file, key]
        if file not in self.files:
            path = os.path.join(self.folder, file)
            try:
                f = open(path, "rb")  # noqa: SIM115 (closed in close())
            except FileNotFoundError as e:
                raise CheckpointError(
                    f"Shard file {path} listed in the manifest is missing: the checkpoint is "
                    "incomplete (a shard was removed or not copied)."
                ) from e
            self.files[file] = (f, path, *_safetensors.read_header(f, path))
        f, path, header, start = self.files[file]
        value = _safetensors.read(f, path, header, start, key, crc)
        if self.cache is not None:
            self.cache[file, key] = value
        return value

    def read_all(self, entries) -> None:
        """Reads and keeps every piece of `entries` (each is then checked before anything
        is built or assigned)."""
        self.cache = {} if self.cache is None else self.cache
        for e in entries:
            per_rank = e.get("per_rank")
            for pieces in per_rank["pieces"] if per_rank else [e["pieces"]]:
                for p in pieces:
                    self(p["file"], p["key"], p["crc32"])

    def close(self):
        for f, *_ in self.files.values():
            f.close()
        self.files.clear()


class Restore:
    def __init__(self, comm, folder, variables, optimizer, datasets):
        self.comm = comm
        self.folder = folder
        self.variables = variables
        self.optimizer = optimizer
        self.datasets = datasets
        self.values: list = []
        self.extras: dict = {}
        self.iterators: dict = {}

    def prepare(self) -> None:
        """Reads and checks the checkpoint against the targets; changes no value.

        (An unbuilt optimizer is built once the checkpoint's configuration and variables
        match, as `apply_gradients` would build it.)
        """
        from distopt.optimizers import serialize

        manifest = _manifest.load(os.path.join(self.folder, _manifest.NAME))
        opt = self.optimizer
        if manifest["optimizer"] is not None:
            given = json.loads(json.dumps(serialize(opt), default=repr))
            diff = _differences(_comparable(manifest["optimizer"]), _comparable(given))
            if diff:
                raise CheckpointError(
                    f"Checkpoint {self.folder} was saved with another optimizer configuration: "
                    + "; ".join(diff[:6])
                )
        targets = [(v.path, v.shape, v.dtype, False) for v in self.variables]
        _state.check_targets(manifest["variables"], targets, "variables")
        self.iterators = _extras.check_datasets(self.datasets, manifest["extras"])
        reader = _Reader(self.folder)
        try:
            if not opt.built:
                # Which parts this rank takes is known once built: read and check everything
                # first, so a damaged checkpoint leaves the optimizer unbuilt.
                arrays = [e for e in manifest["extras"].values() if e["kind"] == "array"]
                reader.read_all(manifest["variables"] + manifest["optimizer_variables"] + arrays)
                opt.build([v for v in self.variables if v.trainable])
            places = _placement.placements(opt)
            opt_vars = opt.variables
            targets = [
                (v.path, _state.full_shape(v, p), v.dtype, getattr(p, "placeholder_ok", False))
                for v, p in zip(opt_vars, places)
            ]
            _state.check_targets(manifest["optimizer_variables"], targets, "optimizer variables")
            for v, e in zip(self.variables, manifest["variables"]):
                self.values.append((v, _state.read_part(reader, e, 0, v.size)))
            rank, size = self.comm.rank, self.comm.size
            for v, p, e in zip(opt_vars, places, manifest["optimizer_variables"]):
                if e.get("per_rank") is not None:
                    saved = manifest["world_size"]
                    value = _state.read_per_rank(reader, e, rank, size, saved)
                    self.values.append((v, value))
                    continue
                part = _state.target_part(v, p)
                if part is not None:
                    self.values.append((v, _state.read_part(reader, e, *part)))
            self.extras = _extras.decode(
                manifest["extras"], lambda e, a, b: _state.read_part(reader, e, a, b)
            )
        finally:
            reader.close()

    def commit(self) -> dict:
        for v, value in self.values:
            v.value[...] = value.reshape(v.shape)
        for name, it in self.iterators.items():
            for _ in range(self.extras[name]):
                next(it)  # collective: the ranks agree on each step, as in training
            self.extras[name] = it
        return self.extras
