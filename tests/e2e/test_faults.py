"""Faults on a real node, mid-run: a cancelled run leaves no pod behind, an operator pod
killed during a run neither duplicates nor loses it, and a deleted flow-run pod is
rescheduled while its DaskCluster is collected. Part of `make test` (and `make e2e`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.release import (
    CONTROL_NAMESPACE,
    MS_NAME,
    RUNS_NAMESPACE,
    get,
    of_run,
    why_not_completed,
)
from tests.k8s import REPO, KubeCluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.k8s_full]

FINISHED = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")


def _apply_vla_run(cluster: KubeCluster, name: str) -> None:
    run = yaml.safe_load((REPO / "manifests" / "examples" / "vla-imaging.yaml").read_text())
    run["metadata"]["name"] = name
    run["spec"]["parameters"].update(input=f"/data/vla/{MS_NAME}", output=f"/data/products/{name}")
    run["spec"]["dask"] = {"workers": 2, "threadsPerWorker": 1}
    cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=yaml.safe_dump(run))


def _status(cluster: KubeCluster, name: str) -> dict[str, Any]:
    return get(cluster, "prun", name).get("status") or {}


def _wait_running(cluster: KubeCluster, name: str) -> dict[str, Any]:
    return wait_until(
        lambda: _status(cluster, name).get("phase") == "Running" and _status(cluster, name),
        timeout=300,
        what=f"{name} Running",
    )


def _completes_as_the_same_flow_run(
    cluster: KubeCluster, name: str, running: dict[str, Any], what: str
) -> None:
    wait_until(lambda: _status(cluster, name).get("phase") in FINISHED, timeout=600, what=what)
    status = _status(cluster, name)
    assert status["phase"] == "Completed", why_not_completed(cluster, name)
    assert status["prefect"]["flowRunId"] == running["prefect"]["flowRunId"]


def _pods_of(cluster: KubeCluster, uid: str) -> list[str]:
    """The run's flow pod (its Job carries the run's UID) and its Dask pods."""
    names = []
    for job in of_run(cluster, "jobs", uid):
        pods = get(cluster, "pods", "-l", f"job-name={job['metadata']['name']}")["items"]
        names += [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"]
    for dask in of_run(cluster, "daskclusters", uid):
        label = f"dask.org/cluster-name={dask['metadata']['name']}"
        names += [p["metadata"]["name"] for p in get(cluster, "pods", "-l", label)["items"]]
    return names


def test_cancel_mid_run_leaves_no_pod(kube_cluster: KubeCluster, installed: Path):
    _apply_vla_run(kube_cluster, "cancel-mid-run")
    uid = get(kube_cluster, "prun", "cancel-mid-run")["metadata"]["uid"]
    _wait_running(kube_cluster, "cancel-mid-run")
    kube_cluster.kubectl(
        "patch", "prun", "cancel-mid-run", "-n", RUNS_NAMESPACE, "--type", "merge",
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
    installed: Path,
):
    _apply_vla_run(kube_cluster, "operator-killed")
    uid = get(kube_cluster, "prun", "operator-killed")["metadata"]["uid"]
    running = _wait_running(kube_cluster, "operator-killed")
    kube_cluster.kubectl(
        "delete", "pod", "-n", CONTROL_NAMESPACE, "-l", "app.kubernetes.io/component=operator",
        "--grace-period=0", "--force", "--wait=false",
    )  # fmt: skip
    _completes_as_the_same_flow_run(
        kube_cluster, "operator-killed", running, "the run to finish under the new operator pod"
    )
    jobs = of_run(kube_cluster, "jobs", uid)
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]


def test_flow_pod_deleted_mid_run_is_rescheduled_and_its_dask_cluster_collected(
    kube_cluster: KubeCluster,
    installed: Path,
):
    """A deleted (or evicted) flow-run pod gets SIGTERM; prefect-kubernetes' Jobs have
    backoffLimit 0, so the run is rescheduled rather than failed, and the worker starts it
    again in a new pod. The first pod's DaskCluster is owned by that pod, so Kubernetes
    collects it; the run still completes, as the same flow run."""
    _apply_vla_run(kube_cluster, "pod-deleted")
    uid = get(kube_cluster, "prun", "pod-deleted")["metadata"]["uid"]
    running = _wait_running(kube_cluster, "pod-deleted")
    first = wait_until(
        lambda: of_run(kube_cluster, "daskclusters", uid),
        timeout=120,
        what="the run's DaskCluster",
    )[0]["metadata"]["uid"]
    (job,) = of_run(kube_cluster, "jobs", uid)
    kube_cluster.kubectl(
        "delete", "pod", "-n", RUNS_NAMESPACE, "-l", f"job-name={job['metadata']['name']}",
        "--wait=false",
    )  # fmt: skip
    wait_until(
        lambda: (
            first not in [c["metadata"]["uid"] for c in of_run(kube_cluster, "daskclusters", uid)]
        ),
        timeout=90,
        what="the deleted pod's DaskCluster garbage-collected",
    )
    _completes_as_the_same_flow_run(
        kube_cluster, "pod-deleted", running, "the rescheduled run to finish"
    )
    wait_until(
        lambda: not of_run(kube_cluster, "daskclusters", uid),
        timeout=120,
        what="no DaskCluster left after the run",
    )


def _apply_synth_run(cluster: KubeCluster, name: str, **spec: Any) -> str:
    run = yaml.safe_load((REPO / "manifests" / "examples" / "synthesize-demo.yaml").read_text())
    run["metadata"]["name"] = name
    run["spec"]["parameters"].update(output=f"/data/products/{name}.ps.zarr", n_times=10)
    run["spec"].update(spec)
    cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=yaml.safe_dump(run))
    return get(cluster, "prun", name)["metadata"]["uid"]


def _finished(cluster: KubeCluster, name: str, timeout: float) -> dict[str, Any]:
    wait_until(lambda: _status(cluster, name).get("phase") in FINISHED, timeout=timeout, what=name)
    return _status(cluster, name)


def _reasons(cluster: KubeCluster, name: str) -> list[str]:
    events = get(cluster, "events", "--field-selector", f"involvedObject.name={name}")
    return [e.get("reason") for e in events["items"]]


def test_an_unpullable_image_fails_the_run_with_the_reason(
    kube_cluster: KubeCluster, installed: Path
):
    """Not Pending forever: the flow pod's ImagePullBackOff reaches the status and an Event,
    the run fails with it, and its flow run is cancelled, so no pod is left."""
    uid = _apply_synth_run(kube_cluster, "unpullable", image="radps:no-such-tag")
    pod = wait_until(
        lambda: of_run(kube_cluster, "pods", uid), timeout=120, what="the flow-run pod"
    )
    appeared = time.monotonic()
    status = _finished(kube_cluster, "unpullable", timeout=120)
    assert time.monotonic() - appeared < 60 + 10, "reason not in status within 60 s"
    assert status["phase"] == "Failed", status
    reasons = {c["type"]: c.get("reason") for c in status["conditions"]}
    assert reasons["Succeeded"] in ("ImagePullBackOff", "ErrImagePull"), status
    assert reasons["PodsHealthy"] in ("ImagePullBackOff", "ErrImagePull"), status
    assert pod[0]["metadata"]["name"] in status["message"]
    assert reasons["Succeeded"] in _reasons(kube_cluster, "unpullable")
    wait_until(
        lambda: (
            not [
                p
                for p in of_run(kube_cluster, "pods", uid)
                if p["status"].get("phase") == "Pending"
            ]
        ),
        timeout=120,
        what="the pod that could not start removed",
    )


def test_an_oom_killed_flow_pod_says_so(kube_cluster: KubeCluster, installed: Path):
    _apply_synth_run(
        kube_cluster,
        "oom-killed",
        resources={"requests": {"memory": "48Mi"}, "limits": {"memory": "48Mi"}},
    )
    status = _finished(kube_cluster, "oom-killed", timeout=300)
    assert status["phase"] in ("Crashed", "Failed"), status
    assert "OOMKilled" in status["message"], status
    pods = next(c for c in status["conditions"] if c["type"] == "PodsHealthy")
    assert (pods["status"], pods["reason"]) == ("False", "OOMKilled")
    assert not list((installed / "products").glob("oom-killed.ps.zarr"))  # nothing committed
