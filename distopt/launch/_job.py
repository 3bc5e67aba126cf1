"""Runs `distoptrun`'s mpiexec child: signals reach every rank, the job's segments go.

mpiexec (MPICH's Hydra) starts every rank in a session of its own, so a signal to the
launcher's process group never reaches them, and a launcher that dies leaves them training.
`run()` starts mpiexec in a new session too (a terminal's Ctrl-C then reaches distoptrun
alone, which forwards it once), forwards SIGTERM, SIGINT and SIGHUP to mpiexec, which ends
the ranks, and `grace` seconds later SIGKILLs every process of the job still alive: the
descendants of mpiexec that a watcher thread has seen (MPI's proxies and the ranks), checked
by start time so a reused pid is never hit. It returns 128 + the signal number. Whatever the
end, it then removes the MPI segments the job's own processes had mapped (`_shm_cleanup`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

from distopt.launch import _shm_cleanup, _startup
from distopt.launch._procs import JobWatch

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
GRACE = 5.0  # seconds between forwarding a signal and SIGKILL
EXIT_WAIT = 10.0  # seconds to wait for the job's processes to be gone before cleaning up


def exit_status(returncode: int) -> int:
    """A shell's exit status for a child's `returncode` (negative: killed by that signal)."""
    return 128 - returncode if returncode < 0 else min(returncode, 255)


def run(cmd: list[str], env: dict, grace: float = GRACE, startup=None) -> int:
    """Runs `cmd` (an mpiexec argv) to its end; returns distoptrun's exit status. With a
    `startup` watch, a job whose ranks have not all started by its deadline is ended as on a
    signal (SIGTERM, then SIGKILL after `grace`) and returns `_startup.EXIT_NOT_STARTED`."""
    before = _shm_cleanup.snapshot()
    received: list[int] = []
    first = [0.0]
    child: list[subprocess.Popen] = []

    def on_signal(signum, _frame):
        if not received:
            first[0] = time.monotonic()
        received.append(signum)
        _forward(child, signum)

    main = threading.current_thread() is threading.main_thread()  # else Python cannot
    # Handlers first: a signal that comes while mpiexec starts is forwarded once it exists.
    previous = {s: signal.signal(s, on_signal) for s in FORWARDED} if main else {}
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    except BaseException:
        _restore(previous)
        raise
    child.append(proc)
    if received:
        _forward(child, received[0])
    watch = JobWatch(proc.pid)
    killed = False
    not_started = False
    try:
        while proc.poll() is None:
            time.sleep(0.05)
            if startup is not None and not received and startup.overdue():
                print(startup.missing_message(), file=sys.stderr, flush=True)
                not_started = True
                on_signal(signal.SIGTERM, None)
            if received and not killed and time.monotonic() - first[0] > grace:
                watch.kill_all()
                killed = True
        # mpiexec may return before its ranks (or, after a signal, without ending them).
        wait = max(0.0, first[0] + grace - time.monotonic()) if received else EXIT_WAIT
        if not watch.wait_gone(wait) and received:
            watch.kill_all()
            watch.wait_gone(EXIT_WAIT)
    finally:
        _restore(previous)
        watch.stop()
        _remove_segments(watch, before)
    if not_started:
        return _startup.EXIT_NOT_STARTED
    return 128 + received[0] if received else exit_status(proc.returncode)


def _forward(child: list, signum: int) -> None:
    if child:
        try:
            child[0].send_signal(signum)
        except OSError:  # already gone
            pass


def _restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _remove_segments(watch: JobWatch, before: set[str]) -> None:
    files, size = _shm_cleanup.remove_leftovers(before, ours=watch.segments)
    if files:
        print(
            f"distoptrun: removed {files} shared-memory segment(s) ({size / 2**20:.1f} MB) "
            f"that the job's MPI left in {_shm_cleanup.SHM_DIR}.",
            file=sys.stderr,
        )
