"""Checkpoint save and restore of ResNet-50-sized Adam state against numpy.save / numpy.load.

    python benchmarks/checkpoint.py [--repeats 7] [--dir /tmp]

25.6M float32 parameters in ResNet-50's 161 tensors, Adam built (parameters, momentum and
velocity: 307 MB). Rows, timed in turn within every repeat:
- `CheckpointManager.save` (safetensors shard + CRC-32 per tensor + manifest, fsynced,
  renamed; the previous checkpoint removed past `max_to_keep=2`) against `numpy.save` of the
  same arrays, one `.npy` each, with and without an fsync of each file;
- `CheckpointManager.restore` into the built optimizer and into a fresh unbuilt one (which
  reads and checks everything before building) against `numpy.load` of those files.
The target is within 1.5x of the baseline of the same durability.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tempfile

import numpy as np
from _common import Table, emit, interleaved_ms, resnet50_sizes

import distopt
from distopt.checkpoint import CheckpointManager


def _model(sizes):
    rng = np.random.default_rng(0)
    weights = [distopt.Variable(rng.standard_normal(n, dtype=np.float32)) for n in sizes]
    optimizer = distopt.optimizers.Adam(1e-3)
    optimizer.apply_gradients(zip([np.full(n, 1e-3, np.float32) for n in sizes], weights))
    return weights, optimizer


def _numpy_save(folder, arrays, fsync):
    for i, a in enumerate(arrays):
        path = os.path.join(folder, f"{i}.npy")
        with open(path, "wb") as f:
            np.save(f, a)
            if fsync:
                f.flush()
                os.fsync(f.fileno())


def _numpy_load(folder, count):
    return [np.load(os.path.join(folder, f"{i}.npy")) for i in range(count)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--params", type=int, default=25_600_000)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    args = parser.parse_args()
    sizes = resnet50_sizes(args.params)
    weights, optimizer = _model(sizes)
    arrays = [w.value for w in weights] + [v.value for v in optimizer.variables]
    nbytes = sum(a.nbytes for a in arrays)
    root = tempfile.mkdtemp(prefix="distopt-bench-", dir=args.dir)
    try:
        manager = CheckpointManager(os.path.join(root, "ckpt"), max_to_keep=2)
        steps = itertools.count()
        plain = os.path.join(root, "npy")
        os.mkdir(plain)
        manager.save(next(steps), weights, optimizer)
        _numpy_save(plain, arrays, fsync=True)
        fresh = []

        def restore_fresh():
            distopt.utils.clear_session()
            fresh[:] = [[distopt.Variable(np.zeros(n, np.float32)) for n in sizes]]
            manager.restore(fresh[0], distopt.optimizers.Adam(1e-3))

        saves = interleaved_ms(
            {
                "save": lambda: manager.save(next(steps), weights, optimizer),
                "npy_fsync": lambda: _numpy_save(plain, arrays, fsync=True),
                "npy": lambda: _numpy_save(plain, arrays, fsync=False),
            },
            args.repeats,
            warmup=1,
        )
        loads = interleaved_ms(
            {
                "restore": lambda: manager.restore(weights, optimizer),
                "restore_fresh": restore_fresh,
                "npy_load": lambda: _numpy_load(plain, len(arrays)),
            },
            args.repeats,
            warmup=1,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mb = nbytes / 2**20
    save = Table(f"Checkpoint save, Adam, {args.params / 1e6:.1f}M float32 ({mb:.0f} MB)",
                 "numpy.save + fsync")  # fmt: skip
    save.add("numpy.save + fsync, one .npy per array", saves["npy_fsync"], saves["npy_fsync"])
    save.add("numpy.save, no fsync", saves["npy"], saves["npy_fsync"])
    save.add("CheckpointManager.save", saves["save"], saves["npy_fsync"], "target <= 1.5x")
    load = Table("Checkpoint restore, same state", "numpy.load")
    load.add("numpy.load of the .npy files", loads["npy_load"], loads["npy_load"])
    load.add("restore into the built optimizer", loads["restore"], loads["npy_load"],
             "target <= 1.5x")  # fmt: skip
    load.add("restore into a fresh optimizer", loads["restore_fresh"], loads["npy_load"],
             "builds it too")  # fmt: skip
    emit([save, load], f"checkpoint (median of {args.repeats}, timed in turn)")


if __name__ == "__main__":
    main()
