"""The whole mission on a real node: `helm install` of the chart with the locally built image,
`kubectl apply` of the real-VLA imaging PipelineRun, and the run reaching Completed with its
own DaskCluster, an image matching CASA's, and nothing left behind.

Needs the local cluster in full mode (root) or RADPS_TEST_KUBECONFIG with the `radps` image
loaded (`make image`). The data are shared with the pods through a hostPath PersistentVolume
(a cluster-scoped object: the pods themselves only mount PVCs, as the restricted Pod Security
Standard requires)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from astropy.io import fits

from tests.conftest import VLA_TARBALL, shared_dir
from tests.k8s import REPO, KubeCluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.k8s_full]

NAMESPACE = "radps-e2e"
RELEASE = "radps"
UID = 10001
MS_NAME = VLA_TARBALL.removesuffix(".tar.gz")


def _host_volume(cluster: KubeCluster, name: str, path: Path, size: str) -> None:
    """A hostPath PV bound to a PVC of the same name in the test namespace."""
    documents = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{NAMESPACE}-{name}", "labels": {"radps.io/e2e": "true"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(path), "type": "Directory"},
                "claimRef": {"namespace": NAMESPACE, "name": name},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": f"{NAMESPACE}-{name}",
                "resources": {"requests": {"storage": size}},
            },
        },
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))


@pytest.fixture(scope="module")
def installed(
    kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The chart installed in a namespace that enforces the restricted standard; yields the
    host folder the pods see as /data."""
    image = subprocess.run(
        ["bash", str(REPO / "hack" / "image.sh"), "all"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    # the build may have started a private dockerd: stop it (it is not needed to run pods)
    subprocess.run(["bash", str(REPO / "hack" / "image.sh"), "docker-stop"], cwd=REPO, timeout=120)
    assert image.returncode == 0, image.stderr[-4000:]
    tarball = shared_dir() / "data" / VLA_TARBALL
    if not tarball.is_file():
        pytest.skip(f"VLA data not found: {tarball}")
    data = tmp_path_factory.mktemp("e2e-data")
    prefect = tmp_path_factory.mktemp("e2e-prefect")
    (data / "vla").mkdir()
    with tarfile.open(tarball) as tar:
        tar.extractall(data / "vla", filter="data")
    (data / "products").mkdir()
    for folder in (data, prefect):
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, UID, UID)
    for parent in data.parents:  # the pods' user must be able to reach the folders
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)

    cluster = kube_cluster
    _remove_leftovers(cluster)  # of an interrupted earlier session on a kept cluster
    cluster.kubectl("create", "namespace", NAMESPACE)
    cluster.kubectl(
        "label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted"
    )
    _host_volume(cluster, "radps-data", data, "10Gi")
    _host_volume(cluster, "radps-prefect", prefect, "1Gi")
    cluster.helm(
        "install",
        RELEASE,
        str(REPO / "charts" / "radps"),
        "-n",
        NAMESPACE,
        "--set",
        "data.existingClaim=radps-data",
        "--set",
        "prefect.server.persistence.existingClaim=radps-prefect",
        "--wait",
        "--timeout",
        "10m",
        timeout=900,
    )
    yield data
    _remove_leftovers(cluster)
    shutil.rmtree(data, ignore_errors=True)


def _remove_leftovers(cluster: KubeCluster) -> None:
    """Runs go first, while their operator can still release them (its finalizer); what an
    interrupted session left without an operator gets its finalizers cleared."""
    deleted = cluster.kubectl(
        "delete", "prun", "--all", "-n", NAMESPACE, "--timeout=120s", check=False, timeout=180
    )
    if deleted.returncode != 0:
        for kind in ("pipelineruns.radps.io", "daskclusters.kubernetes.dask.org"):
            names = cluster.kubectl("get", kind, "-n", NAMESPACE, "-o", "name", check=False)
            for name in names.stdout.split():
                cluster.kubectl(
                    "patch", name, "-n", NAMESPACE, "--type", "merge",
                    "-p", '{"metadata":{"finalizers":[]}}', check=False,
                )  # fmt: skip
    cluster.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", check=False, timeout=300)
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", timeout=300)
    cluster.kubectl("delete", "pv", "-l", "radps.io/e2e=true", "--ignore-not-found")


def _get(cluster: KubeCluster, *args: str) -> Any:
    return yaml.safe_load(cluster.kubectl("get", "-n", NAMESPACE, "-o", "yaml", *args).stdout)


def why_not_completed(cluster: KubeCluster, name: str) -> str:
    """A failed run's status, and the log of each of its flow-run pods (a rescheduled run
    has one Job per attempt), so a CI failure says why without a second run."""
    run = _get(cluster, "prun", name)
    status = run.get("status") or {}
    logs = ""
    uid = run["metadata"]["uid"]
    for job in _get(cluster, "jobs", "-l", f"radps.io/run-uid={uid}")["items"]:
        found = cluster.kubectl(
            "logs", "-n", NAMESPACE, f"job/{job['metadata']['name']}", "--tail=80",
            check=False,
        )  # fmt: skip
        logs += f"--- job/{job['metadata']['name']}\n{found.stdout}{found.stderr}"
    return (
        f"{status.get('phase')}: {status.get('message')}\n{json.dumps(status, indent=1)}\n"
        f"flow-run pod logs:\n{logs}"
    )


def test_vla_pipelinerun_completes_with_its_own_dask_cluster(
    kube_cluster: KubeCluster, installed: Path
):
    run = yaml.safe_load((REPO / "manifests" / "examples" / "vla-imaging.yaml").read_text())
    run["spec"]["parameters"].update(
        input=f"/data/vla/{MS_NAME}", output="/data/products/vla-j1008-dirty"
    )
    run["spec"]["dask"] = {"workers": 2, "threadsPerWorker": 1}
    applied = time.monotonic()
    kube_cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(run))
    name = run["metadata"]["name"]

    most_workers = 0
    deadline = time.monotonic() + 900
    phase = None
    while time.monotonic() < deadline:
        status = _get(kube_cluster, "prun", name).get("status") or {}
        phase = status.get("phase")
        workers = _get(kube_cluster, "pods", "-l", "dask.org/component=worker")["items"]
        most_workers = max(most_workers, len(workers))
        if phase in ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut"):
            break
        time.sleep(1)
    print(f"\nkubectl apply -> {phase}: {time.monotonic() - applied:.0f} s")
    if phase != "Completed":
        pytest.fail(why_not_completed(kube_cluster, name))
    assert most_workers == 2, "the run's DaskCluster never had its 2 worker pods"
    assert {o["kind"] for o in status["outputs"]} >= {"fits", "png"}

    table = kube_cluster.kubectl("get", "prun", "-n", NAMESPACE).stdout
    assert table.split()[:5] == ["NAME", "PIPELINE", "PHASE", "PROGRESS", "AGE"], table
    assert "Completed" in table and "3/3" in table

    wait_until(
        lambda: not _get(kube_cluster, "daskclusters")["items"],
        timeout=120,
        what="the run's DaskCluster to be gone",
    )
    ours = fits.getdata(installed / "products" / "vla-j1008-dirty" / "image.fits")[0, 0]
    casa = fits.getdata(shared_dir() / "reference" / "vla_dirty.image.fits")[0, 0]
    assert np.unravel_index(np.argmax(ours), ours.shape) == (39, 480)
    inner = np.s_[128:384, 128:384]
    assert np.corrcoef(ours[inner].ravel(), casa[inner].ravel())[0, 1] >= 0.999


def test_helm_test_passes(kube_cluster: KubeCluster, installed: Path):
    result = kube_cluster.helm("test", RELEASE, "-n", NAMESPACE, "--logs", timeout=900)
    assert "Phase:          Succeeded" in result.stdout or "Succeeded" in result.stdout


def test_uninstall_deletes_running_runs_first(kube_cluster: KubeCluster, installed: Path):
    # Last in this module: the release is gone afterwards.
    run = yaml.safe_load((REPO / "manifests" / "examples" / "synthesize-demo.yaml").read_text())
    run["metadata"]["name"] = "uninstall-me"
    run["spec"]["parameters"]["output"] = "/data/products/uninstall-me.ps.zarr"
    kube_cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(run))
    wait_until(
        lambda: (
            (_get(kube_cluster, "prun", "uninstall-me").get("status") or {}).get("phase")
            in ("Scheduled", "Pending", "Running")
        ),
        timeout=120,
        what="the run under way",
    )
    result = kube_cluster.helm(
        "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "8m", check=False
    )
    hook_logs = kube_cluster.kubectl(
        "logs", "-n", NAMESPACE, "job/radps-delete-runs", check=False
    ).stdout
    assert result.returncode == 0, result.stderr + hook_logs
    assert not _get(kube_cluster, "prun")["items"]
    left = kube_cluster.kubectl(
        "get", "deployments,services,serviceaccounts,roles,rolebindings,configmaps,pvc", "-n",
        NAMESPACE,
        "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name", check=False,
    ).stdout.split()  # fmt: skip
    assert not left, left
