import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
# Keras reads its backend once, at import, from here or ~/.keras/keras.json (tensorflow when
# neither says): the tests run distopt.keras on jax unless the run chooses another.
os.environ.setdefault("KERAS_BACKEND", "jax")


@pytest.fixture(autouse=True)
def _fresh_names():
    from distopt.utils import clear_session

    clear_session()
    yield


@pytest.fixture
def comm_world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def run_distoptrun(np_, *argv, timeout=120, env=None):
    """Runs `distoptrun -np N ...` as a user would; returns the CompletedProcess."""
    import subprocess

    e = dict(os.environ, PYTHONUNBUFFERED="1")
    e.update(env or {})
    cmd = [sys.executable, "-m", "distopt.launch", "-np", str(np_), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT)


def goldens_path() -> Path:
    for candidate in (SHARED / "reference" / "keras_goldens.json",):
        if candidate.exists():
            return candidate
    pytest.skip("shared/reference/keras_goldens.json is not beside the repository")


warnings.filterwarnings("error", category=np.exceptions.VisibleDeprecationWarning)
