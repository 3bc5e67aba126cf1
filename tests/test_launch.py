"""distoptrun: argv building, the three program forms, and abort-on-exception."""

import re
import shlex
import sys
import time

import pytest
from conftest import run_distoptrun

from distopt.launch import _shm_cleanup, build_command
from distopt.launch._cli import _program_argv, find_mpiexec, mpi_vendor

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
        "from mpi4py import MPI\n"
        "if MPI.COMM_WORLD.rank == 1:\n"
        "    raise ValueError('boom on rank one')\n"
        "MPI.COMM_WORLD.Barrier()  # the others would wait here forever\n"
    )
    start = time.monotonic()
    before = _shm_cleanup.snapshot()
    out = run_distoptrun(3, str(script), timeout=60)
    report = f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert out.returncode != 0, report
    assert "ValueError: boom on rank one" in out.stderr, report
    assert "unhandled exception on rank 1" in out.stderr, report
    assert time.monotonic() - start < 30, report
    # MPI_Abort leaves MPICH's segment in /dev/shm; distoptrun removes it. Another job on
    # this machine may hold new segments of its own, but none may be left unused.
    left = _shm_cleanup.snapshot() - before
    assert not left - _shm_cleanup._in_use(_shm_cleanup.SHM_DIR), (left, report)
    if mpi_vendor(find_mpiexec()) == "mpich":
        assert re.search(r"distoptrun: removed \d+ shared-memory segment", out.stderr), report


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
