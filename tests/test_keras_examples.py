"""The Keras examples run under `distoptrun -np 2` and end with identical weights."""

import importlib.util
import os
import re
import sys
from pathlib import Path

import _keras_jobs as jobs
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import run_distoptrun  # noqa: E402


def _digests(stdout: str) -> dict:
    return dict(re.findall(r"rank (\d+): .*?weights sha256 ([0-9a-f]{16})", stdout))


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "script, backend",
    [
        ("keras_fit.py", "jax"),
        ("keras_fit.py", "tensorflow"),
        ("keras_custom_loop.py", "torch"),
        ("keras_custom_loop.py", "jax"),
        ("keras_custom_loop.py", "tensorflow"),
    ],
)
def test_example_trains_identically_on_two_ranks(script, backend):
    for module in ("keras", backend):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    path = os.pathsep.join([str(jobs.ROOT), os.environ.get("PYTHONPATH", "")])
    env = {"KERAS_BACKEND": backend, "PYTHONPATH": path}
    env["DISTOPT_COLLECTIVE_TIMEOUT"] = str(jobs.DEADLINE)
    args = ["--epochs", "2"] + (["--samples", "2048"] if script == "keras_fit.py" else [])
    proc = run_distoptrun(2, f"examples/{script}", *args, timeout=360, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    digests = _digests(proc.stdout)
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], proc.stdout
