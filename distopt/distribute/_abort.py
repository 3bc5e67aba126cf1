"""Abort on failure: an unhandled exception on one rank ends the whole MPI job.

`install_excepthook()` makes `mpiexec -n N python script.py` behave like `distoptrun`: the
failing rank prints its traceback and calls MPI_Abort, instead of exiting alone while its
peers wait in a collective forever. `install_for_launcher()`, run at `import distopt` under an
MPI launcher with several ranks, installs it from then on (not only once an `MPIStrategy`
exists) and tells the other ranks when this one exits (`_departure.py`).
"""

from __future__ import annotations

import atexit
import sys
import threading
import time

from distopt.collectives import _departure

ABORT_EXIT_CODE = 1
# mpiexec (Hydra) forwards each rank's output asynchronously and stops forwarding once it
# handles an abort: give it this long to pass the traceback on first.
OUTPUT_GRACE = 0.5
_lock = threading.Lock()
_installed: list = []
_installed_for: set[str] = set()


def flush_output() -> None:
    """Flushes stdout/stderr and waits `OUTPUT_GRACE` s so mpiexec forwards them."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - a closed stream must not block the abort
            pass
    time.sleep(OUTPUT_GRACE)


def _abort_world(code: int) -> None:
    # Initialises MPI if this rank never did: its peers may be waiting for it in MPI_Init.
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


def _announce_exit() -> None:
    try:
        # Initialises MPI if this rank never did: peers wait in MPI_Init until every rank
        # has joined, and would then wait for this one in their strategy's creation.
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized():
            _departure.announce_exit(MPI.COMM_WORLD)
            _departure.linger(MPI.COMM_WORLD)
    except Exception:  # noqa: BLE001, S110 - exiting anyway; a missing notice costs the deadline
        pass


def install_for_launcher() -> None:
    """Under an MPI launcher with several ranks: abort-on-exception from now on, and an exit
    notice to the other ranks when this one exits (once per process; nothing otherwise)."""
    with _lock:
        if _departure.launcher_size() < 2 or "announce" in _installed_for:
            return
        _installed_for.add("announce")
        atexit.register(_announce_exit)
    install_excepthook()
