"""The chart as the e2e tests install it, in the layout the README recommends: the control
plane (operator, Prefect server and worker, dask operator) in one namespace, the runs in
another, both enforcing the restricted Pod Security Standard; the VLA data and Prefect's
database on hostPath PersistentVolumes (cluster-scoped objects: the pods themselves only mount
PVCs, as the standard requires), and the locally built image. Shared by every e2e module
through the session fixture in conftest."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import VLA_TARBALL, shared_dir, unpack
from tests.k8s import REPO, KubeCluster, hack_setting
from tests.s3 import S3Server

CONTROL_NAMESPACE = "radps-e2e"
"""The release's namespace: the control plane and its service accounts."""
RUNS_NAMESPACE = "radps-e2e-runs"
"""Where PipelineRuns are served: their flow-run and Dask pods, and the data volume."""
RELEASE = "radps"
UID = 10001
MS_NAME = VLA_TARBALL.removesuffix(".tar.gz")


def host_volume(cluster: KubeCluster, namespace: str, name: str, path: Path, size: str) -> None:
    """A hostPath PV bound to a PVC of the same name in ``namespace``."""
    documents = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-{name}", "labels": {"radps.io/e2e": "true"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(path), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": name},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": f"{namespace}-{name}",
                "resources": {"requests": {"storage": size}},
            },
        },
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))


def remove_leftovers(cluster: KubeCluster) -> None:
    """Runs go first, while their operator can still release them (its finalizer); what an
    interrupted session left without an operator gets its finalizers cleared."""
    deleted = cluster.kubectl(
        "delete", "prun", "--all", "-n", RUNS_NAMESPACE, "--timeout=120s", check=False,
        timeout=180,
    )  # fmt: skip
    if deleted.returncode != 0:
        for kind in ("pipelineruns.radps.io", "daskclusters.kubernetes.dask.org"):
            names = cluster.kubectl("get", kind, "-n", RUNS_NAMESPACE, "-o", "name", check=False)
            for name in names.stdout.split():
                cluster.kubectl(
                    "patch", name, "-n", RUNS_NAMESPACE, "--type", "merge",
                    "-p", '{"metadata":{"finalizers":[]}}', check=False,
                )  # fmt: skip
    cluster.helm("uninstall", RELEASE, "-n", CONTROL_NAMESPACE, "--wait", check=False, timeout=300)
    for namespace in (RUNS_NAMESPACE, CONTROL_NAMESPACE):
        cluster.kubectl("delete", "namespace", namespace, "--ignore-not-found", timeout=300)
    cluster.kubectl("delete", "pv", "-l", "radps.io/e2e=true", "--ignore-not-found")


def get(cluster: KubeCluster, *args: str, namespace: str = RUNS_NAMESPACE) -> Any:
    return yaml.safe_load(cluster.kubectl("get", "-n", namespace, "-o", "yaml", *args).stdout)


def of_run(cluster: KubeCluster, kind: str, uid: str) -> list[dict[str, Any]]:
    """The objects of ``kind`` labelled with the PipelineRun's UID (Jobs, DaskClusters)."""
    return get(cluster, kind, "-l", f"radps.io/run-uid={uid}")["items"]


@contextmanager
def prefect_settings(cluster: KubeCluster) -> Iterator[None]:
    """Prefect's client settings for the release's server, reached through a port-forward
    with the release's credential (from its Secret), for a test to read or forge flow runs."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    encoded = cluster.kubectl(
        "get", "secret", f"{RELEASE}-prefect-auth", "-n", CONTROL_NAMESPACE,
        "-o", "jsonpath={.data.auth-string}",
    ).stdout  # fmt: skip
    forward = subprocess.Popen(
        [cluster.kubectl_path, "--kubeconfig", str(cluster.kubeconfig), "port-forward",
         "-n", CONTROL_NAMESPACE, f"svc/{RELEASE}-prefect-server", ":4200"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = forward.stdout.readline() if forward.stdout else ""
        port = int(line.rsplit(":", 1)[1].split()[0])
        settings = {
            PREFECT_API_URL: f"http://127.0.0.1:{port}/api",
            PREFECT_API_AUTH_STRING: base64.b64decode(encoded).decode(),
        }
        with temporary_settings(settings):
            yield
    finally:
        forward.terminate()
        forward.wait(10)


@contextmanager
def object_store(cluster: KubeCluster) -> Iterator[S3Server]:
    """The release's own object store, reached through a port-forward with its key pair (from
    its Secret), for a test to put inputs there and read products back."""
    keys = get(cluster, "secret", f"{RELEASE}-objectstore", namespace=CONTROL_NAMESPACE)["data"]
    forward = subprocess.Popen(
        [cluster.kubectl_path, "--kubeconfig", str(cluster.kubeconfig), "port-forward",
         "-n", CONTROL_NAMESPACE, f"svc/{RELEASE}-objectstore", ":8333"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = forward.stdout.readline() if forward.stdout else ""
        port = int(line.rsplit(":", 1)[1].split()[0])
        yield S3Server(
            endpoint=f"http://127.0.0.1:{port}",
            access_key=base64.b64decode(keys["AWS_ACCESS_KEY_ID"]).decode(),
            secret_key=base64.b64decode(keys["AWS_SECRET_ACCESS_KEY"]).decode(),
            bucket="radps",
        )
    finally:
        forward.terminate()
        forward.wait(10)


def why_not_completed(cluster: KubeCluster, name: str) -> str:
    """A failed run's status, and the log of each of its flow-run pods (a rescheduled run
    has one Job per attempt), so a CI failure says why without a second run."""
    run = get(cluster, "prun", name)
    status = run.get("status") or {}
    logs = ""
    uid = run["metadata"]["uid"]
    for job in of_run(cluster, "jobs", uid):
        found = cluster.kubectl(
            "logs", "-n", RUNS_NAMESPACE, f"job/{job['metadata']['name']}", "--tail=80",
            check=False,
        )  # fmt: skip
        logs += f"--- job/{job['metadata']['name']}\n{found.stdout}{found.stderr}"
    return (
        f"{status.get('phase')}: {status.get('message')}\n{json.dumps(status, indent=1)}\n"
        f"flow-run pod logs:\n{logs}"
    )


def install(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Load the image, install the chart; yields the host folder the pods see as
    /data, and removes the release (if a test has not) and the data afterwards."""
    # `make deps` built the image of this tree; this loads it into the node (RADPS_NO_BUILD:
    # an image of another tree fails here, saying so, rather than being rebuilt under a timeout).
    image = subprocess.run(
        ["bash", str(REPO / "hack" / "image.sh"), "all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert image.returncode == 0, image.stderr[-4000:]
    store_image = Path(hack_setting("IMAGES_DIR")) / (
        f"seaweedfs-{hack_setting('SEAWEEDFS_IMAGE_VERSION')}.tar"
    )
    loaded = subprocess.run(
        ["bash", str(REPO / "hack" / "images.sh"), "load", str(store_image)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0 and store_image.is_file(), loaded.stderr[-4000:]
    tarball = shared_dir() / "data" / VLA_TARBALL
    if not tarball.is_file():
        pytest.skip(f"VLA data not found: {tarball}")
    data = tmp_path_factory.mktemp("e2e-data")
    prefect = tmp_path_factory.mktemp("e2e-prefect")
    (data / "vla").mkdir()
    unpack(tarball, data / "vla")
    (data / "products").mkdir()
    for folder in (data, prefect):
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, UID, UID)
    for parent in data.parents:  # the pods' user must be able to reach the folders
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)

    remove_leftovers(cluster)  # of an interrupted earlier session on a kept cluster
    for namespace in (CONTROL_NAMESPACE, RUNS_NAMESPACE):
        cluster.kubectl("create", "namespace", namespace)
        cluster.kubectl(
            "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
        )
    host_volume(cluster, RUNS_NAMESPACE, "radps-data", data, "10Gi")
    host_volume(cluster, CONTROL_NAMESPACE, "radps-prefect", prefect, "1Gi")
    cluster.helm(
        "install",
        RELEASE,
        str(REPO / "charts" / "radps"),
        "-n",
        CONTROL_NAMESPACE,
        "--set",
        f"operator.watchNamespaces={{{RUNS_NAMESPACE}}}",
        "--set",
        "data.existingClaim=radps-data",
        "--set",
        "prefect.server.persistence.existingClaim=radps-prefect",
        "--set",
        "objectStore.enabled=true",
        "--wait",
        "--timeout",
        "10m",
        timeout=900,
    )
    yield data
    remove_leftovers(cluster)
    shutil.rmtree(data, ignore_errors=True)


def radps_cli(cluster: KubeCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """The `radps` CLI as a user runs it against the cluster, with the kubeconfig."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "radps"),
            *args,
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def worker_pods(cluster: KubeCluster, uid: str) -> int:
    """Worker pods of the run's DaskClusters (other runs' may still be going away)."""
    clusters = of_run(cluster, "daskclusters", uid)
    names = ",".join(c["metadata"]["name"] for c in clusters)
    if not names:
        return 0
    selector = f"dask.org/component=worker,dask.org/cluster-name in ({names})"
    return len(get(cluster, "pods", "-l", selector)["items"])
