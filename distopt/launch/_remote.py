"""What `distoptrun` does on the other hosts of a job: the address ranks report back to, and
removing the MPI shared-memory segments an aborted job left in each host's /dev/shm."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from distopt.launch._hosts import HostOptions

_SIOCGIFADDR = 0x8915
# Hostfiles MPI launchers read from the environment (MPICH, Intel MPI, Open MPI, PBS).
_HOSTFILE_ENV = ("HYDRA_HOST_FILE", "I_MPI_HYDRA_HOST_FILE", "OMPI_MCA_orte_default_hostfile",
                 "PBS_NODEFILE")  # fmt: skip
CLEAN_TIMEOUT = 30.0


def iface_address(iface: str) -> str:
    """The IPv4 address of network interface `iface` on this host."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", iface.encode()[:15]))
        except OSError:
            raise SystemExit(f"distoptrun: --iface {iface!r} has no IPv4 address.") from None
    return socket.inet_ntoa(packed[20:24])


def _slurm_nodes(environ) -> int:
    """The node count of the Slurm allocation this runs in (1 outside one, or if unreadable)."""
    nodes = environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or "1"
    return int(nodes) if nodes.isdigit() else 1


def reply_address(iface: str | None, multi_host: bool, environ=os.environ) -> str:
    """Where ranks reach this host: the interface's address, this host's name when ranks
    may run elsewhere (as MPI's own proxies reach it), else loopback."""
    if iface:
        return iface_address(iface)
    # Inside a multi-node allocation or with a hostfile from the environment, MPI places
    # ranks on other hosts without -H/--hostfile.
    elsewhere = multi_host or _slurm_nodes(environ) > 1
    elsewhere = elsewhere or any(v in environ for v in _HOSTFILE_ENV)
    return socket.gethostname() if elsewhere else "127.0.0.1"


def _clean_command(max_age: float) -> list[str]:
    return [sys.executable, "-m", "distopt.launch._shm_cleanup", "--max-age", str(int(max_age))]


def _clean_one(hosts: HostOptions, host: str, max_age: float) -> str:
    clean = _clean_command(max_age)
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *hosts.ssh_args(), host, *clean]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=CLEAN_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{host}: not cleaned ({type(e).__name__})"
    if out.returncode != 0:
        return f"{host}: not cleaned (ssh exit {out.returncode}: {out.stderr.strip()[-200:]})"
    return f"{host}: {out.stdout.strip()}" if out.stdout.strip() else ""


def slurm_clean_command(hosts: HostOptions, elapsed: float, environ=os.environ):
    """The srun step that cleans every node of the Slurm allocation this job ran in, or None
    when MPI placed no rank through Slurm (-H/--hostfile given, or a single node)."""
    nodes = _slurm_nodes(environ)
    if hosts.host_list() or not environ.get("SLURM_JOB_ID"):
        return None
    if nodes < 2:
        return None  # one node: the ranks were this host's, cleaned by _job
    # --overlap: the job step's last processes may still hold the allocation's CPUs;
    # --mpi=none: the cleanup is no MPI program, whatever the cluster's MpiDefault.
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            "--overlap", "--mpi=none", "--kill-on-bad-exit=0", "--quiet",
            *_clean_command(elapsed + 60), "--name-host"]  # fmt: skip


def _clean_slurm_nodes(cmd: list[str]) -> None:
    # Under Slurm, hydra starts the ranks through srun: they are slurmstepd's children on
    # every node (this one too), so _job never saw them and only a step per node cleans up.
    if shutil.which("srun") is None:
        print("distoptrun: srun not found: segments on the allocation's nodes not cleaned.",
              file=sys.stderr)  # fmt: skip
        return
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=CLEAN_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"distoptrun: Slurm nodes not cleaned ({type(e).__name__})", file=sys.stderr)
        return
    if out.returncode != 0:
        err = out.stderr.strip()[-200:]
        print(f"distoptrun: Slurm nodes not cleaned (srun exit {out.returncode}: {err})",
              file=sys.stderr)  # fmt: skip
    for line in out.stdout.splitlines():
        if line.strip():
            print(f"distoptrun: {line.strip()}", file=sys.stderr)


def clean_hosts(hosts: HostOptions, elapsed: float) -> None:
    """Removes, on every other host of the job (every node of its Slurm allocation), the
    unused MPI segments of ours that appeared during the job (`elapsed` seconds, plus a
    margin); prints what it did."""
    slurm = slurm_clean_command(hosts, elapsed)
    if slurm is not None:
        _clean_slurm_nodes(slurm)
        return
    remote = hosts.remote_hosts()
    if not remote:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(remote))) as pool:
        lines = pool.map(lambda h: _clean_one(hosts, h, elapsed + 60), remote)
    for line in lines:
        if line:
            print(f"distoptrun: {line}", file=sys.stderr)
