"""Hosts, ssh, interface and environment options of `distoptrun`, as mpiexec arguments."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

_HOST = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _error(message: str) -> SystemExit:
    return SystemExit(f"distoptrun: {message}")


def parse_host(spec: str, where: str) -> tuple[str, int]:
    """`name` or `name:slots` -> (name, slots); slots defaults to 1."""
    name, _, slots = spec.strip().partition(":")
    if not name or not _HOST.match(name) or (slots and not slots.isdigit()) or slots == "0":
        raise _error(
            f"bad host {spec!r} in {where}: expected `name` or `name:slots` with slots a "
            "positive integer, e.g. `-H node1:2,node2:2`."
        )
    return name, int(slots) if slots else 1


def parse_hosts(text: str) -> list[tuple[str, int]]:
    """`-H host1:2,host2:2` -> [("host1", 2), ("host2", 2)]."""
    specs = [s for s in text.split(",") if s.strip()]
    if not specs:
        raise _error(f"-H/--hosts got no host. Received: {text!r}; expected e.g. node1:2,node2:2")
    return [parse_host(s, "-H/--hosts") for s in specs]


def read_hostfile(path: str) -> list[tuple[str, int]]:
    """MPICH (`host:slots`) and Open MPI (`host slots=N`) hostfile lines; `#` comments."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise _error(f"cannot read --hostfile {path!r}: {e.strerror}") from None
    hosts = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\S+)\s+(?:slots|max_slots|max-slots)\s*=\s*(\d+)\S*", line)
        spec = f"{m.group(1)}:{m.group(2)}" if m else line
        hosts.append(parse_host(spec, f"{path} line {number}"))
    if not hosts:
        raise _error(f"--hostfile {path!r} lists no host.")
    return hosts


def placement(hosts: list[tuple[str, int]], np_: int) -> list[str]:
    """The host of each rank when ranks fill each host's slots in turn (MPICH's and Open
    MPI's default), wrapping round when `np_` exceeds the slots."""
    order = [name for name, slots in hosts for _ in range(slots)]
    return [order[r % len(order)] for r in range(np_)]


def is_local(host: str) -> bool:
    names = {"localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()}
    return host in names or host.split(".")[0] == socket.gethostname().split(".")[0]


def parse_env(items: list[str], environ: dict[str, str]) -> list[tuple[str, str]]:
    """`-x NAME` (value from this environment) or `-x NAME=VALUE` -> [(name, value)]."""
    pairs = []
    for item in items:
        name, eq, value = item.partition("=")
        if not _ENV_NAME.match(name):
            raise _error(f"-x/--env expects NAME or NAME=VALUE. Received: {item!r}")
        if not eq:
            if name not in environ:
                raise _error(
                    f"-x {name}: {name} is not set in this environment. Set it, or pass "
                    f"-x {name}=VALUE."
                )
            value = environ[name]
        pairs.append((name, value))
    return pairs


@dataclass
class HostOptions:
    """What `distoptrun` was told about hosts, ssh, the network and the environment."""

    hosts: list[tuple[str, int]] = field(default_factory=list)
    hostfile: str | None = None
    ssh_port: int | None = None
    ssh_identity: str | None = None
    iface: str | None = None
    env: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        if self.hosts and self.hostfile:
            raise _error("give -H/--hosts or --hostfile, not both.")
        if self.ssh_port is not None and not 0 < self.ssh_port < 65536:
            raise _error(f"--ssh-port must be in 1..65535. Received: {self.ssh_port}")
        if self.ssh_identity is not None:
            if not os.path.isfile(self.ssh_identity):
                raise _error(f"--ssh-identity {self.ssh_identity!r} is not a file.")
            if any(c.isspace() for c in self.ssh_identity):
                raise _error(
                    f"--ssh-identity {self.ssh_identity!r} contains whitespace, which MPICH's "
                    "launcher splits on: move or link the key to a path without spaces."
                )
        if self.iface is not None and self.iface not in {n for _, n in socket.if_nameindex()}:
            names = ", ".join(sorted(n for _, n in socket.if_nameindex()))
            raise _error(f"--iface {self.iface!r} is not an interface here. Interfaces: {names}")

    def host_list(self) -> list[tuple[str, int]]:
        return read_hostfile(self.hostfile) if self.hostfile else list(self.hosts)

    def ssh_args(self) -> list[str]:
        args = ["-p", str(self.ssh_port)] if self.ssh_port is not None else []
        return args + (["-i", self.ssh_identity] if self.ssh_identity else [])

    def mpi_args(self, vendor: str) -> tuple[list[str], dict[str, str]]:
        """(mpiexec arguments, variables for mpiexec's own environment)."""
        args: list[str] = []
        env: dict[str, str] = {}
        if self.hosts:
            joined = ",".join(f"{n}:{s}" for n, s in self.hosts)
            args += ["--host", joined] if vendor == "openmpi" else ["-hosts", joined]
        if self.hostfile:
            args += ["--hostfile" if vendor == "openmpi" else "-f", self.hostfile]
        ssh = self.ssh_args()
        if ssh and vendor == "openmpi":
            args += ["--mca", "plm_rsh_args", " ".join(ssh)]
        elif ssh:
            env["HYDRA_LAUNCHER_EXTRA_ARGS"] = " ".join(ssh)
        if self.iface and vendor == "openmpi":
            args += ["--mca", "btl_tcp_if_include", self.iface,
                     "--mca", "oob_tcp_if_include", self.iface]  # fmt: skip
        elif self.iface:
            # hydra's control traffic, then the data path of each MPICH netmod
            args += ["-iface", self.iface, "-genv", "UCX_NET_DEVICES", self.iface,
                     "-genv", "FI_TCP_IFACE", self.iface]  # fmt: skip
        for name, value in self.env:
            args += ["-x", f"{name}={value}"] if vendor == "openmpi" else ["-genv", name, value]
        return args, env

    def remote_hosts(self) -> list[str]:
        """The hosts other than this one, in order, once each."""
        seen: list[str] = []
        for name, _ in self.host_list():
            if not is_local(name) and name not in seen:
                seen.append(name)
        return seen
