"""The `distoptrun` command line: builds an mpiexec argv (a list, never a shell string)."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from distopt.launch import _job, _restarts

_RUNNER = ["-m", "distopt.launch._runner"]


def find_mpiexec(explicit: str | None = None) -> str:
    """`explicit`, else the `mpiexec` beside this Python (its environment's MPI), else PATH."""
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise SystemExit(
            "distoptrun: no `mpiexec` found beside this Python or on PATH. Install an MPI, e.g. "
            "`pip install mpich mpi4py`, or pass --mpiexec PATH."
        )
    return found


def mpi_vendor(mpiexec: str) -> str:
    """'openmpi', 'mpich' or 'unknown', from `mpiexec --version`."""
    try:
        out = subprocess.run(
            [mpiexec, "--version"], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "Open MPI" in out or "OpenRTE" in out or "prterun" in out.lower():
        return "openmpi"
    if "HYDRA" in out or "MPICH" in out or "Intel(R) MPI" in out:
        return "mpich"
    return "unknown"


def _program_argv(program: list[str], module: str | None) -> list[str]:
    """The per-rank argv: Python programs go through the abort-on-exception runner."""
    if module is not None:
        return [sys.executable, *_RUNNER, "-m", module, *program]
    if not program:
        raise SystemExit("distoptrun: give a script, `-m module`, or a command to run.")
    first = program[0]
    if Path(first).name.startswith("python"):
        interpreter = sys.executable if Path(first).name in ("python", "python3") else first
        return [interpreter, *_RUNNER, *program[1:]]
    if first.endswith(".py"):
        return [sys.executable, *_RUNNER, *program]
    return list(program)


def build_command(
    np_: int,
    program: list[str],
    module: str | None = None,
    mpiexec: str | None = None,
    hostfile: str | None = None,
    extra_mpi_args: list[str] | None = None,
    vendor: str | None = None,
) -> list[str]:
    """The full mpiexec argv for `np_` ranks running `program` (or `-m module`)."""
    if not isinstance(np_, int) or np_ < 1:
        raise SystemExit(f"distoptrun: -np must be a positive integer. Received: {np_!r}")
    exe = find_mpiexec(mpiexec)
    vendor = vendor or mpi_vendor(exe)
    cmd = [exe, "-n", str(np_)]
    if vendor == "openmpi":
        cmd += ["--oversubscribe"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
    if hostfile:
        cmd += ["-f" if vendor == "mpich" else "--hostfile", hostfile]
    cmd += list(extra_mpi_args or [])
    return cmd + _program_argv(program, module)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distoptrun",
        description="Run a Python program on N MPI ranks; an exception on any rank ends the job.",
    )
    p.add_argument("-np", "-n", dest="np", type=int, required=True, help="number of ranks")
    p.add_argument("-m", dest="module", help="run a module, as `python -m`")
    p.add_argument("--hostfile", help="hosts to run on (MPICH -f / Open MPI --hostfile)")
    p.add_argument("--mpiexec", help="the mpiexec to use (default: beside this Python, then PATH)")
    p.add_argument("--mpi-args", default="", help="extra mpiexec arguments, e.g. '-bind-to core'")
    p.add_argument("--dry-run", action="store_true", help="print the mpiexec command and exit")
    p.add_argument(
        "--restarts", type=int, default=0,
        help="relaunch a failed job up to N times (it resumes from its newest checkpoint)",
    )  # fmt: skip
    p.add_argument("program", nargs=argparse.REMAINDER, help="script.py [args] or a command")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _restarts.check_restarts(args.restarts)
    cmd = build_command(
        args.np, args.program, args.module, args.mpiexec, args.hostfile,
        shlex.split(args.mpi_args),
    )  # fmt: skip
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return _restarts.run_with_restarts(lambda e: _job.run(cmd, e), env, args.restarts)
