"""The processes of one job, as seen from its launcher: mpiexec and all its descendants.

A watcher thread records every descendant of mpiexec it sees (with its start time, so that a
pid the kernel reuses later is never mistaken for the job's) and the MPI segment files they
map, so that the launcher can end them all and remove only the files its own job made.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from distopt.launch import _shm_cleanup

FAST_SCAN = 0.05  # seconds between scans while the job starts (when MPI makes its segments)
SLOW_SCAN = 0.5
FAST_PERIOD = 5.0


def start_time(pid: int) -> int | None:
    """The start time of `pid` (clock ticks after boot), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def children(pid: int) -> set[int]:
    """The direct children of `pid`."""
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.update(int(c) for c in f.read().split())
        except OSError:  # no such file without CONFIG_PROC_CHILDREN: scan every process
            return _children_by_scan(pid)
    return found


def _children_by_scan(parent: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rpartition(")")[2].split()[1]) == parent:
                        found.add(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def descendants(root: int) -> set[int]:
    """`root`'s children, their children, and so on."""
    found, todo = set(), [root]
    while todo:
        for child in children(todo.pop()) - found:
            found.add(child)
            todo.append(child)
    return found


class JobWatch:
    """Watches the process tree under `root` (mpiexec's pid) from a daemon thread."""

    def __init__(self, root: int, interval: float | None = None):
        self.root = root
        self._interval = interval  # None: fast while the job starts, then slow
        self.seen: dict[int, int] = {}  # pid -> start time
        self._root_start = start_time(root)
        self.segments: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distoptrun-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        begin = time.monotonic()
        while True:
            self.scan()
            fast = time.monotonic() - begin < FAST_PERIOD
            interval = self._interval or (FAST_SCAN if fast else SLOW_SCAN)
            if self._stop.wait(interval):
                return

    def alive(self) -> list[int]:
        """The recorded processes still running (same pid and start time)."""
        with self._lock:
            seen = dict(self.seen)
        return [pid for pid, start in seen.items() if start_time(pid) == start]

    def scan(self) -> None:
        """Records the current descendants of `root` and the MPI segments they map."""
        pids = set(self.alive())
        if self._root_start is not None and start_time(self.root) == self._root_start:
            pids.add(self.root)  # until reaped: after that its pid may be another process's
        for pid in list(pids):
            pids |= descendants(pid)
        for pid in pids:
            start = start_time(pid)
            if start is None:
                continue
            mapped = _shm_cleanup.mapped(pid)
            with self._lock:
                self.seen[pid] = start
                self.segments |= mapped

    def kill_all(self) -> None:
        """SIGKILLs every recorded process of the job still alive."""
        self.scan()
        for pid in self.alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue

    def wait_gone(self, timeout: float) -> bool:
        """Waits up to `timeout` s for every recorded process to end; True if they all did."""
        end = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= end:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.scan()
