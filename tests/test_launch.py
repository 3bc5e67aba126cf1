"""distoptrun: argv building, the three program forms, and abort-on-exception."""

import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import run_distoptrun

from distopt.launch import _job, _procs, _shm_cleanup, build_command
from distopt.launch._cli import _program_argv, find_mpiexec, mpi_vendor
from distopt.launch._runner import exit_status

RUNNER = ["-m", "distopt.launch._runner"]


def test_program_forms():
    assert _program_argv(["train.py", "--x", "1"], None) == [
        sys.executable,
        *RUNNER,
        "train.py",
        "--x",
        "1",
    ]
    assert _program_argv(["--x"], "pkg.train") == [
        sys.executable,
        *RUNNER,
        "-m",
        "pkg.train",
        "--x",
    ]
    assert _program_argv(["python", "-c", "print(1)"], None) == [
        sys.executable,
        *RUNNER,
        "-c",
        "print(1)",
    ]
    assert _program_argv(["python3", "t.py"], None) == [sys.executable, *RUNNER, "t.py"]
    assert _program_argv(["hostname"], None) == ["hostname"]


def test_vendor_flags():
    cmd = build_command(3, ["t.py"], mpiexec="/x/mpiexec", vendor="openmpi", hostfile="h")
    assert cmd[:4] == ["/x/mpiexec", "-n", "3", "--oversubscribe"]
    assert cmd[cmd.index("--hostfile") + 1] == "h"
    cmd = build_command(2, ["t.py"], mpiexec="/x/mpiexec", vendor="mpich", hostfile="h")
    assert cmd[:3] == ["/x/mpiexec", "-n", "2"] and cmd[cmd.index("-f") + 1] == "h"


def test_bad_np_is_a_clear_error():
    with pytest.raises(SystemExit, match="-np must be a positive integer"):
        build_command(0, ["t.py"], mpiexec="/x/mpiexec", vendor="mpich")


def test_dry_run_prints_the_full_command():
    out = run_distoptrun(2, "--dry-run", "train.py", "--epochs", "3")
    assert out.returncode == 0
    argv = shlex.split(out.stdout.strip())
    assert argv[1:3] == ["-n", "2"] and argv[-3:] == ["train.py", "--epochs", "3"]
    assert "distopt.launch._runner" in argv


@pytest.mark.parametrize("form", [["python", "-c"], ["-m"]])
def test_runs_each_form(form, tmp_path):
    code = (
        "from mpi4py import MPI; c = MPI.COMM_WORLD; print(f'rank {c.rank} of {c.size}\\n', end='')"
    )
    if form == ["-m"]:
        (tmp_path / "hello_mod.py").write_text(code)
        out = run_distoptrun(3, "-m", "hello_mod", env={"PYTHONPATH": str(tmp_path)})
    else:
        out = run_distoptrun(3, *form, code)
    assert out.returncode == 0, out.stderr
    assert sorted(line for line in out.stdout.splitlines() if line.startswith("rank")) == [
        f"rank {r} of 3" for r in range(3)
    ]


def test_exception_on_one_rank_ends_the_job(tmp_path):
    script = tmp_path / "boom.py"
    script.write_text(
        "import sys\n"
        "from mpi4py import MPI\n"
        "segments = sorted({line.split()[-1] for line in open('/proc/self/maps')\n"
        "                   if '/dev/shm/' in line and '(deleted)' not in line})\n"
        "sys.stdout.write(' '.join(['SEGMENTS', *segments]) + '\\n')  # one write: whole lines\n"
        "if MPI.COMM_WORLD.rank == 1:\n"
        "    raise ValueError('boom on rank one')\n"
        "MPI.COMM_WORLD.Barrier()  # the others would wait here forever\n"
    )
    start = time.monotonic()
    out = run_distoptrun(3, str(script), timeout=60)
    took = time.monotonic() - start
    report = f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert out.returncode != 0, report
    assert "ValueError: boom on rank one" in out.stderr, report
    assert "unhandled exception on rank 1" in out.stderr, report
    assert took < 30, report
    # MPI_Abort leaves the job's segments (those its ranks mapped) in /dev/shm: distoptrun
    # removes exactly those, whatever other jobs on this machine hold or leave.
    ours = {s for line in out.stdout.splitlines() if line.startswith("SEGMENTS")
            for s in line.split()[1:]}  # fmt: skip
    assert not [s for s in ours if os.path.exists(s)], report
    if mpi_vendor(find_mpiexec()) == "mpich":  # which keeps its segment file until Finalize
        assert ours, report
        assert f"distoptrun: removed {len(ours)} shared-memory segment" in out.stderr, report


def test_nonzero_sys_exit_on_one_rank_ends_the_job():
    code = (
        "import sys; from mpi4py import MPI\n"
        "if MPI.COMM_WORLD.rank == 0: sys.exit(3)\n"
        "MPI.COMM_WORLD.Barrier()\n"
    )
    out = run_distoptrun(2, "python", "-c", code, timeout=60)
    assert out.returncode != 0 and "exited with status 3" in out.stderr


SGD_SUM = """
import numpy as np, distopt
from distopt.distribute import MPIStrategy
s = MPIStrategy(); r = s.communicator.rank
with s.scope():
    v = distopt.Variable([0.0, 0.0], dtype="float64")
    opt = distopt.optimizers.SGD(learning_rate=1.0)
g = np.array([r + 1, 10 * (r + 1)], dtype=np.float64)
s.run(lambda: opt.apply_gradients([(g, v)], skip_gradients_aggregation=SKIP))
print(f"rank {r} {v.numpy().tolist()}\\n", end="")
"""


@pytest.mark.parametrize("skip", [False, True])
def test_issue_two_sgd_under_distoptrun(skip):
    out = run_distoptrun(2, "python", "-c", SGD_SUM.replace("SKIP", str(skip)))
    assert out.returncode == 0, out.stderr
    lines = sorted(line for line in out.stdout.splitlines() if line.startswith("rank"))
    if skip:
        assert lines == ["rank 0 [-1.0, -10.0]", "rank 1 [-2.0, -20.0]"]
    else:
        assert lines == ["rank 0 [-3.0, -30.0]", "rank 1 [-3.0, -30.0]"]


def test_cross_replica_error_on_every_rank_without_hang():
    code = """
import numpy as np, distopt
from distopt.distribute import MPIStrategy
s = MPIStrategy()
with s.scope():
    v = distopt.Variable([0.0]); opt = distopt.optimizers.SGD(1.0)
    try:
        opt.apply_gradients([(np.ones(1), v)])
    except RuntimeError as e:
        print(f"rank {s.communicator.rank} RuntimeError {str(e)[:40]}\\n", end="")
"""
    out = run_distoptrun(2, "python", "-c", code, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(line for line in out.stdout.splitlines() if line.startswith("rank")) == [
        f"rank {r} RuntimeError `apply_gradients()` cannot be called in " for r in range(2)
    ]


def test_example_trains_on_two_ranks():
    out = run_distoptrun(2, "examples/mlp_classification.py", "--epochs", "5", timeout=180)
    assert out.returncode == 0, out.stderr
    assert "weights identical on all 2 ranks: True" in out.stdout
    acc = float(out.stdout.split("final accuracy")[1].split()[0])
    assert acc > 0.9
    assert out.stdout.count("loss") == 5


def test_cleanup_removes_only_new_unused_mpi_segments(tmp_path):
    (tmp_path / "mpich_shm_old").write_bytes(b"x")
    (tmp_path / "unrelated_file").write_bytes(b"x")
    before = _shm_cleanup.snapshot(tmp_path)
    assert before == {"mpich_shm_old"}
    for name in ("mpich_shm_new", "vader_segment.h.1.0", "mpich_shm_open", "not_mpi"):
        (tmp_path / name).write_bytes(b"x" * 1000)
    with open(tmp_path / "mpich_shm_open", "rb"):  # held by a live process: ours
        files, size = _shm_cleanup.remove_leftovers(before, tmp_path, wait=0.2)
    assert (files, size) == (2, 2000)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mpich_shm_old", "mpich_shm_open", "not_mpi", "unrelated_file"
    ]  # fmt: skip
    assert _shm_cleanup.remove_leftovers(before, tmp_path / "missing") == (0, 0)


SIGNAL_JOB = r"""
import os, signal, sys, time
from mpi4py import MPI

rank = MPI.COMM_WORLD.rank
if rank == 1:  # deaf to the signal: only the escalation can end it
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
segments = sorted({line.split()[-1] for line in open("/proc/self/maps") if "/dev/shm/" in line
                   and "(deleted)" not in line})
sys.stdout.write(" ".join(["READY", str(rank), str(os.getpid()), *segments]) + "\n")
while True:
    time.sleep(0.05)
"""


def _start_job(tmp_path, np_, script, *args):
    """Starts `distoptrun -np N script` with output to a file; returns (process, output
    file, {rank: (pid, [segment paths])}) once every rank has printed its READY line."""
    (tmp_path / "job.py").write_text(script)
    log = tmp_path / "job.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "distopt.launch", "-np", str(np_), str(tmp_path / "job.py")]
    with open(log, "w") as out:
        proc = subprocess.Popen([*cmd, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    end = time.monotonic() + 60
    ready = {}
    try:
        while len(ready) < np_:
            assert proc.poll() is None and time.monotonic() < end, log.read_text()
            time.sleep(0.1)
            for line in log.read_text().splitlines():
                if line.startswith("READY "):
                    _, rank, pid, *segments = line.split()
                    ready[int(rank)] = (int(pid), segments)
    except BaseException:  # a job that never got ready must not outlive the test
        _kill(_job_processes(proc.pid))
        raise
    return proc, log, ready


def _job_processes(root: int) -> dict[int, int]:
    return {p: _procs.start_time(p) for p in _procs.descendants(root) | {root}}


def _alive(processes: dict[int, int]) -> list[int]:
    return [p for p, t in processes.items() if t is not None and _procs.start_time(p) == t]


def _kill(processes: dict[int, int]) -> None:
    for pid in _alive(processes):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_to_distoptrun_ends_every_process_of_the_job(tmp_path, sig):
    proc, log, ready = _start_job(tmp_path, 2, SIGNAL_JOB)
    processes = _job_processes(proc.pid)
    try:
        assert {pid for pid, _ in ready.values()} <= set(processes), (processes, ready)
        start = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        while _alive(processes) and time.monotonic() - start < 10:
            time.sleep(0.1)
        report = f"exit {code}\n{log.read_text()}"
        assert not _alive(processes), (_alive(processes), report)
        assert code == 128 + sig, report
        segments = {s for _, segs in ready.values() for s in segs}
        assert not [s for s in segments if os.path.exists(s)], report
    finally:
        _kill(processes)
        proc.wait(timeout=30)


DEAF_TREE = r"""
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                          "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)"],
                         start_new_session=True)  # as MPI starts its ranks
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
time.sleep(600)
"""


def test_job_escalates_to_sigkill_after_the_grace(tmp_path):
    """A tree that ignores SIGTERM, in a session of its own like MPI's ranks, is killed once
    the grace is over; the handlers in place before the run come back."""
    pids = tmp_path / "pids"
    handler = signal.getsignal(signal.SIGTERM)

    def send_when_ready():
        end = time.monotonic() + 60
        while not pids.exists() or len(pids.read_text().split()) < 2:
            if time.monotonic() > end:
                return
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=send_when_ready, daemon=True).start()
    start = time.monotonic()
    code = _job.run([sys.executable, "-c", DEAF_TREE, str(pids)], dict(os.environ), grace=1.0)
    took = time.monotonic() - start
    tree = [int(p) for p in pids.read_text().split()]
    assert code == 128 + signal.SIGTERM
    assert [p for p in tree if _procs.start_time(p) is not None] == []
    assert took < 60 and signal.getsignal(signal.SIGTERM) is handler


def test_exit_status_is_clamped_to_a_failure(tmp_path):
    assert [exit_status(c) for c in (1, 3, 255, 256, 512, 1000, -1, 0)] == [
        1, 3, 255, 255, 255, 255, 1, 1
    ]  # fmt: skip
    code = (
        "import sys; from mpi4py import MPI\n"
        "if MPI.COMM_WORLD.rank == 1: sys.exit(256)\n"
        "MPI.COMM_WORLD.Barrier()\n"
    )
    out = run_distoptrun(2, "python", "-c", code, timeout=60)
    assert out.returncode == 255, out.stderr
    assert "rank 1 exited with status 256; aborting the job (exit status 255" in out.stderr


OTHER_JOB_SEGMENT = r"""
import os, sys, time
from mpi4py import MPI

rank = MPI.COMM_WORLD.rank
segments = sorted({line.split()[-1] for line in open("/proc/self/maps") if "/dev/shm/" in line
                   and "(deleted)" not in line})
sys.stdout.write(" ".join(["READY", str(rank), str(os.getpid()), *segments]) + "\n")
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.05)
if rank == 1:
    raise ValueError("boom")
MPI.COMM_WORLD.Barrier()
"""


def test_cleanup_leaves_other_jobs_segments(tmp_path):
    """A segment that appears during the job, unused, but that no process of the job ever
    mapped (another job's, e.g. from a container with its own PID namespace) is kept."""
    go = tmp_path / "go"
    proc, log, ready = _start_job(tmp_path, 2, OTHER_JOB_SEGMENT, str(go))
    processes = _job_processes(proc.pid)
    other = _shm_cleanup.SHM_DIR / f"mpich_shm_otherjob{os.getpid()}_0"
    try:
        other.write_bytes(b"x" * 4096)
        go.write_text("")
        code = proc.wait(timeout=60)
        report = f"exit {code}\n{log.read_text()}"
        assert code == 1, report
        assert other.exists(), report
        ours = {s for _, segs in ready.values() for s in segs}
        assert ours and not [s for s in ours if os.path.exists(s)], report
        assert f"distoptrun: removed {len(ours)} shared-memory segment" in report, report
    finally:
        other.unlink(missing_ok=True)
        _kill(processes)
