"""Hosts made of Linux namespaces, for the cluster tests.

Each host has its own network namespace (one veth to a bridge in a switch namespace, its own
address, nothing else), mount namespace (its own /etc/hosts, /dev/shm, /run, /sys with the
cgroup mounts bound back, /proc), and UTS, IPC and PID namespaces. The file system is shared, as
on a cluster with a shared home. Traffic stays on the addresses made here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

SUBNET = "198.18.0"  # RFC 2544 benchmarking range, only ever inside these namespaces
_REAPER = (
    "import os, time\n"
    "while True:\n"
    "    try:\n"
    "        os.wait()\n"
    "    except ChildProcessError:\n"
    "        time.sleep(0.2)\n"
)


def missing_tools(*names: str) -> list[str]:
    """The programs among `names` not installed (looked up in the system's sbin/bin)."""
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    return [n for n in names if shutil.which(n, path=path) is None]


def can_make_namespaces() -> str | None:
    """None if this process may create namespaces, else the reason it may not."""
    if os.geteuid() != 0:
        return "the cluster tests need root (namespaces, mounts, veth links)"
    missing = missing_tools("unshare", "nsenter", "ip")
    if missing:
        return f"missing programs: {', '.join(missing)} (install util-linux, iproute2)"
    probe = subprocess.run(["unshare", "--net", "--mount", "--pid", "--fork", "true"],
                           capture_output=True, text=True)  # fmt: skip
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()}"
    return None


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _init_pid(unshare_pid: int, timeout: float = 10.0) -> int:
    """The pid (seen from here) of the process `unshare --fork` started as the host's init."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = _children(unshare_pid)
        if children:
            return children[0]
        time.sleep(0.02)
    raise RuntimeError(f"unshare (pid {unshare_pid}) started no init process")


class Host:
    """One namespaced host: `run`/`popen` execute a command inside all its namespaces."""

    def __init__(self, name: str, address: str, directory: Path):
        self.name, self.address, self.directory = name, address, directory
        self.proc: subprocess.Popen | None = None
        self.pid = 0

    def argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-a", "--", *argv]

    def run(self, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        out = subprocess.run(self.argv(argv), **kw)
        if check and out.returncode != 0:
            raise RuntimeError(f"{self.name}: {shlex.join(argv)} -> {out.returncode}\n"
                               f"{out.stdout}\n{out.stderr}")  # fmt: skip
        return out

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv), **kw)

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        return self.run(["sh", "-c", script], **kw)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Pulls the plug: every process of the host dies and its network link goes away."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)  # init of a PID namespace: the kernel kills the rest
            self.proc.wait(timeout=30)


class Cluster:
    """`with Cluster(tmp_path, ["node1", "node2"]) as c:` hosts c.hosts["node1"], ...;
    `files` maps a path inside every host (e.g. /etc/ssh/ssh_config) to a file bound over it."""

    def __init__(self, directory: Path, names: list[str], files: dict[str, Path] | None = None):
        self.directory = Path(directory)
        self.files = dict(files or {})
        self.hosts = {n: Host(n, f"{SUBNET}.{i + 1}", self.directory / n)
                      for i, n in enumerate(names)}  # fmt: skip
        self._switch: subprocess.Popen | None = None
        self._tag = f"dc{os.getpid() % 100000}"

    def hosts_file(self) -> str:
        lines = ["127.0.0.1 localhost"] + [f"{h.address} {h.name}" for h in self.hosts.values()]
        return "\n".join(lines) + "\n"

    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self._switch = subprocess.Popen(["unshare", "--net", "--fork", "sleep", "infinity"])
        switch_pid = _init_pid(self._switch.pid)
        switch = ["nsenter", "-t", str(switch_pid), "-n", "--"]
        subprocess.run([*switch, "ip", "link", "add", "br0", "type", "bridge"], check=True)
        subprocess.run([*switch, "ip", "link", "set", "br0", "up"], check=True)
        hosts_file = self.directory / "hosts"
        hosts_file.parent.mkdir(parents=True, exist_ok=True)
        hosts_file.write_text(self.hosts_file())
        binds = {"/etc/hosts": hosts_file, **self.files}
        for i, host in enumerate(self.hosts.values()):
            host.directory.mkdir(parents=True, exist_ok=True)
            (host.directory / "cgroup").mkdir(exist_ok=True)
            setup = [
                f"hostname {host.name}",
                "mount -t tmpfs -o size=2g,mode=1777 shm /dev/shm",
                "mount -t tmpfs -o mode=755 run /run",
                "mkdir -p /run/sshd /run/munge /run/lock && chmod 1777 /run/lock",
                f"mount --rbind /sys/fs/cgroup {host.directory}/cgroup",
                "mount -t sysfs sysfs /sys",
                f"mount --rbind {host.directory}/cgroup /sys/fs/cgroup",
                *[
                    f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}"
                    for dst, src in binds.items()
                ],  # fmt: skip
                "ip link set lo up",
                f"exec python3 -c {shlex.quote(_REAPER)}",
            ]
            host.proc = subprocess.Popen(
                ["unshare", "--net", "--mount", "--uts", "--ipc", "--pid", "--fork",
                 "--mount-proc", "--propagation", "private", "sh", "-ec", "\n".join(setup)],
            )  # fmt: skip
            host.pid = _init_pid(host.proc.pid)
            inside, outside = f"{self._tag}h{i}", f"{self._tag}s{i}"
            subprocess.run(["ip", "link", "add", inside, "type", "veth", "peer", "name", outside,
                            "netns", str(switch_pid)], check=True)  # fmt: skip
            subprocess.run(["ip", "link", "set", inside, "netns", str(host.pid)], check=True)
            subprocess.run([*switch, "ip", "link", "set", outside, "master", "br0", "up"],
                           check=True)  # fmt: skip
            self._wait_for(host, "test -e /run/sshd")
            host.run(["ip", "link", "set", inside, "name", "eth0"])
            host.run(["ip", "addr", "add", f"{host.address}/24", "dev", "eth0"])
            host.run(["ip", "link", "set", "eth0", "up"])

    @staticmethod
    def _wait_for(host: Host, script: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if host.sh(script, check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{host.name}: `{script}` not true after {timeout} s")
            time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        for host in self.hosts.values():
            host.kill()
        if self._switch is not None and self._switch.poll() is None:
            self._switch.kill()
            self._switch.wait(timeout=30)
