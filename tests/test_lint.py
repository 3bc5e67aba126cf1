"""The code follows the project's ruff configuration (pyproject.toml), as STYLE.md asks."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["distopt", "tests", "benchmarks", "examples"]


def _ruff(*args):
    exe = shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed: `pip install '.[test]'` installs it")
    return subprocess.run([exe, *args, *PATHS], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check():
    out = _ruff("check", "--no-cache")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format():
    out = _ruff("format", "--check", "--no-cache")
    assert out.returncode == 0, out.stdout + out.stderr
