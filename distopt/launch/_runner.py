"""Per-rank entry point: runs a script, module or `-c` code; any failure aborts the job.

python -m distopt.launch._runner script.py [args]
python -m distopt.launch._runner -m module [args]
python -m distopt.launch._runner -c "code" [args]
"""

from __future__ import annotations

import os
import runpy
import sys
import time
import traceback

from distopt.launch import _startup


def _abort(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.5)  # mpiexec stops forwarding output once it handles the abort
    try:
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized():
            MPI.COMM_WORLD.Abort(code)
    finally:
        os._exit(code)


def exit_status(code: int) -> int:
    """`sys.exit(code)`'s failure as a status in 1-255: MPI_Abort and the OS keep only 8 bits,
    so 256 would otherwise end the job with 0, as a success."""
    return min(max(code, 1), 255)


def _rank() -> str:
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if var in os.environ:
            return os.environ[var]
    return "?"


def _run(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m distopt.launch._runner script.py | -m mod | -c code")
    if argv[0] == "-m":
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


def main() -> None:
    try:
        _startup.report()
        _run(sys.argv[1:])
    except SystemExit as e:
        code = e.code
        if code in (None, 0):
            return
        if not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        status = exit_status(code)
        also = "" if status == code else f" (exit status {status}: MPI keeps 8 bits, 1-255)"
        print(f"distoptrun: rank {_rank()} exited with status {code}; aborting the job{also}.",
              file=sys.stderr)  # fmt: skip
        _abort(status)
    except BaseException:
        print(f"distoptrun: unhandled exception on rank {_rank()}; aborting the job.",
              file=sys.stderr)  # fmt: skip
        traceback.print_exc()
        _abort(1)


if __name__ == "__main__":
    main()
