"""launch/mpijob.yaml: valid for the MPI Operator's CRD, and its pods run as the operator
would start them (emulated with podman: the mounted ssh Secret, the hostfile ConfigMap).

data/mpijob_v2beta1.schema.json is the v2beta1 openAPIV3Schema of
manifests/base/kubeflow.org_mpijobs.yaml in kubeflow/mpi-operator v0.8.2 (Apache-2.0), with
the descriptions removed.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time

import jsonschema
import pytest
import yaml
from _cluster import ROOT, image  # noqa: F401 (fixtures)
from _hosts import Cluster
from _podman import podman

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]
HERE = os.path.dirname(__file__)
SCHEMA = json.load(open(os.path.join(HERE, "data", "mpijob_v2beta1.schema.json")))
MANIFEST = yaml.safe_load((ROOT / "launch" / "mpijob.yaml").read_text())
JOB, NAMESPACE = MANIFEST["metadata"]["name"], "default"


def unknown_fields(value, schema, path="") -> list[str]:
    """Fields the schema does not declare (the API server would drop them silently)."""
    found = []
    if isinstance(value, dict) and "properties" in schema:
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return found
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            else:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def problems(manifest) -> list[str]:
    errors = [e.message for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(manifest)]
    return errors + [f"unknown field {f}" for f in unknown_fields(manifest, SCHEMA)]


def test_manifest_matches_the_operator_schema():
    assert problems(MANIFEST) == []
    bad = copy.deepcopy(MANIFEST)
    bad["spec"]["mpiImplementation"] = "MPICH2"
    bad["spec"]["slotPerWorker"] = 2
    found = problems(bad)
    assert any("MPICH2" in p for p in found) and "unknown field .spec.slotPerWorker" in found


def test_manifest_runs_as_written():
    spec = MANIFEST["spec"]
    assert MANIFEST["apiVersion"] == "kubeflow.org/v2beta1" and spec["mpiImplementation"] == "MPICH"
    launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    worker = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    ranks = spec["mpiReplicaSpecs"]["Worker"]["replicas"] * spec["slotsPerWorker"]
    command = launcher["containers"][0]["command"]
    assert command[command.index("-np") + 1] == str(ranks)
    for pod in (launcher, worker):
        container = pod["containers"][0]
        assert not container["image"].endswith(":latest")
        assert container["imagePullPolicy"] == "IfNotPresent"
    shm = [v for v in worker["volumes"] if v["emptyDir"].get("medium") == "Memory"]
    mounts = worker["containers"][0]["volumeMounts"]
    assert shm and {"name": shm[0]["name"], "mountPath": "/dev/shm"} in mounts


def fqdn(name: str) -> str:
    return f"{name}.{JOB}.{NAMESPACE}.svc"


def operator_secret(directory) -> None:
    """What the operator mounts at /root/.ssh: an ECDSA P-521 key named id_rsa, its public
    key twice, files 0600, in a world-writable sticky directory as Secret volumes are."""
    directory.mkdir()
    key = directory / "id_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "521", "-m", "PEM", "-N", "",
                    "-f", str(key)], check=True)  # fmt: skip
    (directory / "authorized_keys").write_text((directory / "id_rsa.pub").read_text())
    for f in directory.iterdir():
        f.chmod(0o600)
    directory.chmod(0o1777)


def test_pods_run_as_the_operator_starts_them(image, tmp_path):
    spec = MANIFEST["spec"]
    slots, workers = spec["slotsPerWorker"], spec["mpiReplicaSpecs"]["Worker"]["replicas"]
    names = ["launcher"] + [f"worker-{i}" for i in range(workers)]
    operator_secret(tmp_path / "ssh")
    config = tmp_path / "mpi"
    config.mkdir()
    (config / "hostfile").write_text("".join(f"{fqdn(f'{JOB}-worker-{i}')}:{slots}\n"
                                             for i in range(workers)))  # fmt: skip
    tag = f"distopt-mpijob-{os.getpid()}"
    try:
        with Cluster(tmp_path / "hosts", names) as cluster:
            add_hosts = []
            for h in cluster.hosts.values():
                add_hosts += ["--add-host", f"{fqdn(f'{JOB}-{h.name}')}:{h.address}",
                              "--add-host", f"{JOB}-{h.name}:{h.address}"]  # fmt: skip

            def pod(name: str, role: str, *extra: str) -> subprocess.CompletedProcess:
                template = spec["mpiReplicaSpecs"][role]["template"]["spec"]
                container = template["containers"][0]
                args = ["run", "--name", f"{tag}-{name}", "--hostname", f"{JOB}-{name}",
                        "--network", f"ns:/proc/{cluster.hosts[name].pid}/ns/net", *add_hosts,
                        "-v", f"{tmp_path / 'ssh'}:/root/.ssh:ro", "-v", f"{config}:/etc/mpi:ro",
                        "-e", f"K_MPI_JOB_ROLE={role.lower()}",
                        "-e", "HYDRA_HOST_FILE=/etc/mpi/hostfile",
                        "-e", "HYDRA_LAUNCH_EXTRA_ARGS=-o ConnectionAttempts=10"]  # fmt: skip
                for env in container.get("env", []):
                    args += ["-e", f"{env['name']}={env['value']}"]
                volumes = {v["name"]: v for v in template.get("volumes", [])}
                for mount in container.get("volumeMounts", []):
                    size = volumes[mount["name"]]["emptyDir"].get("sizeLimit", "1Gi")
                    args += ["--mount", f"type=tmpfs,destination={mount['mountPath']},"
                             f"tmpfs-size={size.replace('Gi', 'g')}"]  # fmt: skip
                return podman(*args, *extra, image, *container["command"], timeout=600,
                              check=False)  # fmt: skip

            for i in range(workers):
                started = pod(f"worker-{i}", "Worker", "-d")
                assert started.returncode == 0, started.stderr
            for i in range(workers):
                deadline = time.monotonic() + 60
                while podman("exec", f"{tag}-worker-{i}", "test", "-s", "/run/sshd/sshd.pid",
                             check=False).returncode != 0:  # fmt: skip
                    assert time.monotonic() < deadline, podman("logs", f"{tag}-worker-{i}").stderr
                    time.sleep(1)
            out = pod("launcher", "Launcher", "--rm")
            report = out.stdout + out.stderr
            assert out.returncode == 0, report
            assert f"weights identical on all {slots * workers} ranks: True" in out.stdout, report
    finally:
        for name in names:
            podman("rm", "-f", f"{tag}-{name}", check=False)
