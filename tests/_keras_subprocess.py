"""Runs a script against real Keras in a fresh interpreter (the backend is chosen by the
environment before Keras is imported, so it cannot share this test process) and returns the
JSON the script prints on its last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def keras_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("keras") is not None


requires_keras = pytest.mark.skipif(
    not keras_available(), reason="needs the `keras` extra (keras 3.15 and jax)"
)


def run_keras(script: str, backend: str = "numpy", x64: bool = False, timeout: float = 300):
    env = dict(os.environ, KERAS_BACKEND=backend, JAX_PLATFORMS="cpu")
    env["JAX_ENABLE_X64"] = "1" if x64 else "0"
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    if done.returncode != 0:
        raise AssertionError(f"Keras reference script failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
