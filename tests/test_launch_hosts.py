"""distoptrun's host, ssh, interface, environment and start-up options: argv and errors."""

import os
import shlex
import socket
import sys
import time

import pytest
from conftest import run_distoptrun

from distopt.launch import _job, _shm_cleanup, _startup, build_command
from distopt.launch._hosts import HostOptions, parse_env, parse_hosts, placement, read_hostfile

EXE = "/x/mpiexec"


def test_hosts_become_each_vendors_flags(tmp_path):
    hosts = HostOptions(hosts=parse_hosts("node1:2,node2:2"))
    cmd = build_command(4, ["t.py"], mpiexec=EXE, vendor="mpich", hosts=hosts)
    assert cmd[cmd.index("-hosts") + 1] == "node1:2,node2:2" and cmd[0] == EXE
    cmd = build_command(4, ["t.py"], mpiexec=EXE, vendor="openmpi", hosts=hosts)
    assert cmd[cmd.index("--host") + 1] == "node1:2,node2:2"


def test_ssh_options_reach_the_launcher(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key")
    hosts = HostOptions(hosts=[("n1", 1)], ssh_port=2222, ssh_identity=str(key))
    cmd = build_command(1, ["t.py"], mpiexec=EXE, vendor="mpich", hosts=hosts)
    # hydra has no ssh-arguments flag; it appends this variable's words to its ssh command
    assert cmd[:2] == ["env", f"HYDRA_LAUNCHER_EXTRA_ARGS=-p 2222 -i {key}"]
    assert cmd[2] == EXE
    cmd = build_command(1, ["t.py"], mpiexec=EXE, vendor="openmpi", hosts=hosts)
    assert cmd[cmd.index("plm_rsh_args") + 1] == f"-p 2222 -i {key}"


def test_iface_and_env_forwarding():
    iface = socket.if_nameindex()[0][1]
    hosts = HostOptions(iface=iface, env=parse_env(["A=1 2", "B"], {"B": "x"}))
    cmd = build_command(2, ["t.py"], mpiexec=EXE, vendor="mpich", hosts=hosts)
    text = shlex.join(cmd)
    assert f"-iface {iface} -genv UCX_NET_DEVICES {iface}" in text
    assert cmd[cmd.index("A") - 1 : cmd.index("A") + 2] == ["-genv", "A", "1 2"]
    assert cmd[cmd.index("B") - 1 : cmd.index("B") + 2] == ["-genv", "B", "x"]
    cmd = build_command(2, ["t.py"], mpiexec=EXE, vendor="openmpi", hosts=hosts)
    assert "A=1 2" in cmd and "B=x" in cmd and f"btl_tcp_if_include {iface}" in shlex.join(cmd)


def test_hostfile_forms_and_placement(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# cluster\nnode1:2\nnode2 slots=3\n\nnode3  # one slot\n")
    hosts = read_hostfile(str(f))
    assert hosts == [("node1", 2), ("node2", 3), ("node3", 1)]
    assert placement(hosts, 7) == ["node1"] * 2 + ["node2"] * 3 + ["node3", "node1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-H", "node1:x"], "bad host 'node1:x' in -H/--hosts"),
        (["-H", ","], "-H/--hosts got no host"),
        (["-H", "a", "--hostfile", "h"], "give -H/--hosts or --hostfile, not both"),
        (["--hostfile", "/nonexistent/hosts"], "cannot read --hostfile '/nonexistent/hosts'"),
        (["--ssh-port", "70000"], "--ssh-port must be in 1..65535. Received: 70000"),
        (["--ssh-identity", "/nonexistent/key"], "--ssh-identity '/nonexistent/key' is not a file"),
        (["--iface", "nosuchif0"], "--iface 'nosuchif0' is not an interface here"),
        (["-x", "1BAD"], "-x/--env expects NAME or NAME=VALUE. Received: '1BAD'"),
        (["-x", "DISTOPT_SURELY_UNSET"], "DISTOPT_SURELY_UNSET is not set in this environment"),
        (["--start-timeout", "-1"], "expected seconds >= 0"),
    ],
)
def test_bad_options_are_clear_errors_and_run_nothing(argv, message, tmp_path):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()"
    out = run_distoptrun(1, *argv, "python", "-c", code, timeout=60)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert not marker.exists()


def test_start_up_deadline_names_the_missing_hosts(capsys):
    """A watch with no rank reporting: the job (here a sleeping process) is ended in time."""
    watch = _startup.StartupWatch(3, 1.0, "127.0.0.1", ["n1", "n2", "n2"])
    try:
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", int(watch.address.split(":")[1]))) as c:
            c.sendall(f"{watch.token} 0 n1\n".encode())
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        code = _job.run(sleeper, dict(os.environ), grace=2.0, startup=watch)
        assert code == _startup.EXIT_NOT_STARTED
        assert time.monotonic() - start < 15
        message = watch.missing_message()
        assert message in capsys.readouterr().err
        assert "2 of 3 ranks did not start within 1 s" in message
        assert "n2 (ranks 1, 2)" in message and "Ranks started on: n1" in message
    finally:
        watch.close()


def test_start_up_report_ignores_wrong_tokens(monkeypatch):
    watch = _startup.StartupWatch(1, 5.0, "127.0.0.1", None)
    try:
        host, port, _ = watch.address.rsplit(":", 2)
        monkeypatch.setenv(_startup.ENV, f"{host}:{port}:wrongtoken")
        monkeypatch.setenv("PMI_RANK", "0")
        _startup.report()
        monkeypatch.setenv(_startup.ENV, watch.address)
        _startup.report()
        deadline = time.monotonic() + 10
        while not watch.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watch.started == {0: socket.gethostname()}
    finally:
        watch.close()


def test_every_rank_reports_under_distoptrun():
    out = run_distoptrun(3, "--start-timeout", "60", "python", "-c", "print('ok')")
    assert out.returncode == 0 and out.stdout.count("ok") == 3, out.stderr


def test_recent_segments_cleanup(tmp_path):
    old = tmp_path / "mpich_shm_old"
    new = tmp_path / "mpich_shm_new"
    other = tmp_path / "not_mpi"
    for f in (old, new, other):
        f.write_bytes(b"x" * 10)
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert _shm_cleanup.recent(60, tmp_path) == {"mpich_shm_new"}
    files, size = _shm_cleanup.remove_leftovers(
        set(), tmp_path, new=_shm_cleanup.recent(60, tmp_path)
    )
    assert (files, size) == (1, 10) and old.exists() and other.exists() and not new.exists()


def test_shipped_hostfile_example_reads():
    from conftest import ROOT

    example = str(ROOT / "launch" / "hostfile.example")
    assert read_hostfile(example) == [("node001", 4), ("node002", 4)]
    hosts = HostOptions(hostfile=example)
    cmd = build_command(8, ["t.py"], mpiexec=EXE, vendor="mpich", hosts=hosts)
    assert cmd[cmd.index("-f") + 1].endswith("launch/hostfile.example")


def test_reply_address_reaches_other_hosts_whenever_mpi_may_place_ranks_there():
    from distopt.launch._remote import reply_address

    assert reply_address(None, False, {}) == "127.0.0.1"
    assert reply_address(None, True, {}) == socket.gethostname()
    assert reply_address(None, False, {"SLURM_JOB_NUM_NODES": "2"}) == socket.gethostname()
    assert reply_address(None, False, {"SLURM_JOB_NUM_NODES": "1"}) == "127.0.0.1"
    assert reply_address(None, False, {"HYDRA_HOST_FILE": "/etc/mpi/hostfile"}) != "127.0.0.1"


def test_slurm_allocations_are_cleaned_on_every_node_by_an_srun_step():
    from distopt.launch._remote import slurm_clean_command

    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "3"}
    cmd = slurm_clean_command(HostOptions(), 100.0, env)
    assert cmd[:4] == ["srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1"]
    assert "--overlap" in cmd and "--mpi=none" in cmd
    at = cmd.index("distopt.launch._shm_cleanup")
    assert cmd[at - 2 : at] == [sys.executable, "-m"]
    assert cmd[at + 1 :] == ["--max-age", "160", "--name-host"]
    # one node (the ranks were this host's), no allocation, or hosts MPI reaches by ssh
    assert slurm_clean_command(HostOptions(), 1.0, {**env, "SLURM_JOB_NUM_NODES": "1"}) is None
    assert slurm_clean_command(HostOptions(), 1.0, {"SLURM_JOB_NUM_NODES": "3"}) is None
    assert slurm_clean_command(HostOptions(hosts="a:1,b:1"), 1.0, env) is None


def test_cleanup_names_its_host_when_asked(tmp_path, monkeypatch, capsys):
    segment = tmp_path / "mpich_shm_left"
    segment.write_bytes(b"x" * 4096)
    monkeypatch.setattr(_shm_cleanup, "SHM_DIR", tmp_path)
    assert _shm_cleanup.main(["--max-age", "60", "--name-host"]) == 0
    assert not segment.exists()
    assert capsys.readouterr().out.startswith(f"{socket.gethostname()}: removed 1 ")
