"""launch/slurm.sbatch, unchanged, on a 2-node Slurm cluster made of namespaced hosts."""

from __future__ import annotations

import re
import time

import pytest
from _cluster import ROOT, VENV_BIN, require  # noqa: F401 (fixtures)
from _hosts import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

SLURM_CONF = """ClusterName=distopt
SlurmctldHost=node1
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool-%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
NodeName=node[1-2] CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    require("slurmctld", "slurmd", "munged", "sbatch", "srun")
    tmp = tmp_path_factory.mktemp("slurm")
    tmp.chmod(0o755)
    (tmp / "state").mkdir()
    etc = tmp / "etc"
    etc.mkdir()
    (etc / "slurm.conf").write_text(SLURM_CONF.format(dir=tmp))
    (etc / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n")
    key = tmp / "munge.key"
    key.write_bytes(bytes(range(256)) * 4)
    key.chmod(0o400)
    files = {"/etc/slurm": etc}
    with Cluster(tmp / "hosts", ["node1", "node2"], files=files) as cluster:
        for host in cluster.hosts.values():
            host.run(["munged", "--force", f"--key-file={key}",
                      f"--seed-file={tmp}/munge-{host.name}.seed",
                      f"--log-file={tmp}/munge-{host.name}.log"])  # fmt: skip
        cluster.hosts["node1"].run(["slurmctld"])
        for host in cluster.hosts.values():
            host.run(["slurmd"])
        deadline = time.monotonic() + 60
        node1 = cluster.hosts["node1"]
        while "idle" not in node1.run(["sinfo", "-h", "-o", "%T %D"], check=False).stdout:
            if time.monotonic() > deadline:
                logs = "".join(p.read_text()[-2000:] for p in tmp.glob("slurm*.log"))
                raise RuntimeError(f"Slurm did not come up: {logs}")
            time.sleep(0.5)
        cluster.tmp = tmp
        yield cluster


def test_slurm_sbatch_unchanged_from_another_folder(slurm, tmp_path):
    tmp_path.chmod(0o755)
    node1 = slurm.hosts["node1"]
    out = node1.run(
        ["env", f"PATH={VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "sbatch", "--wait",
         f"--output={tmp_path}/job.out", f"--chdir={tmp_path}",
         str(ROOT / "launch" / "slurm.sbatch")],
        check=False, timeout=400,
    )  # fmt: skip
    log = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
    assert out.returncode == 0, f"{out.stdout}{out.stderr}\n{log}"
    assert "4 ranks on 2 node(s)" in log, log
    assert "weights identical on all 4 ranks: True" in log, log


def test_ranks_on_every_node_report_within_the_start_deadline(slurm):
    """No -H inside an allocation: the ranks on node2 must still reach the launcher."""
    out = slurm.hosts["node1"].run(
        ["salloc", "-N2", "--exclusive", str(VENV_BIN / "distoptrun"), "-np", "4",
         "--start-timeout", "15", "python", "-c",
         "import time, socket; time.sleep(25); print('done', socket.gethostname())"],
        check=False, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    # the ranks' own lines (UCX may print warnings on stdout too)
    # (and the ranks' lines may interleave)
    done = re.findall(r"done (node\d)", out.stdout)
    assert sorted(done) == ["node1", "node1", "node2", "node2"], out.stdout


def test_srun_mpi_none_trap_is_stopped_and_pmi2_runs(slurm):
    node1 = slurm.hosts["node1"]
    code = ("from distopt.distribute import MPIStrategy; s = MPIStrategy(); "
            "print('size', s.num_replicas_in_sync)")  # fmt: skip
    python = str(VENV_BIN / "python")
    out = node1.run(["srun", "-N2", "-n2", "--mpi=none", python, "-c", code],
                    check=False, timeout=120)  # fmt: skip
    assert out.returncode != 0 and "Slurm started 2 tasks" in out.stderr, out.stdout + out.stderr
    assert "srun --mpi=pmi2" in out.stderr
    out = node1.run(["srun", "-N2", "-n2", "--mpi=pmi2", python, "-c", code],
                    check=False, timeout=120)  # fmt: skip
    assert out.returncode == 0 and out.stdout.split().count("2") == 2, out.stdout + out.stderr


def test_nodes_are_separate_hosts(slurm):
    out = slurm.hosts["node1"].run(["srun", "-N2", "-n2", "hostname"], timeout=60)
    assert sorted(out.stdout.split()) == ["node1", "node2"]


def test_aborted_sbatch_job_leaves_no_segment_on_either_node(slurm, tmp_path):
    tmp_path.chmod(0o755)
    program = tmp_path / "abort.py"
    program.write_text(
        "from mpi4py import MPI; import numpy as np; c = MPI.COMM_WORLD\n"
        "b = np.ones(1 << 16); c.Allreduce(MPI.IN_PLACE, b)\n"
        "if c.rank == c.size - 1: raise ValueError('boom on the last node')\n"
        "c.Barrier()\n"
    )
    out = slurm.hosts["node1"].run(
        ["env", f"PATH={VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "sbatch", "--wait",
         f"--output={tmp_path}/job.out", f"--chdir={tmp_path}",
         str(ROOT / "launch" / "slurm.sbatch"), str(program)],
        check=False, timeout=300,
    )  # fmt: skip
    log = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
    assert out.returncode != 0 and "ValueError: boom on the last node" in log, log
    for host in slurm.hosts.values():
        left = host.sh("ls /dev/shm").stdout.split()
        assert not [n for n in left if n.startswith("mpich_shm_")], (host.name, left, log)
    # the ranks shared memory on each node, so each node had segments to remove
    for name in slurm.hosts:
        assert re.search(rf"distoptrun: {name}: removed \d+ shared-memory segment", log), log
