"""What `distoptrun` does on the other hosts of a job: the address ranks report back to, and
removing the MPI shared-memory segments an aborted job left in each host's /dev/shm."""

from __future__ import annotations

import fcntl
import os
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


def reply_address(iface: str | None, multi_host: bool, environ=os.environ) -> str:
    """Where ranks reach this host: the interface's address, this host's name when ranks
    may run elsewhere (as MPI's own proxies reach it), else loopback."""
    if iface:
        return iface_address(iface)
    # Inside a multi-node allocation or with a hostfile from the environment, MPI places
    # ranks on other hosts without -H/--hostfile.
    nodes = environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or "1"
    elsewhere = multi_host or (nodes.isdigit() and int(nodes) > 1)
    elsewhere = elsewhere or any(v in environ for v in _HOSTFILE_ENV)
    return socket.gethostname() if elsewhere else "127.0.0.1"


def _clean_one(hosts: HostOptions, host: str, max_age: float) -> str:
    clean = [sys.executable, "-m", "distopt.launch._shm_cleanup", "--max-age", str(int(max_age))]
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *hosts.ssh_args(), host, *clean]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=CLEAN_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{host}: not cleaned ({type(e).__name__})"
    if out.returncode != 0:
        return f"{host}: not cleaned (ssh exit {out.returncode}: {out.stderr.strip()[-200:]})"
    return f"{host}: {out.stdout.strip()}" if out.stdout.strip() else ""


def clean_hosts(hosts: HostOptions, elapsed: float) -> None:
    """Removes, on every other host of the job, the unused MPI segments of ours that
    appeared during the job (`elapsed` seconds, plus a margin); prints what it did."""
    remote = hosts.remote_hosts()
    if not remote:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(remote))) as pool:
        lines = pool.map(lambda h: _clean_one(hosts, h, elapsed + 60), remote)
    for line in lines:
        if line:
            print(f"distoptrun: {line}", file=sys.stderr)
