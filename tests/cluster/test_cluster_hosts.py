"""distoptrun across two namespaced hosts over real ssh: placement, deadlines, cleanup."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from _cluster import ROOT, SSH_PORT, VENV_BIN, ssh_cluster  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

EXAMPLE = str(ROOT / "examples" / "mlp_classification.py")
STEPS = """
import sys, time
import numpy as np, distopt
from distopt.distribute import MPIStrategy
s = MPIStrategy()
with s.scope():
    v = distopt.Variable(np.zeros(1000))
    opt = distopt.optimizers.SGD(learning_rate=0.1)
g = np.ones(1000)
for step in range(100000):
    s.run(lambda: opt.apply_gradients([(g, v)]))
    if s.communicator.rank == 0 and step % 20 == 0:
        print(f"step {step}", flush=True)
    time.sleep(0.01)
"""


def distoptrun(cluster, *argv: str) -> list[str]:
    return [str(VENV_BIN / "distoptrun"), "--ssh-port", str(SSH_PORT),
            "--ssh-identity", str(cluster.identity), *argv]  # fmt: skip


def digest(out: subprocess.CompletedProcess) -> str:
    found = re.search(r"weights identical on all 4 ranks: True \(sha256 (\w+)\)", out.stdout)
    assert found, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return found.group(1)


def test_two_hosts_train_bitwise_as_one_host(ssh_cluster):
    node1 = ssh_cluster.hosts["node1"]
    args = [EXAMPLE, "--epochs", "2"]
    spread = node1.run(distoptrun(ssh_cluster, "-np", "4", "-H", "node1:2,node2:2",
                                  "--iface", "eth0", *args), timeout=240)  # fmt: skip
    hostnames = node1.run(distoptrun(ssh_cluster, "-np", "4", "-H", "node1:2,node2:2",
                                     "hostname"), timeout=120)  # fmt: skip
    assert sorted(hostnames.stdout.split()) == ["node1", "node1", "node2", "node2"]
    alone = node1.run(distoptrun(ssh_cluster, "-np", "4", "-H", "node1:4", *args), timeout=240)
    assert digest(spread) == digest(alone)


def test_host_killed_mid_run_ends_the_job_within_the_deadline(ssh_cluster):
    node1, node2 = ssh_cluster.hosts["node1"], ssh_cluster.hosts["node2"]
    deadline = 20
    job = node1.popen(
        distoptrun(ssh_cluster, "-np", "4", "-H", "node1:2,node2:2",
                   "-x", f"DISTOPT_COLLECTIVE_TIMEOUT={deadline}", "python", "-c", STEPS),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in job.stdout:
            if line.startswith("step 40"):
                break
        else:
            pytest.fail(f"the job ended before training: {job.wait()} {job.stderr.read()}")
        node2.kill()
        killed = time.monotonic()
        code = job.wait(timeout=deadline + 90)
        elapsed = time.monotonic() - killed
    finally:
        if job.poll() is None:
            job.kill()
    stderr = job.stderr.read()
    assert code != 0, stderr
    assert elapsed < deadline + 60, (elapsed, stderr)


def test_unreachable_launcher_ends_at_the_start_deadline_naming_the_host(ssh_cluster, tmp_path):
    node1, node2 = ssh_cluster.hosts["node1"], ssh_cluster.hosts["node2"]
    # node2 resolves node1 to an address whose packets go to no one (a static neighbour
    # entry, so not even "no route to host" comes back): its MPI proxy's connection hangs,
    # which left rank 0 waiting in MPI_Init for ever.
    wrong = tmp_path / "hosts.node2"
    wrong.write_text(ssh_cluster.hosts_file().replace(f"{node1.address} ", "198.18.0.99 "))
    node2.run(["mount", "--bind", str(wrong), "/etc/hosts"])
    node2.run(["ip", "neigh", "add", "198.18.0.99", "lladdr", "02:00:00:00:00:99",
               "dev", "eth0", "nud", "permanent"])  # fmt: skip
    start = time.monotonic()
    out = node1.run(
        distoptrun(ssh_cluster, "-np", "2", "-H", "node1:1,node2:1", "--start-timeout", "15",
                   "python", "-c", "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"),
        check=False, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert out.returncode == 88, (out.returncode, out.stderr)
    assert "1 of 2 ranks did not start within 15 s" in out.stderr, out.stderr
    assert "host(s) that did not start: node2 (ranks 1)" in out.stderr, out.stderr
    assert "Ranks started on: node1" in out.stderr, out.stderr
    assert elapsed < 15 + 45, elapsed


def test_aborted_job_leaves_no_segment_on_any_host(ssh_cluster):
    node1, node2 = ssh_cluster.hosts["node1"], ssh_cluster.hosts["node2"]
    code = (
        "from mpi4py import MPI; import numpy as np; c = MPI.COMM_WORLD\n"
        "b = np.ones(1 << 16); c.Allreduce(MPI.IN_PLACE, b)\n"
        "if c.rank == 3: raise ValueError('boom on node2')\n"
        "c.Barrier()\n"
    )
    out = node1.run(distoptrun(ssh_cluster, "-np", "4", "-H", "node1:2,node2:2",
                               "python", "-c", code), check=False, timeout=120)  # fmt: skip
    assert out.returncode != 0 and "ValueError: boom on node2" in out.stderr, out.stderr
    for host in (node1, node2):
        left = host.sh("ls /dev/shm").stdout.split()
        assert not [n for n in left if n.startswith("mpich_shm_")], (host.name, left, out.stderr)
    assert re.search(r"distoptrun: node2: removed \d+ shared-memory segment", out.stderr), (
        out.stderr
    )
