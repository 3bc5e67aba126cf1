"""tests/cluster/_podman.py's own clean-up, with real mounts (root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _cluster import require
from _podman import _unmount_under

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(60)]


def mounted() -> set[str]:
    return {line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()}


def test_interrupted_debootstraps_mounts_are_undone_so_its_folder_can_go(tmp_path):
    """debootstrap mounts proc and sys inside its target; killed by its timeout, it leaves
    them there, and removing the folder would walk into the host's /proc."""
    require("mount", "umount")
    rootfs = tmp_path / "rootfs"
    (rootfs / "proc").mkdir(parents=True)
    (rootfs / "sys").mkdir()
    (tmp_path / "rootfs-sibling").mkdir()
    subprocess.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path / "rootfs-sibling")],
                   check=True)  # fmt: skip
    try:
        assert str(rootfs / "proc") in mounted()
        _unmount_under(rootfs)
        assert not {m for m in mounted() if m.startswith(f"{rootfs}/")}, mounted()
        assert str(tmp_path / "rootfs-sibling") in mounted(), "a folder beside it was unmounted"
        assert not any((rootfs / "proc").iterdir())
    finally:
        for point in (rootfs / "proc", tmp_path / "rootfs-sibling"):
            subprocess.run(["umount", "--lazy", str(point)], check=False, capture_output=True)
