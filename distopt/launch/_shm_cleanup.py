"""Removes the shared-memory segments an aborted MPI job leaves in /dev/shm.

MPICH keeps each job's segment file until `MPI_Finalize`; a job that ends in `MPI_Abort`
(which distopt uses so a failing rank never leaves the others waiting) leaves it behind,
2-4 MB of RAM each until reboot. A container's /dev/shm is often 64 MB, so a few dozen
aborted jobs would make the next job fail to start. Only files that appeared during the
job, belong to this user, carry an MPI segment name, that no process has open or mapped,
and, when the caller knows them, that the job's own processes had mapped (`ours`) are
removed: another job's files look just as unused from a separate PID namespace sharing
/dev/shm.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
# MPICH (ch4 shm, windows) and Open MPI (vader / sm BTL) segment names.
_PREFIXES = ("mpich_shm_", "vader_segment.", "sm_segment.")


def snapshot(directory: Path = SHM_DIR) -> set[str]:
    """Names of the MPI segment files in `directory` now (empty if it does not exist)."""
    try:
        return {n for n in os.listdir(directory) if n.startswith(_PREFIXES)}
    except OSError:
        return set()


def _files_of(pid: str, directory: Path) -> set[str]:
    """Names in `directory` that process `pid` has mapped or open (empty if unreadable)."""
    names, prefix = set(), str(directory) + os.sep
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                at = line.find(prefix)
                if at >= 0:
                    names.add(line[at + len(prefix) :].split()[0])
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(prefix):
                names.add(target[len(prefix) :].split()[0])
    except OSError:  # gone, or another user's (which cannot open our 0600 files)
        pass
    return names


def mapped(pid: int, directory: Path = SHM_DIR) -> set[str]:
    """The MPI segment files in `directory` that process `pid` has mapped or open."""
    return {n for n in _files_of(str(pid), directory) if n.startswith(_PREFIXES)}


def _in_use(directory: Path) -> set[str]:
    """Names in `directory` that some process we can see has open or mapped."""
    used = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            used |= _files_of(pid, directory)
    return used


def recent(max_age: float, directory: Path = SHM_DIR) -> set[str]:
    """Names of the MPI segment files in `directory` modified in the last `max_age` s."""
    now, found = time.time(), set()
    for name in snapshot(directory):
        try:
            if now - (directory / name).lstat().st_mtime <= max_age:
                found.add(name)
        except OSError:
            continue
    return found


def remove_leftovers(
    before: set[str],
    directory: Path = SHM_DIR,
    wait: float = 2.0,
    ours: set[str] | None = None,
    new: set[str] | None = None,
) -> tuple[int, int]:
    """Removes the segments that appeared since `before` (or the names `new`), and are in
    `ours` if given, and are unused; returns (files, bytes) removed. Waits up to `wait`
    seconds for segments still mapped: mpiexec can return while the processes it killed are
    still exiting."""
    new = snapshot(directory) - before if new is None else new
    if ours is not None:
        new &= ours
    if not new:
        return 0, 0
    deadline = time.monotonic() + wait
    used = _in_use(directory) & new
    while used and time.monotonic() < deadline:
        time.sleep(0.05)
        used = _in_use(directory) & new
    files = size = 0
    uid = os.getuid()
    for name in sorted(new - used):
        path = directory / name
        try:
            st = path.lstat()
            if st.st_uid != uid or not path.is_file() or path.is_symlink():
                continue
            path.unlink()
        except OSError:
            continue
        files, size = files + 1, size + st.st_size
    return files, size


def main(argv: list[str] | None = None) -> int:
    """`python -m distopt.launch._shm_cleanup --max-age S`: what distoptrun runs over ssh on
    the other hosts of a job, or srun on every node of its Slurm allocation (their segments
    cannot be listed before it started)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m distopt.launch._shm_cleanup")
    p.add_argument("--max-age", type=float, required=True, help="seconds since the job began")
    p.add_argument("--name-host", action="store_true", help="begin the report with the host")
    args = p.parse_args(argv)
    files, size = remove_leftovers(set(), SHM_DIR, new=recent(args.max_age, SHM_DIR))
    if files:
        host = f"{socket.gethostname()}: " if args.name_host else ""
        mb = size / 2**20
        print(f"{host}removed {files} shared-memory segment(s) ({mb:.1f} MB) from {SHM_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
