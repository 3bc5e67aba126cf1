"""Every code block in docs/ and README.md runs, so docs that drift from the code fail CI.

A fenced block's language decides what happens; an HTML comment on the lines just above the
fence can change it:

- `python`: runs in a fresh process (cwd: an empty temporary folder). After
  `<!-- docs-test: mpiexec -n N -->` it runs under a real `mpiexec -n N` instead.
- `bash`: runs with `bash -e` from the repository root, with this environment's `bin/` first
  on PATH. `<!-- docs-test: install -->` exempts a block that installs (it must contain
  `pip install`; CI runs the README's install commands itself).
- any language after `<!-- docs-test: file PATH -->`: the block is a copy of (part of) the
  repository file PATH and must appear in it verbatim.
- `bash` after `<!-- docs-test: cluster TEST -->`: commands for a real cluster (other hosts,
  Slurm, a container engine, Kubernetes). The cluster test file TEST (run by `.ci/cluster`)
  runs these paths; here every `distoptrun` line must pass `distoptrun --dry-run` and every
  repository file the block names must exist.
- `text`: program output or a message, shown, not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_TIMEOUT = 280  # seconds per block, under a loaded machine
MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Block:
    page: Path
    line: int
    language: str
    markers: list[str]
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    out, markers, lines = [], [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line.strip()) if line.startswith(("```", "~~~")) else None
        if fence is None:
            if MARKER.search(line):
                markers.append(MARKER.search(line).group(1))
            elif line.strip() and not line.strip().startswith("<!--"):
                markers = []
            i += 1
            continue
        ticks, language, start = fence.group(1), fence.group(2), i + 1
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith(ticks):
            body.append(lines[i])
            i += 1
        out.append(Block(page, start, language, markers, "\n".join(body) + "\n"))
        markers = []
        i += 1
    return out


ALL_BLOCKS = [b for page in PAGES for b in blocks_of(page)]


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin"
    env.setdefault("DISTOPT_COLLECTIVE_TIMEOUT", "120")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, block: Block) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                              timeout=RUN_TIMEOUT)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{block.id}: did not finish within {RUN_TIMEOUT} s\n{e.stdout}\n{e.stderr}")
    assert proc.returncode == 0, (
        f"{block.id} ({block.language}) exited {proc.returncode}:\n--- code\n{block.code}"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )


def _mpiexec_ranks(block: Block) -> int | None:
    for marker in block.markers:
        m = re.fullmatch(r"mpiexec -n (\d+)", marker)
        if m:
            return int(m.group(1))
    return None


def _file_marker(block: Block) -> str | None:
    for marker in block.markers:
        m = re.fullmatch(r"file (\S+)", marker)
        if m:
            return m.group(1)
    return None


def _cluster_marker(block: Block) -> str | None:
    for marker in block.markers:
        m = re.fullmatch(r"cluster (\S+)", marker)
        if m:
            return m.group(1)
    return None


CLUSTER = [b for b in ALL_BLOCKS if _cluster_marker(b)]
REPO_PATH = re.compile(r"(?<![\w/.])((?:launch|docker|examples)/[\w./-]+)")


@pytest.mark.parametrize("block", CLUSTER, ids=lambda b: b.id)
def test_cluster_commands_are_valid(block, tmp_path, monkeypatch):
    test = ROOT / _cluster_marker(block)
    assert block.language == "bash", f"{block.id}: cluster blocks are bash"
    assert test.is_file() and test.name.startswith("test_cluster"), (
        f"{block.id}: the cluster test {test} that runs these commands does not exist"
    )
    for path in REPO_PATH.findall(block.code):
        assert (ROOT / path).exists(), f"{block.id}: names {path}, which does not exist"
    (tmp_path / "train.py").write_text("")
    lines = [ln.split("#")[0].strip() for ln in block.code.splitlines()]
    for line in [ln for ln in lines if ln.startswith("distoptrun ")]:
        argv = line.split()
        argv.insert(1, "--dry-run")
        for arg in [a for a in argv if a.startswith("~/")]:  # a key file the user has
            (tmp_path / arg[2:]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / arg[2:]).touch()
        argv = [a.replace("~/", f"{tmp_path}/") for a in argv]
        for i, arg in enumerate(argv[:-1]):  # `-x NAME` forwards a variable the user has set
            if arg == "-x" and "=" not in argv[i + 1]:
                monkeypatch.setenv(argv[i + 1], "set-by-the-user")
        if "--iface" in argv:  # the cluster's interface name; this machine has loopback
            argv[argv.index("--iface") + 1] = "lo"
        _run([str(BIN / "distoptrun"), *argv[1:]], ROOT, block)


def test_blocks_are_found():
    pages = {b.page.name for b in ALL_BLOCKS}
    assert {"README.md", "quickstart.md"} <= pages
    assert any(_mpiexec_ranks(b) for b in ALL_BLOCKS)


def test_every_block_has_a_known_kind():
    known = {"python", "bash", "text"}
    bad = [f"{b.id}: ```{b.language or '(no language)'}" for b in ALL_BLOCKS
           if b.language not in known and _file_marker(b) is None]  # fmt: skip
    assert not bad, (
        "Code blocks must be ```python or ```bash (run in CI), ```text (output), or carry "
        "<!-- docs-test: file PATH --> (a copy of a repository file):\n" + "\n".join(bad)
    )
    for b in ALL_BLOCKS:
        for marker in b.markers:
            known_marker = _mpiexec_ranks(b) or _file_marker(b) or _cluster_marker(b)
            assert marker == "install" or known_marker, (
                f"{b.id}: unknown marker `docs-test: {marker}`"
            )


def test_install_exemptions_are_install_commands():
    for b in ALL_BLOCKS:
        if "install" in b.markers:
            assert b.language == "bash" and "pip install" in b.code, (
                f"{b.id}: only bash blocks that install may be exempt (`docs-test: install`)"
            )


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if _file_marker(b)], ids=lambda b: b.id)
def test_file_copies_match_the_repository(block):
    path = ROOT / _file_marker(block)
    assert path.is_file(), f"{block.id}: {path} does not exist"
    assert block.code.strip() in path.read_text(), f"{block.id}: differs from {path}"


RUNNABLE = [b for b in ALL_BLOCKS
            if b.language in ("python", "bash") and "install" not in b.markers
            and _file_marker(b) is None and _cluster_marker(b) is None]  # fmt: skip


@pytest.mark.timeout(RUN_TIMEOUT + 20)
@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_block_runs(block, tmp_path):
    if block.language == "bash":
        _run(["bash", "-e", "-c", block.code], ROOT, block)
        return
    script = tmp_path / "block.py"
    script.write_text(block.code)
    ranks = _mpiexec_ranks(block)
    if ranks is None:
        _run([sys.executable, str(script)], tmp_path, block)
    else:
        mpiexec = BIN / "mpiexec"
        if not mpiexec.exists():
            pytest.fail(f"{block.id} needs mpiexec beside {sys.executable}: pip install mpich")
        _run([str(mpiexec), "-n", str(ranks), sys.executable, str(script)], tmp_path, block)
