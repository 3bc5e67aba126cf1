"""Runs an MPI job as a subprocess and removes the shared-memory segments it leaves behind.

MPICH unlinks its segment files in `MPI_Finalize`; a job that ends in `MPI_Abort` (as the
abort tests' jobs do on purpose) leaves 1-4 MB per job in /dev/shm. While the job runs,
`distoptrun`'s own `JobWatch` records the files its processes map; afterwards exactly those,
once unused, are removed. Other jobs' files, even unused ones, are never touched.
"""

from __future__ import annotations

import subprocess

from distopt.launch import _shm_cleanup
from distopt.launch._procs import JobWatch


def run_job(cmd, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)`,
    then removes the segments the job's processes mapped, once no process uses them."""
    before = _shm_cleanup.snapshot()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )
    watch = JobWatch(proc.pid, interval=0.02)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        watch.stop()
        # mpiexec can return while the ranks it killed are still exiting
        _shm_cleanup.remove_leftovers(before, wait=5.0, ours=watch.segments)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
