"""`CheckpointManager`: numbered checkpoints of variables, optimizer state and extras."""

from __future__ import annotations

import os
import re
import shutil
import uuid

from distopt.checkpoint import _collectives, _extras, _manifest, _placement, _safetensors, _state
from distopt.checkpoint._errors import CheckpointError
from distopt.checkpoint._restore import Restore

_STEP = re.compile(r"step_(\d{9,})")


class CheckpointManager:
    """Saves and restores numbered checkpoints in `directory`, keeping the newest
    `max_to_keep` (None: all).

    Each checkpoint is a folder `step_NNNNNNNNN` holding `manifest.json` and one
    safetensors shard per rank that held state to write. No pickle is used: loading a
    checkpoint never executes code. A checkpoint restores at any world size, with or
    without `shard_optimizer_state`. All ranks must see `directory` (a shared filesystem).

    Example:
        manager = CheckpointManager("ckpt")
        start = manager.restore(weights, optimizer)["epoch"] if manager.latest_step() else 0
        ...
        manager.save(step, weights, optimizer, extras={"epoch": epoch})
    """

    def __init__(self, directory, max_to_keep: int | None = 3):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(
                f"Argument `directory` must be a path. Received: directory={directory!r}"
            )
        if max_to_keep is not None and (
            not isinstance(max_to_keep, int) or isinstance(max_to_keep, bool) or max_to_keep < 1
        ):
            raise ValueError(
                "Argument `max_to_keep` must be an integer >= 1 or None (keep all). "
                f"Received: max_to_keep={max_to_keep!r}"
            )
        self.directory = os.fspath(directory)
        self.max_to_keep = max_to_keep

    # -- listing --------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints in `directory`, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        steps = []
        for name in names:
            m = _STEP.fullmatch(name)
            if m and os.path.exists(os.path.join(self.directory, name, _manifest.NAME)):
                steps.append(int(m.group(1)))
        return sorted(steps)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _path(self, step: int) -> str:
        return os.path.join(self.directory, f"step_{step:09d}")

    # -- save -----------------------------------------------------------------------------
    def save(self, step: int, variables, optimizer, extras: dict | None = None) -> str:
        """Writes checkpoint `step` of `variables`, `optimizer`'s state and `extras`.

        `extras` maps names to numeric arrays, JSON values (numbers, strings, lists, dicts,
        e.g. an RNG state) or iterators of a distopt distributed dataset (their position is
        saved). The checkpoint becomes visible only once complete (written to a temporary
        folder, fsynced, renamed); the oldest beyond `max_to_keep` are then removed. An
        unbuilt optimizer is built for the trainable `variables` first. Returns its folder.

        Collective: call on all ranks, in the same order.
        """
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"Argument `step` must be an integer >= 0. Received: step={step!r}")
        variables = _collectives.check_variables(variables)
        comm = _collectives.Collectives(optimizer, f"save of checkpoint {step}", variables)
        encoded = _extras.encode(extras)  # raises before anything is written
        if not optimizer.built:
            optimizer.build([v for v in variables if v.trainable])
        places = _placement.placements(optimizer)
        opt_vars = optimizer.variables
        error, tmp = None, None
        if comm.rank == 0:
            try:
                tmp = self._begin(step)
            except (OSError, CheckpointError) as e:
                error = f"Cannot write checkpoint {step} in {self.directory}: {e}"
        shapes = [list(v.shape) for v in opt_vars]
        first = _collectives.agree(comm, error, {"tmp": tmp, "shapes": shapes})
        tmp = first[0]["tmp"]
        shapes_by_rank = [p["shapes"] for p in first]
        srcs = _state.sources(places, shapes_by_rank)
        # A whole tensor's shape is its writer's (a per-tensor ZeRO-1 owner's, not a
        # placeholder's); a part's is its variable's.
        shapes = [
            shapes_by_rank[src][k] if src is not None else _state.full_shape(v, p)
            for k, (v, p, src) in enumerate(zip(opt_vars, places, srcs))
        ]
        tensors, pieces = {}, {}
        if comm.rank == 0:
            for i, v in enumerate(variables):
                tensors[f"v{i}"] = v.value
                pieces[f"v{i}"] = (0, v.size)
            for j, arr in encoded.arrays.items():
                tensors[j] = arr
                pieces[j] = (0, arr.size)
        for k, (v, place, src) in enumerate(zip(opt_vars, places, srcs)):
            if src == comm.rank:
                tensors[f"o{k}"], pieces[f"o{k}"] = v.value, (0, v.size)
            elif isinstance(place, _placement.PerRank) and v.size:
                tensors[f"o{k}"], pieces[f"o{k}"] = v.value, (0, v.size)
            elif isinstance(place, _placement.Elements) and place.stop > place.start:
                tensors[f"o{k}"], pieces[f"o{k}"] = v.value, (place.start, place.stop)
        error, written = None, {}
        if tensors:
            try:
                name = _manifest.shard_name(comm.rank)
                crcs = _safetensors.write(os.path.join(tmp, name), tensors)
                written = {key: [name, *pieces[key], crcs[key]] for key in tensors}
            except (OSError, CheckpointError) as e:
                error = f"Cannot write a checkpoint shard in {tmp}: {e}"
        try:
            everyone = _collectives.agree(comm, error, written)
        except CheckpointError:
            if comm.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        error, final = None, None
        if comm.rank == 0:
            try:
                manifest = _manifest.build(step, comm.size, variables, optimizer, encoded,
                                           opt_vars, places, shapes, everyone)  # fmt: skip
                final = self._commit(tmp, step, manifest)
            except (OSError, CheckpointError, ValueError) as e:
                shutil.rmtree(tmp, ignore_errors=True)
                error = f"Cannot complete checkpoint {step} in {self.directory}: {e}"
        return _collectives.agree(comm, error, final)[0]

    def _begin(self, step: int) -> str:
        os.makedirs(self.directory, exist_ok=True)
        if os.path.exists(self._path(step)):
            raise CheckpointError(
                f"checkpoint step {step} already exists ({self._path(step)}). Save under a new "
                "step number, or remove it first."
            )
        for name in os.listdir(self.directory):  # left by a save that was killed
            if name.startswith(".tmp-step_"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        tmp = os.path.join(self.directory, f".tmp-step_{step:09d}-{uuid.uuid4().hex[:8]}")
        os.mkdir(tmp)
        return tmp

    def _commit(self, tmp: str, step: int, manifest: dict) -> str:
        _manifest.write(tmp, manifest)
        _fsync_dir(tmp)
        final = self._path(step)
        os.rename(tmp, final)
        _fsync_dir(self.directory)
        if self.max_to_keep is not None:
            for old in self.all_steps()[: -self.max_to_keep]:
                # Renamed away first: a half-removed checkpoint never looks complete. A
                # failure here leaves an old checkpoint, not a failed save.
                doomed = os.path.join(self.directory, f".tmp-step_{old:09d}-{uuid.uuid4().hex}")
                try:
                    os.rename(self._path(old), doomed)
                except OSError:
                    continue
                shutil.rmtree(doomed, ignore_errors=True)
        return final

    # -- restore --------------------------------------------------------------------------
    def restore(self, variables, optimizer, step: int | None = None, datasets=None) -> dict:
        """Loads checkpoint `step` (the newest when None) into `variables` and `optimizer`.

        Returns the saved extras. `datasets` maps extras names saved from dataset iterators
        to fresh iterators of the same distributed dataset; each is advanced to the saved
        position and returned under its name (without it, the name gives the position, a
        number of steps). An unbuilt optimizer is built for the trainable `variables` first.
        On any mismatch or damage, CheckpointError on every rank and nothing is changed.

        Collective: call on all ranks, in the same order.
        """
        variables = _collectives.check_variables(variables)
        comm = _collectives.Collectives(optimizer, "restore", variables)
        error, chosen = None, None
        if comm.rank == 0:
            chosen = self.latest_step() if step is None else step
            if chosen is None:
                error = f"No checkpoint to restore in {self.directory}."
            elif not isinstance(chosen, int) or isinstance(chosen, bool) or chosen < 0:
                error = f"Argument `step` must be an integer >= 0 or None. Received: {step!r}"
        chosen = _collectives.agree(comm, error, chosen)[0]
        job = Restore(comm.comm, self._path(chosen), variables, optimizer, datasets)
        error = None
        try:
            job.prepare()
        except (CheckpointError, OSError) as e:
            error = str(e)
        _collectives.agree(comm, error)
        return job.commit()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
