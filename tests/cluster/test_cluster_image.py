"""docker/Dockerfile and docker/compose.yaml, built and run with podman."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _cluster import image, require  # noqa: F401 (fixtures)
from _podman import ENV, NONROOT, NONROOT_ARGS, ROOT, TEST_IMAGE, build, podman

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


def test_image_bakes_no_secret_and_makes_host_keys_at_start(image):
    grep = "grep -rlsI 'PRIVATE KEY' /etc /root /home /opt /usr/local || true"
    found = podman("run", "--rm", "--network=none", "--entrypoint=sh", image, "-c", grep).stdout
    assert found.strip() == "", f"private keys in the image: {found}"
    fingerprints = {
        podman("run", "--rm", "--network", "none", image,
               "ssh-keygen", "-lf", "/etc/ssh/keys/ssh_host_ed25519_key.pub").stdout.split()[1]
        for _ in range(2)
    }  # fmt: skip
    assert len(fingerprints) == 2, "two containers got the same host key"


def test_example_runs_in_the_image(image):
    out = podman("run", "--rm", "--network", "none", "--shm-size", "1g", image, timeout=600)
    assert "weights identical on all 2 ranks: True" in out.stdout, out.stdout + out.stderr


def test_non_root_image_runs_sshd_and_the_example_as_its_user(image):
    build("runtime", NONROOT, *NONROOT_ARGS)
    script = ("/usr/sbin/sshd -e && ssh localhost id -un && "
              "distoptrun -np 2 examples/mlp_classification.py --epochs 2")  # fmt: skip
    out = podman("run", "--rm", "--network", "none", "--shm-size", "1g",
                 "-e", "DISTOPT_SSH_DIR=/etc/distopt/ssh", NONROOT, "sh", "-c", script,
                 timeout=600, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0] == "mpi", out.stdout
    assert "weights identical on all 2 ranks: True" in out.stdout, out.stdout + out.stderr


def test_test_suite_runs_in_the_test_image(image):
    build("test", TEST_IMAGE)
    # The image's CMD runs everything (tests/run_all.py); here its launch and 2-rank
    # equivalence parts, to stay inside CI's time.
    out = podman("run", "--rm", "--network", "none", "--shm-size", "1g", TEST_IMAGE, "python",
                 "tests/run_all.py", "--sizes", "2", "-k", "launch or equivalence",
                 timeout=1200, check=False)  # fmt: skip
    tail = out.stdout[-3000:] + out.stderr[-2000:]
    assert out.returncode == 0, tail
    passed, failed = map(int, re.findall(r"^(\d+) passed, (\d+) failed", out.stdout, re.M)[-1])
    assert passed > 20 and failed == 0, tail


def _check_health_until(stop: threading.Event, project: str, first: dict) -> None:
    # podman 4.3 runs health checks from systemd timers, which this machine has not: run
    # them as the timer would, noting when each container's first check began that passed.
    while not stop.wait(1.0):
        names = podman("ps", "--filter", f"label=com.docker.compose.project={project}",
                       "--format", "{{.Names}}", check=False).stdout.split()  # fmt: skip
        for name in names:
            began = time.time()
            if (
                name not in first
                and podman("healthcheck", "run", name, check=False).returncode == 0
            ):
                first[name] = began


def test_compose_file_runs_the_job_over_ssh_as_written(image, tmp_path):
    """docker/compose.yaml itself, through Debian's docker-compose on podman's Docker API:
    workers' sshd health checks, the launcher started once both are healthy, 4 ranks over ssh
    with keys made at start."""
    require("docker-compose")
    if not Path("/usr/lib/cni/dnsname").exists():
        pytest.skip("no CNI dnsname plugin: containers cannot find each other by name "
                    "(tests/cluster/setup.sh installs it)")  # fmt: skip
    project = f"distopt-test-{os.getpid()}"
    socket = tmp_path / "podman.sock"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"], env=ENV, **quiet
    )
    env = {**ENV, "DOCKER_HOST": f"unix://{socket}", "DISTOPT_IMAGE": image}
    compose = ["docker-compose", "-f", str(ROOT / "docker" / "compose.yaml"), "-p", project]
    stop, first_healthy = threading.Event(), {}
    checker = threading.Thread(target=_check_health_until, args=(stop, project, first_healthy))
    try:
        deadline = time.monotonic() + 30
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        checker.start()
        try:
            out = subprocess.run(
                [*compose, "up", "--no-build", "--abort-on-container-exit", "--exit-code-from",
                 "launcher"], env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            ps = podman("ps", "-a", "--format", "{{.Names}} {{.Status}}", check=False).stdout
            pytest.fail(f"compose did not end: {ps}\n{first_healthy}\n{e.stdout}\n{e.stderr}")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "weights identical on all 4 ranks: True" in out.stdout, out.stdout[-3000:]
        workers = [f"{project}_{w}_1" for w in ("worker1", "worker2")]
        assert sorted(first_healthy) == workers, (first_healthy, out.stderr[-2000:])
        started = podman("inspect", "--format", "{{.State.StartedAt.UnixNano}}",
                         f"{project}_launcher_1").stdout  # fmt: skip
        # depends_on: condition: service_healthy, honoured
        assert int(started) / 1e9 >= max(first_healthy.values()), (started, first_healthy)
        shm = podman("inspect", "--format", "{{.HostConfig.ShmSize}}", workers[0]).stdout
        assert int(shm) == 2**30, shm  # the file's shm_size: 1gb
    finally:
        stop.set()
        if checker.is_alive():
            checker.join()
        subprocess.run([*compose, "down", "-v"], env=env, capture_output=True, timeout=120)
        service.terminate()
        service.wait(timeout=30)
