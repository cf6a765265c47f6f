"""Faults on a real node, mid-run: a cancelled run leaves no pod behind, and an operator pod
killed during a run neither duplicates nor loses it. `make e2e` runs these; `make test` does
not yet (see the notes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_mission import MS_NAME, NAMESPACE, _get, installed  # noqa: F401
from tests.k8s import REPO, KubeCluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.k8s_full]

FINISHED = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")


def _apply_vla_run(cluster: KubeCluster, name: str) -> None:
    run = yaml.safe_load((REPO / "manifests" / "examples" / "vla-imaging.yaml").read_text())
    run["metadata"]["name"] = name
    run["spec"]["parameters"].update(input=f"/data/vla/{MS_NAME}", output=f"/data/products/{name}")
    run["spec"]["dask"] = {"workers": 2, "threadsPerWorker": 1}
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=yaml.safe_dump(run))


def _status(cluster: KubeCluster, name: str) -> dict[str, Any]:
    return _get(cluster, "prun", name).get("status") or {}


def _wait_running(cluster: KubeCluster, name: str) -> dict[str, Any]:
    return wait_until(
        lambda: _status(cluster, name).get("phase") == "Running" and _status(cluster, name),
        timeout=300,
        what=f"{name} Running",
    )


def _pods_of(cluster: KubeCluster, uid: str) -> list[str]:
    """The run's flow pod (its Job carries the run's UID) and its Dask pods."""
    jobs = _get(cluster, "jobs", "-l", f"radps.io/run-uid={uid}")["items"]
    names = []
    for job in jobs:
        pods = _get(cluster, "pods", "-l", f"job-name={job['metadata']['name']}")["items"]
        names += [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"]
    clusters = _get(cluster, "daskclusters", "-l", f"radps.io/run-uid={uid}")["items"]
    for dask in clusters:
        label = f"dask.org/cluster-name={dask['metadata']['name']}"
        names += [p["metadata"]["name"] for p in _get(cluster, "pods", "-l", label)["items"]]
    return names


def test_cancel_mid_run_leaves_no_pod(kube_cluster: KubeCluster, installed: Path):  # noqa: F811
    _apply_vla_run(kube_cluster, "cancel-mid-run")
    uid = _get(kube_cluster, "prun", "cancel-mid-run")["metadata"]["uid"]
    _wait_running(kube_cluster, "cancel-mid-run")
    kube_cluster.kubectl(
        "patch", "prun", "cancel-mid-run", "-n", NAMESPACE, "--type", "merge",
        "-p", '{"spec":{"cancel":true}}',
    )  # fmt: skip
    cancelled = time.monotonic()
    wait_until(
        lambda: _status(kube_cluster, "cancel-mid-run").get("phase") in FINISHED,
        timeout=120,
        what="the cancelled run to finish",
    )
    assert _status(kube_cluster, "cancel-mid-run")["phase"] == "Cancelled"
    wait_until(
        lambda: not _pods_of(kube_cluster, uid),
        timeout=max(1.0, 60 - (time.monotonic() - cancelled)),
        what="the flow pod and Dask pods gone within 60 s of the cancel",
    )


def test_operator_killed_mid_run_neither_duplicates_nor_loses_it(
    kube_cluster: KubeCluster,
    installed: Path,  # noqa: F811
):
    _apply_vla_run(kube_cluster, "operator-killed")
    uid = _get(kube_cluster, "prun", "operator-killed")["metadata"]["uid"]
    running = _wait_running(kube_cluster, "operator-killed")
    kube_cluster.kubectl(
        "delete", "pod", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator",
        "--grace-period=0", "--force", "--wait=false",
    )  # fmt: skip
    wait_until(
        lambda: _status(kube_cluster, "operator-killed").get("phase") in FINISHED,
        timeout=600,
        what="the run to finish under the new operator pod",
    )
    status = _status(kube_cluster, "operator-killed")
    assert status["phase"] == "Completed", status
    assert status["prefect"]["flowRunId"] == running["prefect"]["flowRunId"]
    jobs = _get(kube_cluster, "jobs", "-l", f"radps.io/run-uid={uid}")["items"]
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
