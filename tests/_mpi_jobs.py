"""Runs an MPI job as a subprocess and removes the shared-memory segments it leaves behind.

MPICH unlinks its segment files in `MPI_Finalize`; a job that ends in `MPI_Abort` (as the
abort tests' jobs do on purpose) leaves 1-4 MB per job in /dev/shm. While the job runs, the
files its processes map are recorded; afterwards exactly those, once unused, are removed.
Other jobs' files, even unused ones, are never touched.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

from distopt.launch import _shm_cleanup

_SHM = str(_shm_cleanup.SHM_DIR) + os.sep


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def mapped_segments(pids) -> set[str]:
    """Names of the MPI segment files in /dev/shm that `pids` have mapped."""
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    at = line.find(_SHM)
                    if at >= 0:
                        names.add(line[at + len(_SHM) :].split()[0])
        except OSError:
            continue
    return {n for n in names if n.startswith(_shm_cleanup._PREFIXES)}


def run_job(cmd, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)`,
    then removes the segments the job's processes mapped, once no process uses them."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )
    seen: set[str] = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.update(mapped_segments(_descendants(proc.pid)))
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        stop.set()
        watcher.join()
        remove_unused(seen)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def remove_unused(names: set[str], wait: float = 5.0) -> None:
    """Unlinks `names` from /dev/shm once no process maps or holds them (mpiexec can return
    while the ranks it killed are still exiting)."""
    deadline = time.monotonic() + wait
    left = set(names)
    while left:
        used = _shm_cleanup._in_use(_shm_cleanup.SHM_DIR)
        for name in sorted(left - used):
            try:
                (_shm_cleanup.SHM_DIR / name).unlink()
            except FileNotFoundError:
                pass
            left.discard(name)
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.05)
