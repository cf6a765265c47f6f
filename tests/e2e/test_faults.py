"""Faults on a real node, each ending with nothing lost or leaked: a run cancelled mid-run, its
operator pod killed, its flow-run pod deleted, the Prefect server pod killed, a Dask worker pod
killed mid-stage, an image that cannot be pulled, an OOM-killed flow pod, a full output volume,
and runs deleted while the operator creates them. Part of `make test` (and `make e2e`)."""

from __future__ import annotations

import json
import subprocess
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
    prefect_settings,
    why_not_completed,
)
from tests.k8s import REPO, KubeCluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.k8s_full]

FINISHED = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")


def _apply_vla_run(cluster: KubeCluster, name: str, example: str = "vla-imaging.yaml") -> None:
    run = yaml.safe_load((REPO / "manifests" / "examples" / example).read_text())
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
    applied = cluster.kubectl(
        "create", "-n", RUNS_NAMESPACE, "-f", "-", "-o", "jsonpath={.metadata.uid}",
        input=yaml.safe_dump(run),
    )  # fmt: skip
    return applied.stdout.strip()


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


def _whole_products(host_output: Path) -> list[str]:
    """The products a completed run lists in its manifest, each checked against it (size,
    sha256): a fault mid-run left no truncated or foreign file among them. Its provenance
    holds the PipelineRun's spec and the image ID, which the flow pod read from the API."""
    from radps_flows.manifest import verify

    document = json.loads((host_output / "manifest.json").read_text())
    recorded = document["provenance"]
    assert recorded["image"]["id"], recorded  # the digest the kubelet ran, not only the tag
    assert recorded["pipeline_run"]["spec"]["parameters"]["output"].endswith(host_output.name)
    listed = document["products"]
    for entry in listed:
        verify(host_output / entry["path"])
    assert not list(host_output.parent.glob(f".{host_output.name}.staging-*"))
    return [entry["name"] for entry in listed]


def _kill(cluster: KubeCluster, namespace: str, selector: str, most: int = 100) -> list[str]:
    """Delete (at most ``most``) pods at once, without their grace period, as a crashed node
    or the OOM killer would end them; returns their names."""
    names = cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", selector, "-o", "name"
    ).stdout.split()[:most]  # fmt: skip
    assert names, f"no pod {selector} in {namespace}"
    cluster.kubectl(
        "delete", "-n", namespace, *names, "--grace-period=0", "--force", "--wait=false"
    )  # fmt: skip
    return names


def test_prefect_server_killed_mid_run_the_run_completes_as_the_same_flow_run(
    kube_cluster: KubeCluster, installed: Path
):
    """The server's database is on its volume: the Deployment starts a new pod, the flow
    pod's Prefect client retries through the outage, the operator's follower reconnects, and
    nothing reports the run lost (its flow run is still there)."""
    _apply_vla_run(kube_cluster, "prefect-killed")
    uid = get(kube_cluster, "prun", "prefect-killed")["metadata"]["uid"]
    running = _wait_running(kube_cluster, "prefect-killed")
    wait_until(lambda: of_run(kube_cluster, "daskclusters", uid), timeout=120, what="mid-run")
    (killed,) = _kill(kube_cluster, CONTROL_NAMESPACE, "app.kubernetes.io/component=prefect-server")
    assert _status(kube_cluster, "prefect-killed")["phase"] == "Running"  # killed mid-run
    _completes_as_the_same_flow_run(
        kube_cluster, "prefect-killed", running, "the run to finish after the Prefect restart"
    )
    server = get(
        kube_cluster, "pods", "-l", "app.kubernetes.io/component=prefect-server",
        namespace=CONTROL_NAMESPACE,
    )["items"]  # fmt: skip
    assert killed.removeprefix("pod/") not in [p["metadata"]["name"] for p in server]
    assert "image" in _whole_products(installed / "products" / "prefect-killed")
    wait_until(
        lambda: not of_run(kube_cluster, "daskclusters", uid), timeout=120, what="no DaskCluster"
    )


def test_a_dask_worker_killed_mid_stage_is_replaced_and_the_run_completes(
    kube_cluster: KubeCluster, installed: Path
):
    """Dask gives the lost worker's tasks to the other worker (and to the replacement the
    dask operator starts); the calibrate + CLEAN run still completes with whole products."""
    _apply_vla_run(kube_cluster, "worker-killed", "vla-calibrated-clean.yaml")
    uid = get(kube_cluster, "prun", "worker-killed")["metadata"]["uid"]
    running = _wait_running(kube_cluster, "worker-killed")

    def mid_stage() -> str | None:
        status = _status(kube_cluster, "worker-killed")
        if (status.get("progress") or {}).get("completed", 0) < 1:
            return None  # still opening the data (the flow pod's part)
        clusters = of_run(kube_cluster, "daskclusters", uid)
        return clusters[0]["metadata"]["name"] if clusters else None

    name = wait_until(mid_stage, timeout=300, what="the run past its first stage")
    selector = f"dask.org/component=worker,dask.org/cluster-name={name}"
    _kill(kube_cluster, RUNS_NAMESPACE, selector, most=1)
    assert _status(kube_cluster, "worker-killed")["phase"] == "Running"  # killed mid-stage
    _completes_as_the_same_flow_run(
        kube_cluster, "worker-killed", running, "the run to finish without the killed worker"
    )
    assert {"image", "gains"} <= set(_whole_products(installed / "products" / "worker-killed"))
    wait_until(
        lambda: not of_run(kube_cluster, "daskclusters", uid), timeout=120, what="no DaskCluster"
    )


def test_a_full_output_volume_fails_the_run_and_commits_nothing(
    kube_cluster: KubeCluster, installed: Path
):
    """A 256 KiB tmpfs mounted inside the data volume's host folder (the pods bind it
    recursively, so they see it at /data/products/full): the set does not fit."""
    full = installed / "products" / "full"
    full.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,uid=10001,gid=10001,mode=0755", "tmpfs", full],
        check=True,
    )
    try:
        run = yaml.safe_load((REPO / "manifests" / "examples" / "synthesize-demo.yaml").read_text())
        run["metadata"]["name"] = "volume-full"
        run["spec"]["parameters"].update(output="/data/products/full/sky.ps.zarr", n_times=10)
        kube_cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=yaml.safe_dump(run))
        status = _finished(kube_cluster, "volume-full", timeout=300)
        assert status["phase"] == "Failed", status
        assert "No space left on device" in status["message"], status
        assert sorted(p.name for p in full.iterdir()) == [], "a product or staging folder left"
    finally:
        subprocess.run(["umount", full], check=False)
        full.rmdir()


def test_runs_deleted_while_the_operator_creates_them_leave_nothing(
    kube_cluster: KubeCluster, installed: Path
):
    """`kubectl delete` right after the create, at delays that fall before, during and after
    the operator's call to Prefect (at 5 s its flow run exists): every run goes away, and so
    does anything made for it (the flow run found by the run's UID, its idempotency key,
    ends; no Job, pod or DaskCluster stays)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey

    uids = []
    for i, delay in enumerate((0.0, 0.2, 0.5, 1.0, 2.0, 5.0)):
        uids.append(_apply_synth_run(kube_cluster, f"deleted-early-{i}"))
        time.sleep(delay)
        kube_cluster.kubectl(
            "delete", "prun", f"deleted-early-{i}", "-n", RUNS_NAMESPACE, "--wait=false"
        )  # fmt: skip

    def runs_left() -> list[str]:
        names = kube_cluster.kubectl("get", "prun", "-n", RUNS_NAMESPACE, "-o", "name").stdout
        return [n for n in names.split() if "deleted-early" in n]

    wait_until(lambda: not runs_left(), timeout=120, what="the deleted runs gone")
    for kind in ("jobs", "pods", "daskclusters"):
        for uid in uids:
            wait_until(
                lambda: not of_run(kube_cluster, kind, uid),  # noqa: B023
                timeout=120,
                what=f"no {kind} of run {uid}",
            )
    with prefect_settings(kube_cluster), get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=uids))
        )
    assert flow_runs, "no flow run made: every delete came before the operator's create call"
    left = {
        r.idempotency_key: r.state_type.value
        for r in flow_runs
        if r.state_type.value not in ("CANCELLED", "COMPLETED", "FAILED", "CRASHED")
    }
    assert not left, left
    assert not list((installed / "products").glob("deleted-early-*"))
