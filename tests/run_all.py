"""The whole test suite: single-process tests, the docs tests, then the MPI tests under a
real `mpiexec` at 1, 2, 3 and 4 ranks (oversubscribed), each test with a timeout.

Usage: python tests/run_all.py [--sizes 1,2,3,4] [extra pytest args]
Prints a closing line `N passed, N failed, N skipped` summed over every run; exits non-zero
if any run failed, timed out, or ran no test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's distopt

from distopt.launch import _shm_cleanup  # noqa: E402
from distopt.launch._procs import JobWatch  # noqa: E402

REPORTS = ROOT / "reports"
TEST_TIMEOUT = 120  # seconds per test
RUN_TIMEOUT = 900  # seconds per run (runs take ~1 min): 6 runs stay inside CI's 90 minutes
DOCS_TESTS = "tests/test_docs_*.py"


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        sys.exit("mpiexec not found: install MPI with `pip install mpich mpi4py`.")
    return found


def counts(xml: Path) -> tuple[int, int, int]:
    root = ET.parse(xml).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return tests - failed - skipped, failed, skipped


def run(cmd: list[str], env: dict, label: str) -> bool:
    print(f"\n=== {label}: {' '.join(cmd)}", flush=True)
    start = time.monotonic()
    before = _shm_cleanup.snapshot()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    watch = JobWatch(proc.pid, interval=0.1)  # the run's processes and the segments they map
    try:
        code = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        watch.kill_all()  # mpiexec, and the ranks it started in sessions of their own
        proc.wait()
        print(f"=== {label}: TIMED OUT after {RUN_TIMEOUT} s", flush=True)
        return False
    finally:
        # The abort tests end MPI jobs on purpose; MPICH leaves their segments behind. Only
        # this run's are removed: other jobs on the machine may be using theirs.
        watch.wait_gone(10.0)
        watch.stop()
        files, size = _shm_cleanup.remove_leftovers(before, ours=watch.segments)
        if files:
            print(f"=== {label}: removed {files} leftover MPI segments ({size >> 20} MB)")
    print(f"=== {label}: exit {code} in {time.monotonic() - start:.1f} s", flush=True)
    return code in (0, 5)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,2,3,4")
    parser.add_argument("--no-single", action="store_true", help="skip the single-process run")
    args, extra = parser.parse_known_args()
    shutil.rmtree(REPORTS, ignore_errors=True)
    REPORTS.mkdir()
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")  # fmt: skip
    # This checkout's package first, whatever else is installed.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # A test that desynchronises the ranks blocks inside MPI, where pytest-timeout's signal
    # cannot interrupt it: the collective deadline aborts the run instead, naming the cause.
    env.setdefault("DISTOPT_COLLECTIVE_TIMEOUT", str(TEST_TIMEOUT))
    ok = True
    base = [sys.executable, "-m", "pytest", f"--timeout={TEST_TIMEOUT}", *extra]
    if not args.no_single:
        xml = REPORTS / "single.xml"
        ignore_docs = f"--ignore-glob={ROOT / DOCS_TESTS}"
        marks = "not mpi and not cluster"  # cluster tests: .ci/cluster
        ok &= run([*base, "-m", marks, ignore_docs, f"--junitxml={xml}"], env, "single process")
        # The docs tests run every code block (some under mpiexec) and build the site: their
        # own run, with its own time budget.
        docs = sorted(str(p) for p in ROOT.glob(DOCS_TESTS))
        xml = REPORTS / "docs.xml"
        ok &= run([*base, "-m", marks, *docs, f"--junitxml={xml}"], env, "docs")
    for n in [int(s) for s in args.sizes.split(",") if s]:
        cmd = [mpiexec(), "-n", str(n), sys.executable, str(ROOT / "tests" / "_mpi_pytest.py"),
               f"--timeout={TEST_TIMEOUT}", *extra]  # fmt: skip
        ok &= run(cmd, dict(env, DISTOPT_TEST_REPORTS=str(REPORTS / f"mpi{n}")), f"{n} ranks")
    totals = [0, 0, 0]
    for xml in sorted(REPORTS.rglob("*.xml")):
        p, f, s = counts(xml)
        print(f"  {xml.relative_to(REPORTS)}: {p} passed, {f} failed, {s} skipped")
        totals = [totals[0] + p, totals[1] + f, totals[2] + s]
    if totals[0] + totals[1] == 0:
        ok = False
    print(f"{totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")
    return 0 if ok and totals[1] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
