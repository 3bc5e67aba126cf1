"""The code follows the project's ruff configuration (pyproject.toml), as STYLE.md asks."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["distopt", "tests", "benchmarks", "examples"]


def _ruff(*args):
    # The running interpreter's ruff, never one that happens to be on PATH: a venv that is not
    # activated has its tools off PATH, and a stray ruff elsewhere may be another version.
    if importlib.util.find_spec("ruff") is None:
        pytest.fail(
            f"ruff is not installed for {sys.executable}: `pip install '.[test]'` installs it"
        )
    cmd = [sys.executable, "-m", "ruff", *args, *PATHS]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_ruff_check():
    out = _ruff("check", "--no-cache")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format():
    out = _ruff("format", "--check", "--no-cache")
    assert out.returncode == 0, out.stdout + out.stderr
