"""Fixtures of the `cluster` tests: namespaced hosts running sshd with keys made per test,
and the image. Test modules import the fixtures they use (no conftest.py here: it would
take the `conftest` module name from tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from _hosts import Cluster, can_make_namespaces, missing_tools

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SSH_PORT = 2222  # not ssh's default, so the test shows --ssh-port reaches every ssh

SSH_CONFIG = """Host *
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
    BatchMode yes
    ConnectTimeout 5
"""


def require(*tools: str) -> None:
    """Skips the test, saying why, when it cannot run here."""
    reason = can_make_namespaces()
    if reason is None and missing_tools(*tools):
        missing = ", ".join(missing_tools(*tools))
        reason = f"missing programs: {missing} (tests/cluster/setup.sh installs them)"
    if reason:
        print(f"SKIPPED: {reason}", file=sys.stderr)
        pytest.skip(reason)


def make_keys(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    keys = {"client": directory / "id_ed25519", "host": directory / "ssh_host_ed25519_key"}
    for path in keys.values():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                       check=True)  # fmt: skip
    (directory / "authorized_keys").write_text(Path(f"{keys['client']}.pub").read_text())
    (directory / "authorized_keys").chmod(0o600)
    return keys


def sshd_config(directory: Path, keys: dict[str, Path]) -> Path:
    path = directory / "sshd_config"
    path.write_text(
        f"Port {SSH_PORT}\nHostKey {keys['host']}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\n"
        "PidFile /run/sshd.pid\nUsePAM no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "StrictModes no\n"  # the keys live under /tmp, which sshd calls unsafe
        # the ranks inherit the launcher's environment from MPI, not from the login
        "PermitUserEnvironment no\n"
    )
    return path


def start_sshd(cluster: Cluster, config: Path) -> None:
    for host in cluster.hosts.values():
        host.run(["/usr/sbin/sshd", "-f", str(config)])
    deadline = time.monotonic() + 20
    for host in cluster.hosts.values():
        probe = f"import socket; socket.create_connection(('{host.address}', {SSH_PORT}), 2)"
        while host.run(["python3", "-c", probe], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd on {host.name} does not answer")
            time.sleep(0.1)


@pytest.fixture
def ssh_cluster(tmp_path):
    """Two namespaced hosts, node1 and node2, each running sshd on port 2222."""
    require("sshd", "ssh", "ssh-keygen")
    tmp_path.chmod(0o755)
    keys = make_keys(tmp_path / "ssh")
    (tmp_path / "ssh_config").write_text(SSH_CONFIG)
    files = {"/etc/ssh/ssh_config": tmp_path / "ssh_config"}
    with Cluster(tmp_path / "hosts", ["node1", "node2"], files=files) as cluster:
        start_sshd(cluster, sshd_config(tmp_path / "ssh", keys))
        cluster.identity = keys["client"]
        yield cluster


@pytest.fixture(scope="session")
def image():
    """docker/Dockerfile's runtime image, built with podman on a debootstrap-made base."""
    require("podman", "debootstrap", "runc")
    from _podman import IMAGE, build

    build("runtime", IMAGE)
    return IMAGE
