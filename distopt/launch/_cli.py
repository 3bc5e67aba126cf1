"""The `distoptrun` command line: builds an mpiexec argv (a list, never a shell string)."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from distopt.launch import _job, _remote, _restarts, _startup
from distopt.launch._hosts import HostOptions, parse_env, parse_hosts, placement

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
    hosts: HostOptions | None = None,
) -> list[str]:
    """The full mpiexec argv for `np_` ranks running `program` (or `-m module`). With ssh
    options and MPICH, the argv starts with `env HYDRA_LAUNCHER_EXTRA_ARGS=...`."""
    if not isinstance(np_, int) or np_ < 1:
        raise SystemExit(f"distoptrun: -np must be a positive integer. Received: {np_!r}")
    hosts = hosts or HostOptions(hostfile=hostfile)
    exe = find_mpiexec(mpiexec)
    vendor = vendor or mpi_vendor(exe)
    cmd = [exe, "-n", str(np_)]
    if vendor == "openmpi":
        cmd += ["--oversubscribe"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
    host_args, launcher_env = hosts.mpi_args(vendor)
    cmd += host_args + list(extra_mpi_args or [])
    prefix = ["env", *(f"{k}={v}" for k, v in launcher_env.items())] if launcher_env else []
    return prefix + cmd + _program_argv(program, module)


def _host_options(args: argparse.Namespace) -> HostOptions:
    return HostOptions(
        hosts=parse_hosts(args.hosts) if args.hosts is not None else [],
        hostfile=args.hostfile,
        ssh_port=args.ssh_port,
        ssh_identity=args.ssh_identity,
        iface=args.iface,
        env=parse_env(args.env, dict(os.environ)),
    )


def _start_timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(
            f"expected seconds >= 0 (0 turns the deadline off). Received: {value!r}"
        )
    return seconds


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distoptrun",
        description="Run a Python program on N MPI ranks; an exception on any rank ends the job.",
    )
    p.add_argument("-np", "-n", dest="np", type=int, required=True, help="number of ranks")
    p.add_argument("-m", dest="module", help="run a module, as `python -m`")
    p.add_argument("-H", "--hosts", help="hosts and slots, e.g. node1:2,node2:2")
    p.add_argument("--hostfile", help="file of hosts: `host:slots` or `host slots=N` a line")
    p.add_argument("--ssh-port", type=int, help="ssh port of the hosts (default: ssh's own)")
    p.add_argument("--ssh-identity", help="ssh private key file for the hosts")
    p.add_argument("--iface", help="network interface for MPI traffic, e.g. eth0 or ib0")
    p.add_argument("-x", "--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="environment variable for every rank (repeatable)")  # fmt: skip
    p.add_argument(
        "--start-timeout", type=_start_timeout,
        default=os.environ.get(_startup.TIMEOUT_ENV, str(_startup.DEFAULT_TIMEOUT)),
        help="seconds for every rank to start before the job is ended, naming the hosts "
        f"that did not (0: wait forever; default {_startup.DEFAULT_TIMEOUT:g}, "
        f"or ${_startup.TIMEOUT_ENV})",
    )  # fmt: skip
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
    hosts = _host_options(args)
    cmd = build_command(
        args.np, args.program, args.module, args.mpiexec, None,
        shlex.split(args.mpi_args), hosts=hosts,
    )  # fmt: skip
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")

    def launch(run_env: dict) -> int:
        # A fresh start-up watch (and token) for every launch of the job.
        run_cmd = list(cmd)
        watch = _start_watch(args, hosts, run_cmd, run_env)
        started = time.monotonic()
        try:
            return _job.run(run_cmd, run_env, startup=watch)
        finally:
            if watch:
                watch.close()
            _remote.clean_hosts(hosts, time.monotonic() - started)

    return _restarts.run_with_restarts(launch, env, args.restarts)


def _start_watch(args, hosts: HostOptions, cmd: list[str], env: dict):
    """A start-up watch when every rank runs through the runner (which reports), else None."""
    if args.start_timeout == 0 or _RUNNER[1] not in cmd:
        return None
    host_list = hosts.host_list()
    address = _remote.reply_address(hosts.iface, multi_host=bool(hosts.remote_hosts()))
    expected = placement(host_list, args.np) if host_list else None
    watch = _startup.StartupWatch(args.np, args.start_timeout, address, expected)
    env[_startup.ENV] = watch.address
    if "--oversubscribe" in cmd:  # Open MPI forwards only what -x names to other hosts
        cmd.insert(cmd.index("--oversubscribe") + 1, "-x")
        cmd.insert(cmd.index("--oversubscribe") + 2, _startup.ENV)
    return watch
