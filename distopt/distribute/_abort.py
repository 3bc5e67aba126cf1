"""Abort on failure: an unhandled exception on one rank ends the whole MPI job.

`MPIStrategy` installs `install_excepthook()` so that `mpiexec -n N python script.py` behaves
like `distoptrun`: the failing rank prints its traceback and calls MPI_Abort, instead of
exiting alone while its peers wait in a collective forever.
"""

from __future__ import annotations

import sys
import threading
import time

ABORT_EXIT_CODE = 1
# mpiexec (Hydra) forwards each rank's output asynchronously and stops forwarding once it
# handles an abort: give it this long to pass the traceback on first.
OUTPUT_GRACE = 0.5
_lock = threading.Lock()
_installed: list = []


def flush_output() -> None:
    """Flushes stdout/stderr and waits `OUTPUT_GRACE` s so mpiexec forwards them."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - a closed stream must not block the abort
            pass
    time.sleep(OUTPUT_GRACE)


def _abort_world(code: int) -> None:
    from mpi4py import MPI

    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.COMM_WORLD.Abort(code)


def _hook(previous):
    def excepthook(exc_type, exc, tb):
        try:
            from mpi4py import MPI

            rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
            sys.stderr.write(
                f"distopt: unhandled {exc_type.__name__} on rank {rank} of {size}; aborting "
                "the job (MPI_Abort) so that no rank waits forever. Traceback:\n"
            )
            previous(exc_type, exc, tb)
        finally:
            flush_output()
            _abort_world(ABORT_EXIT_CODE)

    excepthook._distopt = True
    return excepthook


def install_excepthook() -> None:
    """Makes an unhandled exception in the main thread abort the MPI job (once per process).

    Uncaught exceptions in other threads only end their thread, as in plain Python; they do
    not abort the job.
    """
    with _lock:
        if getattr(sys.excepthook, "_distopt", False):
            return
        previous = sys.excepthook
        sys.excepthook = _hook(previous)
        _installed.append(previous)
