"""`distoptrun --restarts`: a rank killed with SIGKILL at a random step, the job relaunched,
resumes from its newest checkpoint and ends with the uninterrupted run's weights, bit for bit.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_distoptrun

from distopt.checkpoint import CheckpointManager
from distopt.launch._restarts import run_with_restarts

EXAMPLE = ["examples/mlp_classification.py", "--epochs", "4", "--checkpoint-every", "3"]
ENV = {"DISTOPT_ENGINE": "numpy"}  # no per-process compiling: the job runs in seconds


def _digest(stdout: str) -> str:
    return re.search(r"weights identical on all 2 ranks: True \(sha256 (\w+)\)", stdout)[1]


def _descendants(pid: int) -> list[int]:
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        out += children
        frontier = children
    return out


def _rank_pid(root_pid: int, rank: int) -> int | None:
    """The pid of the example's process of `rank` under `root_pid` (MPICH sets PMI_RANK)."""
    for pid in _descendants(root_pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if f"PMI_RANK={rank}".encode() in env and b"mlp_classification" in cmdline:
            return pid
    return None


@pytest.mark.timeout(600)
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the rank processes in /proc")
def test_kill_9_one_rank_restart_same_weights(tmp_path):
    plain = run_distoptrun(2, *EXAMPLE, "--checkpoint-dir", str(tmp_path / "a"), env=ENV,
                           timeout=300)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kill_after, victim = rng.choice(range(3, 60, 3)), rng.randrange(2)
    folder = tmp_path / "b"
    cmd = [sys.executable, "-m", "distopt.launch", "-np", "2", "--restarts", "2", *EXAMPLE,
           "--checkpoint-dir", str(folder)]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1", **ENV)
    job = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and job.poll() is None and time.monotonic() < deadline:
        if (CheckpointManager(folder).latest_step() or 0) >= kill_after:
            killed = _rank_pid(job.pid, victim)
            if killed is not None:
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    stdout, stderr = job.communicate(timeout=300)
    why = f"seed {seed}: kill rank {victim} after step {kill_after}\n{stdout[-2000:]}"
    why += stderr[-3000:]
    assert killed is not None, "the job ended before the kill: " + why
    assert job.returncode == 0, why
    assert "restart 1 of 2" in stderr, why
    assert "resumed from step" in stdout, why
    assert _digest(stdout) == _digest(plain.stdout), why


def test_restarts_stop_at_success_and_at_the_limit():
    codes, logs = iter([3, 0]), []
    seen = []

    def launch(env):
        seen.append(env["DISTOPT_RESTART_COUNT"])
        return next(codes)

    assert run_with_restarts(launch, {}, 5, logs.append) == 0
    assert seen == ["0", "1"] and "restart 1 of 5" in logs[0]
    logs.clear()
    assert run_with_restarts(lambda env: 7, {}, 2, logs.append) == 7
    assert len(logs) == 3 and "no restarts left" in logs[-1]
    for stopped in (130, 143, -15):  # Ctrl-C, SIGTERM: stopped on purpose, not relaunched
        assert run_with_restarts(lambda env, c=stopped: c, {}, 2, logs.append) == stopped


def test_bad_restarts_is_a_clear_error():
    out = run_distoptrun(2, "--restarts", "-1", "train.py")
    assert out.returncode != 0
    assert "--restarts must be an integer >= 0. Received: -1" in out.stderr
