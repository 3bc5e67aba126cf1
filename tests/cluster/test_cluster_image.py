"""docker/Dockerfile and docker/compose.yaml, built and run with podman."""

from __future__ import annotations

import os
import re
import time

import pytest
import yaml
from _cluster import image  # noqa: F401 (fixtures)
from _hosts import Cluster
from _podman import NONROOT, NONROOT_ARGS, ROOT, TEST_IMAGE, build, podman

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]
COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


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


def _healthy(name: str, test: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while podman("exec", name, *test[1:], check=False).returncode != 0:
        if time.monotonic() > deadline:
            logs = podman("logs", name, check=False)
            raise AssertionError(f"{name} not healthy: {logs.stdout}{logs.stderr}")
        time.sleep(1)


def test_compose_job_over_ssh_with_keys_made_at_start(image, tmp_path):
    """The compose file's services, each in its own namespaced host: workers start sshd,
    the launcher waits for them to be healthy and runs its command over ssh."""
    services = COMPOSE["services"]
    worker = services["worker1"]
    assert worker["shm_size"] and worker["healthcheck"]["test"][0] == "CMD"
    assert services["launcher"]["depends_on"] == {
        "worker1": {"condition": "service_healthy"},
        "worker2": {"condition": "service_healthy"},
    }
    tag = f"distopt-test-{os.getpid()}"
    volume = f"{tag}-keys"
    podman("volume", "create", volume)
    names = ["worker1", "worker2", "launcher"]
    try:
        with Cluster(tmp_path / "hosts", names) as cluster:
            hosts = [a for h in cluster.hosts.values() for a in ("--add-host",
                     f"{h.name}:{h.address}")]  # fmt: skip

            def run(name, *extra):
                spec = services[name]
                args = ["run", "--name", f"{tag}-{name}", "--hostname", spec["hostname"],
                        "--network", f"ns:/proc/{cluster.hosts[name].pid}/ns/net", *hosts,
                        "--shm-size", spec["shm_size"], "-v", spec["volumes"][0].replace(
                            "ssh-keys", volume)]  # fmt: skip
                for k, v in spec["environment"].items():
                    args += ["-e", f"{k}={v}"]
                return podman(*args, *extra, image, *spec["command"], timeout=600, check=False)

            for name in ("worker1", "worker2"):
                assert run(name, "-d").returncode == 0
            for name in ("worker1", "worker2"):
                _healthy(f"{tag}-{name}", services[name]["healthcheck"]["test"])
            out = run("launcher", "--rm")
            assert "weights identical on all 4 ranks: True" in out.stdout, out.stdout + out.stderr
    finally:
        for name in names:
            podman("rm", "-f", f"{tag}-{name}", check=False)
        podman("volume", "rm", "-f", volume, check=False)
