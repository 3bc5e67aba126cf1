"""Runs tests/_keras_worker.py scenarios under a real mpiexec (helpers for test_keras_*)."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _mpi_jobs import run_job

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_keras_worker.py"
BACKENDS = ("torch", "jax", "tensorflow")
DEADLINE = 90  # seconds: the collective deadline inside the jobs
JOB_TIMEOUT = 240


def backend_params():
    """One pytest param per backend, skipped when keras or the backend is not installed."""
    out = []
    for name in BACKENDS:
        missing = [m for m in ("keras", name) if importlib.util.find_spec(m) is None]
        mark = pytest.mark.skipif(bool(missing), reason=f"not installed: {missing}")
        out.append(pytest.param(name, marks=mark))
    return out


def mpiexec() -> str:
    return str(Path(sys.executable).parent / "mpiexec")


def run(backend: str, ranks: int, *args, timeout: float = JOB_TIMEOUT):
    """`mpiexec -n ranks python _keras_worker.py args` (plain python for ranks=0)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_ENABLE_X64="1", PYTHONUNBUFFERED="1",
               JAX_PLATFORMS="cpu", PYTHONPATH=path)  # fmt: skip
    env["DISTOPT_COLLECTIVE_TIMEOUT"] = str(DEADLINE)
    cmd = [sys.executable, str(WORKER), *map(str, args)]
    if ranks:
        # Hydra's per-rank statuses: its own exit status ORs them, so one rank killed by a
        # signal hides which rank failed and how.
        cmd = [mpiexec(), "-print-all-exitcodes", "-n", str(ranks), *cmd]
    start = time.monotonic()
    proc = run_job(cmd, timeout, env=env, cwd=ROOT)  # and the segments an aborted job leaves
    proc.elapsed = time.monotonic() - start
    return proc


def check(proc) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )


def load(directory: Path, name: str, rank: int) -> dict:
    with np.load(directory / f"{name}-rank{rank}.npz") as f:
        return {k: f[k] for k in f.files}
