"""Exit notices received before MPI_Finalize: no "unexpected tag-receive descriptor" noise.

The ranks talk over UCX as ranks on different hosts do (`MPIR_CVAR_NOLOCAL=1` turns MPICH's
shared memory off), where every notice a peer never received draws one UCX warning at exit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from _mpi_jobs import run_job

MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
WARNING = "unexpected tag-receive descriptor"
# Registered before `import distopt`, this hook runs after distopt's own exit hooks (atexit
# runs last-in first-out), just before MPI_Finalize: it prints whom this rank heard from.
PROGRAM = """
import atexit, sys

def report():
    from distopt.collectives import _deadline, _departure
    side = [sorted(m.exited) for m in _deadline._WATCHDOG._snapshot()]
    print(f"rank {rank} heard side {side} world {sorted(_departure._gone)}", flush=True)

atexit.register(report)

import numpy as np, distopt
from distopt.distribute import MPIStrategy
s = MPIStrategy()
rank = s.communicator.rank
with s.scope():
    v = distopt.Variable(np.zeros(10))
    opt = distopt.optimizers.SGD(learning_rate=0.1)
s.run(lambda: opt.apply_gradients([(np.ones(10), v)]))
if sys.argv[1] == "late" and rank == 0:
    # the peers wait for its notices at their exit; its watchdog receives theirs meanwhile
    import time; time.sleep(1.5)
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("np_", [2, 3])
@pytest.mark.parametrize("mode", ["together", "late"])
def test_peers_exit_notices_are_received_before_finalize(np_, mode):
    env = {**os.environ, "MPIR_CVAR_NOLOCAL": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [MPIEXEC, "-n", str(np_), sys.executable, "-c", PROGRAM, mode]
    proc = run_job(cmd, timeout=90, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert WARNING not in out, out
    for rank in range(np_):
        peers = [p for p in range(np_) if p != rank]
        assert f"rank {rank} heard side [{peers}] world {peers}" in out, out
