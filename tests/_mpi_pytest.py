"""Runs the `mpi`-marked tests on this rank (started by run_all.py under mpiexec).

Rank 0 prints the usual report; other ranks print only their failures. Every rank writes a
JUnit report so run_all.py counts each rank's results.
"""

import os
import sys
from pathlib import Path

import pytest
from mpi4py import MPI

rank = MPI.COMM_WORLD.Get_rank()
size = MPI.COMM_WORLD.Get_size()
reports = Path(os.environ.get("DISTOPT_TEST_REPORTS", "reports/mpi"))
reports.mkdir(parents=True, exist_ok=True)
args = ["-m", "mpi", "--with-mpi", f"--junitxml={reports / f'rank{rank}.xml'}", *sys.argv[1:]]
if rank != 0:
    args += ["-q", "--no-header", "-rfE", "--tb=short"]
code = pytest.main(args)
sys.exit(0 if code == 5 else code)
