"""Builds docker/Dockerfile with podman on a base made by debootstrap (no registry here).

`python3 tests/cluster/_podman.py` builds every image the cluster tests use, so CI can do it
while other tests run; the tests' own builds then find every layer in podman's cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEBIAN = "localhost/debian:bookworm-slim"
PYTHON = "localhost/distopt-test-python:3.11-slim"
IMAGE = "localhost/distopt-test:latest"
TEST_IMAGE = "localhost/distopt-test:test"
NONROOT = "localhost/distopt-test:nonroot"
NONROOT_ARGS = ("USER_NAME=mpi", "SSH_PORT=2222")
ENV = dict(os.environ, CONTAINERS_CONF=str(HERE / "containers.conf"))


def podman(*args: str, timeout: float = 900, check: bool = True, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    out = subprocess.run(["podman", *args], env=ENV, timeout=timeout, **kw)
    if check and out.returncode != 0:
        tail = f"{(out.stdout or '')[-3000:]}\n{(out.stderr or '')[-3000:]}"
        raise RuntimeError(f"podman {' '.join(args)} -> {out.returncode}\n{tail}")
    return out


def exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def _unmount_under(folder: Path) -> None:
    """Unmounts what an interrupted debootstrap left mounted in `folder` (its proc, sys)."""
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p.startswith(f"{folder}/")), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


def debian_base() -> None:
    """`debootstrap --variant=minbase bookworm`, imported as the Debian slim base."""
    if exists(DEBIAN):
        return
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs"
        try:
            subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs)],
                           check=True, capture_output=True, timeout=900)  # fmt: skip
        except BaseException:
            _unmount_under(rootfs)  # else removing the folder walks into the host's /proc
            raise
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        podman("import", "-", DEBIAN, stdin=tar.stdout, timeout=600)
        tar.wait()


def python_base() -> None:
    if exists(PYTHON):
        return
    debian_base()
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(HERE / "images" / "python-base.Containerfile", Path(tmp) / "Containerfile")
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", Path(tmp) / "ca-certificates.crt")
        podman("build", "--network", "host", "-t", PYTHON, tmp)


def build(target: str, tag: str, *build_args: str) -> None:
    """Builds docker/Dockerfile's `target` from this checkout, on the local Python base."""
    python_base()
    args = ["--build-arg", f"BASE={PYTHON}"]
    for a in build_args:
        args += ["--build-arg", a]
    podman("build", "--network", "host", "-f", "docker/Dockerfile", "--target", target,
           *args, "-t", tag, str(ROOT), timeout=1500)  # fmt: skip


def build_all() -> None:
    """Every image the cluster tests build, with the same arguments (so the same layers)."""
    build("runtime", IMAGE)
    build("runtime", NONROOT, *NONROOT_ARGS)
    build("test", TEST_IMAGE)


if __name__ == "__main__":
    build_all()
