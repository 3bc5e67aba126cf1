"""Failure modes that must end the whole job: the deadline and abort-on-exception.

Each case launches a real MPI job (`mpiexec -n N python script.py`, or `distoptrun`) as a
subprocess with a short deadline and a subprocess timeout, so a regression fails instead of
hanging. The script prints `MARK <time>` when the failure starts; the job must be gone
within the deadline plus 10 s of it, or within 10 s when a rank exits while others wait.
"""

import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from _mpi_jobs import run_job

from distopt.collectives._deadline import (
    DEADLINE_EXIT_CODE,
    DEPARTED_EXIT_CODE,
    TIMEOUT_ENV,
    resolve_timeout,
)
from distopt.collectives._guard import Signature, explain

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 3.0
LONG_DEADLINE = 120.0  # for exits: only noticing the exit can end the job within SLACK
SLACK = 10.0
JOB_TIMEOUT = 120

SCRIPT = r"""
import os, sys, time
import numpy as np
import distopt
from distopt.distribute import MPIStrategy

mode = sys.argv[1]
if mode.endswith("-uninitialised"):  # rank 1 ends before it ever initialised MPI
    if os.environ.get("PMI_RANK") == "1":
        print(f"MARK {time.time()}", flush=True)
        if mode == "absent-raise-uninitialised":
            raise ValueError("boom before MPI_Init")
        sys.exit(0)
elif mode.startswith("absent"):  # rank 1 never creates the strategy
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == 1:
        if mode == "absent-busy":
            time.sleep(300)
        print(f"MARK {time.time()}", flush=True)
        if mode == "absent-raise":
            raise ValueError("boom before MPIStrategy")
        sys.exit(0)
    if mode == "absent-busy":
        print(f"MARK {time.time()}", flush=True)
strategy = MPIStrategy() if mode == "env" else MPIStrategy(collective_timeout=float(sys.argv[2]))
rank, size = strategy.communicator.rank, strategy.num_replicas_in_sync
with strategy.scope():
    w = distopt.Variable(np.zeros(3), name="w")
    opt = distopt.optimizers.SGD(learning_rate=0.1)

def mark():
    print(f"MARK {time.time()}", flush=True)

for step in range(5):
    if rank == 1 and mode == "finish-early" and step == 4:
        mark()
        break  # one step fewer, then its script ends (no strategy.close())
    if rank == 1 and step == 3:
        if mode == "skip":
            continue  # the classic bug: one rank skips apply_gradients
        if mode == "raise":
            mark()
            raise RuntimeError("boom on rank 1")
        if mode in ("busy", "env"):
            time.sleep(300)  # alive but never arrives
        if mode == "die":
            mark()
            os._exit(3)  # gone without a word (as if killed)
    if rank == 0 and step == 4 and mode == "skip":
        mark()  # rank 1 never runs this step's aggregation
    if rank == 0 and step == 3 and mode in ("busy", "env"):
        mark()
    shape = (4,) if (mode == "mismatch" and rank == 1) else (3,)
    if mode == "mismatch" and step == 2:
        mark()
        w2 = distopt.Variable(np.zeros(shape), name="w")
        opt2 = distopt.optimizers.SGD(learning_rate=0.1)
        strategy.run(lambda: opt2.apply_gradients([(np.ones(shape), w2)]))
    strategy.run(lambda: opt.apply_gradients([(np.ones(3), w)]))
print(f"rank {rank} finished", flush=True)
"""


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def launch(tmp_path, n, mode, launcher="mpiexec", env=None, deadline=DEADLINE):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    e = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    e.pop(TIMEOUT_ENV, None)
    e.update(env or {})
    args = [str(script), mode, str(deadline)]
    if launcher == "mpiexec":
        cmd = [mpiexec(), "-n", str(n), sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "distopt.launch", "-np", str(n), *args]
    start = time.time()
    proc = run_job(cmd, timeout=JOB_TIMEOUT, env=e, cwd=ROOT)  # and its /dev/shm files
    end = time.time()
    out = proc.stdout + proc.stderr
    marks = [float(m) for m in re.findall(r"MARK ([0-9.]+)", out)]
    assert marks, (
        f"the job never reached the failure point (exit {proc.returncode} after "
        f"{end - start:.1f} s; {cmd}):\n{out}"
    )
    return proc.returncode, out, end - min(marks), end - start


def others(n, missing=1):
    rest = [str(r) for r in range(n) if r != missing]
    return ("rank " if len(rest) == 1 else "ranks ") + ", ".join(rest)


@pytest.mark.parametrize(
    "n, launcher, mode",
    [(2, "mpiexec", "finish-early"), (3, "mpiexec", "finish-early"),
     (4, "mpiexec", "finish-early"), (2, "distoptrun", "finish-early"),
     (3, "distoptrun", "finish-early"), (4, "distoptrun", "finish-early"),
     (3, "mpiexec", "skip"), (2, "distoptrun", "skip")],
)  # fmt: skip
def test_rank_exiting_while_others_wait_ends_the_job(tmp_path, n, launcher, mode):
    """A rank that skips a step, or runs one fewer, ends its script while the others wait in
    the next aggregation: the job ends within seconds of that, not at the deadline."""
    code, out, after_mark, _ = launch(tmp_path, n, mode, launcher, deadline=LONG_DEADLINE)
    assert code == DEPARTED_EXIT_CODE, out
    assert f"distopt: rank 1 of {n} exited while rank " in out, out
    # Either way rank 1 ran 4 aggregations (collectives #2-#5) and the others wait in the 5th.
    assert "waits for it in `gradient aggregation` at step 5 (collective #6)" in out, out
    assert "rank 1: finished its script and exited after collective #5" in out, out
    assert "deadline exceeded" not in out and "rank 0 finished" not in out, out
    assert after_mark <= SLACK, f"took {after_mark:.1f} s after the exit:\n{out}"
    print(f"ended {after_mark:.2f} s after rank 1 exited")


def test_busy_rank_is_named_and_the_job_aborts(tmp_path):
    code, out, after_mark, _ = launch(tmp_path, 2, "busy")
    assert code != 0, out
    assert "`gradient aggregation` at step 4" in out
    assert re.search(r"rank 1: running outside distopt collectives for [0-9.]+ s, since "
                     r"collective #4 \(`gradient aggregation`, step 3\)", out), out  # fmt: skip
    assert after_mark <= DEADLINE + SLACK, f"took {after_mark:.1f} s:\n{out}"


@pytest.mark.parametrize("n", [2, 4])
def test_rank_dying_ends_the_job(tmp_path, n):
    code, out, after_mark, _ = launch(tmp_path, n, "die")
    assert code != 0, out
    # mpiexec ends the job when a rank dies; the deadline would otherwise name it.
    assert after_mark <= DEADLINE + SLACK, f"took {after_mark:.1f} s:\n{out}"
    assert "rank 0 finished" not in out


@pytest.mark.parametrize(
    "n, mode, launcher",
    [(2, "absent-busy", "mpiexec"), (3, "absent-busy", "mpiexec"),
     (2, "absent-busy", "distoptrun")],
)  # fmt: skip
def test_rank_never_creating_the_strategy_aborts_at_the_deadline(tmp_path, n, mode, launcher):
    code, out, after_mark, _ = launch(tmp_path, n, mode, launcher)
    assert code == DEADLINE_EXIT_CODE, out
    assert "collective deadline exceeded on rank 0" in out
    assert "`MPIStrategy creation` (duplicating the communicator) did not complete within " \
           f"collective_timeout={DEADLINE:g} s" in out  # fmt: skip
    assert f"arrived: {others(n)}" in out
    assert "rank 1: has not started creating its MPIStrategy" in out
    assert "rank 0 finished" not in out
    assert DEADLINE <= after_mark <= DEADLINE + SLACK, f"took {after_mark:.1f} s:\n{out}"
    print(f"ended {after_mark:.2f} s after rank 0 reached the creation")


@pytest.mark.parametrize(
    "n, launcher, mode",
    [(2, "mpiexec", "absent-exit"), (3, "mpiexec", "absent-exit"),
     (4, "mpiexec", "absent-exit"), (2, "distoptrun", "absent-exit"),
     (4, "distoptrun", "absent-exit"), (2, "mpiexec", "absent-exit-uninitialised"),
     (4, "mpiexec", "absent-exit-uninitialised")],
)  # fmt: skip
def test_rank_exiting_before_creating_the_strategy_ends_the_job(tmp_path, n, launcher, mode):
    code, out, after_mark, _ = launch(tmp_path, n, mode, launcher, deadline=LONG_DEADLINE)
    assert code == DEPARTED_EXIT_CODE, out
    assert f"distopt: rank 1 of {n} exited while rank " in out, out
    assert "waits for it in `MPIStrategy creation` (duplicating the communicator)" in out, out
    assert f"arrived: {others(n)}" in out, out
    assert "rank 1: exited before creating its MPIStrategy" in out, out
    assert "deadline exceeded" not in out and "rank 0 finished" not in out, out
    assert after_mark <= SLACK, f"took {after_mark:.1f} s after the exit:\n{out}"
    print(f"ended {after_mark:.2f} s after rank 1 exited")


@pytest.mark.parametrize(
    "n, mode",
    [(2, "absent-raise"), (3, "absent-raise"), (2, "absent-raise-uninitialised")],
)
def test_rank_raising_before_creating_the_strategy_ends_the_job(tmp_path, n, mode):
    """Under a plain mpiexec, `import distopt` alone makes an exception abort the job."""
    code, out, after_mark, _ = launch(tmp_path, n, mode, deadline=LONG_DEADLINE)
    assert code == 1, out
    assert f"distopt: unhandled ValueError on rank 1 of {n}; aborting the job" in out, out
    assert "ValueError: boom before" in out, out
    assert "deadline exceeded" not in out and "rank 0 finished" not in out, out
    assert after_mark <= SLACK, f"took {after_mark:.1f} s after the exception:\n{out}"


def test_deadline_from_the_environment(tmp_path):
    code, out, after_mark, _ = launch(tmp_path, 2, "env", env={TIMEOUT_ENV: "2"})
    assert code != 0 and "collective_timeout=2 s" in out, out
    assert after_mark <= 2 + SLACK


PYTEST_STALL = r"""
import time

import numpy as np
import distopt
from distopt.distribute import MPIStrategy


def test_one_rank_stalls_or_skips_a_step():
    strategy = MPIStrategy(collective_timeout=DEADLINE)
    with strategy.scope():
        w = distopt.Variable(np.zeros(3), name="w")
        opt = distopt.optimizers.SGD(learning_rate=0.1)
    for step in range(3):
        if strategy.communicator.rank == 1 and step == 1:
            if "MODE" == "skip":
                continue  # then rank 1's test, run and process end
            time.sleep(60)
        strategy.run(lambda: opt.apply_gradients([(np.ones(3), w)]))
"""


@pytest.mark.parametrize(
    "capture, mode", [("fd", "stall"), ("sys", "stall"), ("no", "stall"), ("fd", "skip")]
)
def test_abort_message_survives_pytests_output_capture(tmp_path, capture, mode):
    """A stall (the deadline), or a rank that skips a step and exits (its departure), inside a
    test run under pytest: the abort ends the process before pytest shows what it captured,
    so the message must go to the real stderr, once."""
    deadline = DEADLINE if mode == "stall" else LONG_DEADLINE
    text = PYTEST_STALL.replace("DEADLINE", str(deadline)).replace("MODE", mode)
    (tmp_path / "test_stall.py").write_text(text)
    e = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    e.pop(TIMEOUT_ENV, None)
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           f"--capture={capture}", "test_stall.py"]  # fmt: skip
    proc = run_job(cmd, timeout=JOB_TIMEOUT, env=e, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    if mode == "stall":
        assert proc.returncode == DEADLINE_EXIT_CODE, out
        assert out.count("collective deadline exceeded on rank 0 of 2") == 1, out
        assert "`gradient aggregation` at step 2 (collective #3) did not complete" in out, out
    else:
        assert proc.returncode == DEPARTED_EXIT_CODE, out
        assert out.count("distopt: rank 1 of 2 exited while rank 0 waits for it") == 1, out
        assert "`gradient aggregation` at step 3 (collective #4)" in out, out
        assert "rank 1: finished its script and exited after collective #3" in out, out


@pytest.mark.parametrize("launcher", ["mpiexec", "distoptrun"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_rank_raising_aborts_the_job(tmp_path, n, launcher):
    code, out, after_mark, _ = launch(tmp_path, n, "raise", launcher)
    assert code != 0, out
    assert "RuntimeError: boom on rank 1" in out
    assert "Traceback (most recent call last)" in out
    if launcher == "mpiexec":
        assert f"distopt: unhandled RuntimeError on rank 1 of {n}; aborting the job" in out
    else:
        assert "distoptrun: unhandled exception on rank 1; aborting the job." in out
    assert "deadline exceeded" not in out  # ended by the abort, not by the deadline
    assert after_mark <= SLACK, f"took {after_mark:.1f} s after the exception:\n{out}"


def test_unhandled_mismatch_ends_the_job(tmp_path):
    code, out, after_mark, _ = launch(tmp_path, 3, "mismatch")
    assert code != 0, out
    assert "CollectiveMismatchError: Ranks disagree about `gradient aggregation`" in out
    assert "`w` shape: ranks 0, 2: (3,); rank 1: (4,)" in out
    assert after_mark <= SLACK


@pytest.mark.parametrize(
    "value, env, message",
    [
        (0, None, "Received: collective_timeout=0"),
        (-1.0, None, "Received: collective_timeout=-1.0"),
        ("10", None, "Received: collective_timeout='10'"),
        (True, None, "Received: collective_timeout=True"),
        (math.nan, None, "Received: collective_timeout=nan"),
        (None, "soon", f"Received: {TIMEOUT_ENV}='soon'"),
        (None, "0", f"Received: {TIMEOUT_ENV}='0'"),
    ],
)
def test_bad_timeouts(monkeypatch, value, env, message):
    if env is None:
        monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(TIMEOUT_ENV, env)
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_timeout(value)


def test_timeout_sources(monkeypatch):
    from distopt.distribute import MPIStrategy

    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert resolve_timeout(None) == 600.0
    assert resolve_timeout(math.inf) == math.inf
    monkeypatch.setenv(TIMEOUT_ENV, " 45 ")
    assert resolve_timeout(None) == 45.0 and resolve_timeout(5) == 5.0
    assert MPIStrategy().collective_timeout == 45.0
    assert MPIStrategy(collective_timeout=7).collective_timeout == 7.0


def test_explain_limits_its_length():
    sigs = [Signature(1, "", [(f"v{i}", (i + r,), "float32") for i in range(30)]) for r in range(2)]
    everyone = [{"op": s.op, "detail": s.detail, "seq": 1, "step": 1,
                 "items": [[n, list(sh), t] for n, sh, t in s.items]} for s in sigs]  # fmt: skip
    text = explain(everyone)
    assert "... and 18 more differences" in text
    assert sigs[0].digest != sigs[1].digest and 0 <= sigs[0].digest < 2**62
