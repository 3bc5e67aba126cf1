"""A container's small /dev/shm: jobs fall back to plain MPI instead of dying with SIGBUS,
and jobs that abort leave no segment behind. Each case runs a real `mpiexec` job; the
small /dev/shm is a 64 MB tmpfs in a private mount namespace (needs root and util-linux)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _mpi_jobs import run_job

from distopt.launch import _shm_cleanup

ROOT = Path(__file__).resolve().parent.parent
UNSHARE, MOUNT = Path("/usr/bin/unshare"), Path("/usr/bin/mount")
MPIEXEC = Path(sys.executable).parent / "mpiexec"

MODEL = """
import hashlib, sys
import numpy as np
import distopt
from distopt.distribute import MPIStrategy

strategy = MPIStrategy()
rank = strategy.communicator.rank
with strategy.scope():  # 10M float32 parameters
    variables = [distopt.Variable(np.zeros(2_500_000, np.float32)) for _ in range(4)]
    opt = distopt.optimizers.SGD(learning_rate=0.1)
rng = np.random.default_rng(rank)
for step in range(3):
    grads = [rng.standard_normal(v.shape).astype(np.float32) for v in variables]
    strategy.run(lambda: opt.apply_gradients(zip(grads, variables)))
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in variables)).hexdigest()
print(f"rank {rank} shared={strategy._reducer.shared_memory} digest {digest}", flush=True)
strategy.close()
"""


def _in_small_shm(cmd, env, timeout=300):
    """Runs `cmd` with a private 64 MB tmpfs on /dev/shm."""
    if os.geteuid() != 0 or not UNSHARE.exists() or not MOUNT.exists():
        pytest.skip("needs root and util-linux's unshare/mount for a private /dev/shm")
    inner = f'{MOUNT} -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"'
    full = [str(UNSHARE), "-m", "/bin/sh", "-c", inner, "sh", *cmd]
    return subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.timeout(600)
def test_ten_million_parameters_in_a_64_mb_dev_shm(tmp_path):
    script = tmp_path / "model.py"
    script.write_text(MODEL)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.pop("DISTOPT_SHARED_MEMORY", None)
    digests = {}
    for shared in ("auto", "0"):
        job_env = dict(env, DISTOPT_SHARED_MEMORY=shared) if shared == "0" else env
        proc = _in_small_shm([str(MPIEXEC), "-n", "2", sys.executable, str(script)], job_env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        # Ranks' lines may arrive interleaved on one line.
        found = re.findall(r"rank (\d) shared=(\w+) digest ([0-9a-f]{64})", proc.stdout)
        assert sorted(rank for rank, _, _ in found) == ["0", "1"], out
        digests[shared] = {digest for _, _, digest in found}
        if shared == "auto":
            # The shared-memory reducer still runs (small plans may use windows), one warning.
            assert all(flag == "True" for _, flag, _ in found), out
            assert out.count("RuntimeWarning") == 1, out
            assert "--shm-size=1g" in out and "DISTOPT_SHARED_MEMORY=0" in out, out
        else:
            assert "RuntimeWarning" not in out, out
    assert len(digests["auto"]) == 1 and digests["auto"] == digests["0"], digests


ABORTING = """
from mpi4py import MPI
import time
MPI.COMM_WORLD.Barrier()
time.sleep(0.5)
MPI.COMM_WORLD.Abort(3)
"""


@pytest.mark.timeout(120)
def test_an_aborted_job_leaves_no_segment_and_others_stay(tmp_path):
    """`run_job` (the abort tests' runner) removes exactly the segments of its own job."""
    if not _shm_cleanup.SHM_DIR.is_dir():
        pytest.skip("no /dev/shm")
    script = tmp_path / "abort.py"
    script.write_text(ABORTING)
    decoy = _shm_cleanup.SHM_DIR / f"mpich_shm_decoy_{os.getpid()}_0"
    decoy.write_bytes(b"another job's unused segment")
    try:
        before = _shm_cleanup.snapshot()
        proc = run_job([str(MPIEXEC), "-n", "2", sys.executable, str(script)], timeout=100)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        left = _shm_cleanup.snapshot() - before
        assert not left - _shm_cleanup._in_use(_shm_cleanup.SHM_DIR), left
        assert decoy.exists()
    finally:
        decoy.unlink()


def test_mapped_reads_this_process_maps(tmp_path):
    import mmap

    name = f"mpich_shm_probe_{os.getpid()}_0"
    path = _shm_cleanup.SHM_DIR / name
    if not _shm_cleanup.SHM_DIR.is_dir():
        pytest.skip("no /dev/shm")
    path.write_bytes(b"\0" * 4096)
    try:
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096):
            assert name in _shm_cleanup.mapped(os.getpid())
    finally:
        path.unlink()
