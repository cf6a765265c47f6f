"""The operator end to end on real parts: a real kube-apiserver (local control plane), a real
Prefect server, a real process worker running the real flows, the operator in KopfRunner."""

from __future__ import annotations

import base64
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

from tests.integration.operator_helpers import (
    Runs,
    condition,
    install_crd,
    install_dask_crds,
    kopf_operator,
    operator_env,
)
from tests.integration.prefect_helpers import TINY_SYNTH, process_worker  # noqa: F401
from tests.k8s import KubeCluster, wait_until

pytest_plugins = ["tests.k8s"]
pytestmark = pytest.mark.integration


@pytest.fixture
def env(kube_cluster, radps_server, process_worker):  # noqa: F811
    install_crd(kube_cluster)
    return operator_env(kube_cluster, radps_server.api_url, process_worker.pool)


@pytest.fixture
def runs(kube_api, kube_namespace):
    return Runs(kube_api, kube_namespace)


def synth(tmp_path: Path, name: str, **extra) -> dict:
    return {
        "pipeline": "synthesize",
        "parameters": {"output": str(tmp_path / f"{name}.ps.zarr"), **TINY_SYNTH},
        "dask": {"workers": 1},
        **extra,
    }


def test_happy_path_completes_with_outputs_and_events(env, runs, tmp_path):
    with kopf_operator(runs.namespace, env):
        runs.create("happy", **synth(tmp_path, "happy"))
        first = wait_until(
            lambda: (s := runs.status("happy")).get("prefect", {}).get("flowRunId") and s,
            timeout=30,
            what="the flow run in status",
        )
        assert first["prefect"]["flowRunName"] == "happy" and first["prefect"]["flowRunId"]
        assert first["prefect"]["url"].endswith(first["prefect"]["flowRunId"])
        status = runs.wait_phase("happy", "Completed", timeout=120)
        runs.delete_all()
    succeeded = condition(status, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("True", "Completed")
    assert {o["name"] for o in status["outputs"]} == {"visibilities", "truth"}
    assert status["progress"]["summary"] == "1/1"
    assert status["startTime"] and status["completionTime"] and status["duration"]
    reasons = [reason for _, reason, _ in runs.events("happy")]
    assert "Completed" in reasons and "Running" in reasons, reasons


def test_failing_flow_and_invalid_spec(env, runs, tmp_path):
    with kopf_operator(runs.namespace, env):
        runs.create(
            "bad-input",
            pipeline="imaging",
            parameters={"input": str(tmp_path / "missing.ms"), "output": str(tmp_path / "o")},
            dask={"workers": 1},
        )
        runs.create("invalid", pipeline="synthesize", parameters={"n_antennas": "four"})
        runs.create("evil-image", **synth(tmp_path, "evil"), image="attacker.invalid/evil:1")
        deep: list = []
        for _ in range(1000):  # once a RecursionError in the operator's validation
            deep = [deep]
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(10_000)  # the kubernetes client serializes recursively
        try:
            runs.create("deep", pipeline="synthesize", parameters={"output": "/o", "sources": deep})
        finally:
            sys.setrecursionlimit(limit)
        invalid = runs.wait_phase("invalid", "Failed", timeout=30)
        deep_run = runs.wait_phase("deep", "Failed", timeout=30)
        evil = runs.wait_phase("evil-image", "Failed", timeout=30)
        failed = runs.wait_phase("bad-input", "Failed", timeout=120)
        runs.delete_all()
    cond = condition(invalid, "Succeeded")
    assert cond["reason"] == "InvalidSpec" and "spec.parameters.output" in cond["message"]
    assert "spec.parameters.n_antennas" in invalid["message"]
    assert "prefect" not in invalid
    assert ("Warning", "InvalidSpec") in [(t, r) for t, r, _ in runs.events("invalid")]
    assert condition(deep_run, "Succeeded")["reason"] == "InvalidSpec"
    assert "spec.parameters.sources.0.0" in deep_run["message"]
    assert "nested deeper than 32 levels" in deep_run["message"]
    # An image outside the allowed list (the default: radps) never reaches Prefect, so no
    # pod of it can exist.
    assert condition(evil, "Succeeded")["reason"] == "InvalidSpec"
    assert "spec.image: image 'attacker.invalid/evil:1' is not allowed" in evil["message"]
    assert "allowed: radps (any tag)" in evil["message"]
    assert "prefect" not in evil
    cond = condition(failed, "Succeeded")
    assert (cond["status"], cond["reason"]) == ("False", "Failed")
    assert "missing.ms" in failed["message"] or "InputDataError" in failed["message"], failed


def test_cancel_delete_timeout_and_ttl(env, runs, tmp_path):
    # Runs that stay Late (their pool has no worker) show reason Late and are controllable.
    from tests.integration.prefect_helpers import create_process_pool

    idle_pool = f"idle-{uuid.uuid4().hex[:6]}"
    create_process_pool(env["RADPS_PREFECT_API_URL"], idle_pool)
    idle = {"workPool": idle_pool}
    with kopf_operator(runs.namespace, env):
        runs.create("cancel-me", **synth(tmp_path, "c", **idle))
        runs.create("delete-me", **synth(tmp_path, "d", **idle))
        runs.create("time-me", **synth(tmp_path, "t", timeoutSeconds=3, **idle))
        runs.create("ttl-me", **synth(tmp_path, "ttl", ttlSecondsAfterFinished=2))
        runs.wait_phase("cancel-me", "Scheduled", timeout=30)
        runs.patch_spec("cancel-me", cancel=True)
        cancelled = runs.wait_phase("cancel-me", "Cancelled", timeout=30)
        late = wait_until(
            lambda: (
                (condition(runs.status("delete-me"), "Succeeded") or {}).get("reason") == "Late"
            ),
            timeout=60,
            what="reason Late (no worker on the pool)",
            describe=lambda: runs.status("delete-me"),
        )
        assert late
        dask = DaskClusters(env, runs)
        mine = dask.create("dc-mine", runs.get("delete-me")["metadata"]["uid"])
        other = dask.create("dc-other", "someone-else")
        runs.delete("delete-me")
        wait_until(lambda: not runs.exists("delete-me"), timeout=30, what="delete-me gone")
        assert dask.names() == [other] and mine != other
        runs.wait_phase("time-me", "TimedOut", timeout=30)
        wait_until(lambda: timed_out_done(runs), timeout=30, what="time-me finished")
        wait_until(lambda: not runs.exists("ttl-me"), timeout=120, what="ttl-me deleted by TTL")
        runs.delete_all()
    assert condition(cancelled, "Succeeded")["reason"] == "Cancelled"
    assert "TimedOut" in [r for _, r, _ in runs.events("time-me")]
    assert "Completed" in [r for _, r, _ in runs.events("ttl-me")], "deleted before it completed"


def test_no_run_stays_stuck(env, runs, tmp_path):
    """Each way a run could wait forever ends with the reason in its status and an Event: a
    work pool Prefect does not know (a terminal 4xx, not retried), a run no worker starts
    (the start deadline), a flow run deleted in Prefect (lost), a cancel no worker completes
    (its process died without a word, so its flow run stays Running: set through Prefect's
    API, since a real process cannot die that quietly on demand)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.states import Running

    from tests.integration.prefect_helpers import create_process_pool

    api_url = env["RADPS_PREFECT_API_URL"]
    idle_pool = f"idle-{uuid.uuid4().hex[:6]}"
    create_process_pool(api_url, idle_pool)
    with kopf_operator(runs.namespace, {**env, "RADPS_CANCEL_GRACE_SECONDS": "3"}):
        runs.create("no-pool", **synth(tmp_path, "np", workPool="no-such-pool"))
        runs.create("abandoned", **synth(tmp_path, "ab", workPool=idle_pool))
        runs.create("no-start", **synth(tmp_path, "ns", workPool=idle_pool, startDeadlineSeconds=5))
        runs.create("lost", **synth(tmp_path, "lost", workPool=idle_pool))
        rejected = runs.wait_phase("no-pool", "Failed", timeout=30)
        never = runs.wait_phase("no-start", "Failed", timeout=60)
        scheduled = runs.wait_phase("lost", "Scheduled", timeout=30)
        with SyncPrefectClient(api_url) as client:
            client.delete_flow_run(uuid.UUID(scheduled["prefect"]["flowRunId"]))
            lost = runs.wait_phase("lost", "Crashed", timeout=60)
            abandoned = runs.wait_phase("abandoned", "Scheduled", timeout=30)["prefect"]
            client.set_flow_run_state(uuid.UUID(abandoned["flowRunId"]), Running(), force=True)
            runs.wait_phase("abandoned", "Running", timeout=30)
            runs.patch_spec("abandoned", cancel=True)
            runs.wait_phase("abandoned", "Cancelling", "Cancelled", timeout=30)
            abandoned = runs.wait_phase("abandoned", "Cancelled", timeout=60)
            # the deadline may pass while the create call is in flight: the flow run it
            # makes is recorded and cancelled all the same; or before the create (a busy
            # Prefect delayed it), and then none is made. Either way nothing starts later.
            from prefect.client.schemas.filters import (
                FlowRunFilter,
                FlowRunFilterIdempotencyKey,
            )

            key = runs.get("no-start")["metadata"]["uid"]
            made = FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=[key]))

            def ended() -> list[str]:
                found = client.read_flow_runs(flow_run_filter=made)
                if not found:
                    return ["none made"]
                return (
                    [f.state.name for f in found]
                    if all(f.state.is_cancelled() for f in found)
                    else []
                )

            flow_runs = wait_until(
                ended,
                timeout=30,
                what="no-start's flow run, if any, cancelled",
            )
        events = {name: [reason for _, reason, _ in runs.events(name)] for name in runs.names()}
        runs.delete_all()
    cond = condition(rejected, "Succeeded")
    assert (cond["status"], cond["reason"]) == ("False", "PrefectRejected"), rejected
    assert "Prefect refused" in rejected["message"] and "no-such-pool" in rejected["message"]
    assert "PrefectRejected" in events["no-pool"]
    cond = condition(never, "Succeeded")
    assert (cond["status"], cond["reason"]) == ("False", "StartDeadlineExceeded"), never
    assert "not running 5 s after creation" in never["message"]
    assert flow_runs  # cancelled flow runs, or none made: nothing left to start later
    assert "Failed" in events["no-start"]
    cond = condition(lost, "Succeeded")
    assert (cond["status"], cond["reason"]) == ("False", "FlowRunLost"), lost
    assert "no longer exists in Prefect" in lost["message"] and "Crashed" in events["lost"]
    assert "did not stop it within 3 s" in abandoned["message"], abandoned
    assert "CancelForced" in events["abandoned"]


def test_deleting_a_run_cancels_a_flow_run_its_status_never_recorded(env, runs, kube_api, tmp_path):
    """A create that timed out after Prefect made the flow run leaves no id in the status;
    deleting the PipelineRun still finds the flow run (its idempotency key is the UID)."""
    from kubernetes import client as k8s
    from prefect.client.orchestration import SyncPrefectClient

    from tests.integration.prefect_helpers import create_process_pool

    api_url = env["RADPS_PREFECT_API_URL"]
    idle_pool = f"idle-{uuid.uuid4().hex[:6]}"
    create_process_pool(api_url, idle_pool)
    with kopf_operator(runs.namespace, env):
        runs.create("orphan", **synth(tmp_path, "o", workPool=idle_pool))
        flow_run_id = runs.wait_phase("orphan", "Scheduled", timeout=30)["prefect"]["flowRunId"]
    custom = k8s.CustomObjectsApi(kube_api)
    custom.patch_namespaced_custom_object_status(
        "radps.io", "v1alpha1", runs.namespace, "pipelineruns", "orphan",
        {"status": {"prefect": None, "phase": "Pending"}},
    )  # fmt: skip
    runs.delete("orphan")  # the finalizer keeps it until the operator has seen the deletion
    with kopf_operator(runs.namespace, env):
        wait_until(lambda: not runs.exists("orphan"), timeout=60, what="orphan deleted")
    with SyncPrefectClient(api_url) as client:
        assert client.read_flow_run(uuid.UUID(flow_run_id)).state.is_cancelled()


def test_running_run_shows_its_dask_cluster(env, runs, tmp_path):
    # The flow run is moved to Running by hand (as its engine would): no pod needed to check
    # that the operator finds the DaskCluster labelled with the run and shows it.
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.states import Running

    from tests.integration.prefect_helpers import create_process_pool

    idle_pool = f"idle-{uuid.uuid4().hex[:6]}"
    create_process_pool(env["RADPS_PREFECT_API_URL"], idle_pool)
    with kopf_operator(runs.namespace, env):
        runs.create("dask-me", **synth(tmp_path, "dm", workPool=idle_pool))
        scheduled = runs.wait_phase("dask-me", "Scheduled", timeout=30)
        with SyncPrefectClient(env["RADPS_PREFECT_API_URL"]) as client:
            client.set_flow_run_state(
                uuid.UUID(scheduled["prefect"]["flowRunId"]), Running(), force=True
            )
        runs.wait_phase("dask-me", "Running", timeout=30)
        dask = DaskClusters(env, runs)
        dask.create("dc-dask-me", runs.get("dask-me")["metadata"]["uid"])
        shown = wait_until(
            lambda: (
                runs.status("dask-me").get("dask", {}).get("cluster") == "dc-dask-me"
                and runs.status("dask-me")["dask"]
            ),
            timeout=30,
            what=".status.dask",
        )
        runs.delete("dask-me")
        wait_until(lambda: dask.names() == [], timeout=30, what="DaskCluster removed with it")
        runs.delete_all()
    assert shown["workers"] == 1
    assert shown["dashboardUrl"] == f"http://dc-dask-me-scheduler.{runs.namespace}.svc:8787/status"


def test_release_cleanup_deletes_every_run_through_the_operator(env, runs, tmp_path):
    # What the chart's pre-delete hook runs before `helm uninstall` removes the operator.
    from radps_operator.release_cleanup import delete_all_runs
    from tests.integration.prefect_helpers import create_process_pool

    idle_pool = f"idle-{uuid.uuid4().hex[:6]}"
    create_process_pool(env["RADPS_PREFECT_API_URL"], idle_pool)
    with kopf_operator(runs.namespace, env):
        for name in ("u-1", "u-2"):
            runs.create(name, **synth(tmp_path, name, workPool=idle_pool))
            runs.wait_phase(name, "Scheduled", timeout=30)
    # no operator now: its finalizer holds the runs, and the cleanup says which are left
    assert delete_all_runs(runs.custom, [runs.namespace], timeout=3) == [
        f"PipelineRun {runs.namespace}/u-1",
        f"PipelineRun {runs.namespace}/u-2",
    ]
    with kopf_operator(runs.namespace, env):
        assert delete_all_runs(runs.custom, [runs.namespace], timeout=60) == []
    assert runs.names() == []


def test_flow_account_made_per_namespace_for_a_cluster_wide_install(env, runs, kube_api, tmp_path):
    """What a cluster-wide install turns on (RADPS_FLOW_CLUSTER_ROLE): a namespace's first run
    gets the flow-run service account, bound to the chart's ClusterRole, and a copy of the
    Prefect credential's Secret (flow pods read it there); the uninstall hook's cleanup removes
    exactly what was made."""
    from kubernetes import client

    from radps_operator.flow_identity import delete_identities

    suffix = uuid.uuid4().hex[:6]
    role, account, namespace = f"radps-test-flow-{suffix}", f"flow-{suffix}", runs.namespace
    rbac, core = client.RbacAuthorizationV1Api(kube_api), client.CoreV1Api(kube_api)
    rule = {"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": [rule]})
    try:
        settings = {
            "RADPS_FLOW_CLUSTER_ROLE": role,
            "RADPS_FLOW_SERVICE_ACCOUNT": account,
            # (this test's Prefect server has no auth: it ignores the credential)
            "RADPS_PREFECT_AUTH_STRING": f"radps:secret-{suffix}",
            "RADPS_AUTH_SECRET": f"auth-{suffix}",
        }
        with kopf_operator(namespace, {**env, **settings}):
            runs.create("ident", **synth(tmp_path, "ident"))
            runs.wait_phase("ident", "Completed", timeout=120)
            runs.delete_all()
        core.read_namespaced_service_account(account, namespace)
        binding = rbac.read_namespaced_role_binding(account, namespace)
        assert (binding.role_ref.kind, binding.role_ref.name) == ("ClusterRole", role)
        review = client.AuthorizationV1Api(kube_api).create_subject_access_review(
            {
                "spec": {
                    "user": f"system:serviceaccount:{namespace}:{account}",
                    "resourceAttributes": {
                        "namespace": namespace,
                        "verb": "get",
                        "resource": "services",
                    },
                }
            }
        )
        assert review.status.allowed, review.status
        secret = core.read_namespaced_secret(f"auth-{suffix}", namespace)
        assert secret.type == "Opaque"
        assert base64.b64decode(secret.data["auth-string"]).decode() == f"radps:secret-{suffix}"
        assert secret.metadata.labels["radps.io/flow-cluster-role"] == role
        assert sorted(delete_identities(core, rbac, role)) == [
            f"RoleBinding {namespace}/{account}",
            f"Secret {namespace}/auth-{suffix}",
            f"ServiceAccount {namespace}/{account}",
        ]
        assert not core.list_namespaced_service_account(
            namespace, field_selector=f"metadata.name={account}"
        ).items
    finally:
        rbac.delete_cluster_role(role)


def test_each_run_gets_its_own_network_policy_gone_with_it(env, runs, kube_api, tmp_path):
    """With the chart's default-deny policies (RADPS_RUN_NETWORK_POLICY), the operator gives
    each run a policy that admits traffic among the run's own pods only; Kubernetes deletes it
    with the run (owner reference)."""
    from kubernetes import client

    networking = client.NetworkingV1Api(kube_api)
    with kopf_operator(runs.namespace, {**env, "RADPS_RUN_NETWORK_POLICY": "true"}):
        runs.create("fenced", **synth(tmp_path, "fenced"))
        runs.wait_phase("fenced", "Completed", timeout=120)
        uid = runs.get("fenced")["metadata"]["uid"]
        policy = networking.read_namespaced_network_policy(f"radps-run-{uid}", runs.namespace)
        runs.delete_all()
    same_run = {"radps.io/run-uid": uid}
    assert policy.spec.pod_selector.match_labels == same_run
    assert sorted(policy.spec.policy_types) == ["Egress", "Ingress"]
    ((ingress,),) = [rule._from for rule in policy.spec.ingress]
    ((egress,),) = [rule.to for rule in policy.spec.egress]
    assert ingress.pod_selector.match_labels == same_run and ingress.namespace_selector is None
    assert egress.pod_selector.match_labels == same_run and egress.namespace_selector is None
    (owner,) = policy.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("PipelineRun", "fenced", uid)
    wait_until(
        lambda: not networking.list_namespaced_network_policy(runs.namespace).items,
        timeout=60,
        what="the policy deleted with its run",
    )


class DaskClusters:
    """DaskCluster objects (the dask-kubernetes CRDs, no dask operator: nothing runs)."""

    def __init__(self, env: dict[str, str], runs: Runs):
        install_dask_crds(KubeCluster(Path(env["KUBECONFIG"]), full=False, kubectl_path=_kubectl()))
        self.custom, self.namespace = runs.custom, runs.namespace

    def create(self, name: str, uid: str) -> str:
        body = {
            "apiVersion": "kubernetes.dask.org/v1",
            "kind": "DaskCluster",
            "metadata": {"name": name, "labels": {"radps.io/run-uid": uid}},
            "spec": {"worker": {"replicas": 1}, "scheduler": {}},
        }
        self.custom.create_namespaced_custom_object(
            "kubernetes.dask.org", "v1", self.namespace, "daskclusters", body
        )
        return name

    def names(self) -> list[str]:
        found = self.custom.list_namespaced_custom_object(
            "kubernetes.dask.org", "v1", self.namespace, "daskclusters"
        )
        return [item["metadata"]["name"] for item in found["items"]]


def _kubectl() -> str:
    from tests.k8s import _local_kubectl

    return _local_kubectl()


def timed_out_done(runs: Runs) -> bool:
    status = runs.status("time-me")
    return status.get("phase") == "TimedOut" and bool(status.get("completionTime"))


def test_kubernetes_pool_job_carries_the_run(kube_cluster, kube_api, runs, radps_server, tmp_path):
    """The real prefect-kubernetes worker turns the flow run into a Job (created by the API
    server even without a node): image, env, resources, labels and service account."""
    import subprocess

    from kubernetes import client
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect_kubernetes.worker import KubernetesWorker

    install_crd(kube_cluster)
    pool = f"k8s-{uuid.uuid4().hex[:6]}"
    with SyncPrefectClient(radps_server.api_url) as prefect:
        prefect.create_work_pool(
            WorkPoolCreate(
                name=pool,
                type="kubernetes",
                base_job_template=KubernetesWorker.get_default_base_job_template(),
            )
        )
    worker_env = {
        **os.environ,
        "KUBECONFIG": str(kube_cluster.kubeconfig),
        "PREFECT_API_URL": radps_server.api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool],
        env=worker_env,
        stdout=open(tmp_path / "worker.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    env = operator_env(kube_cluster, radps_server.api_url, pool)
    batch = client.BatchV1Api(kube_api)
    try:
        with kopf_operator(runs.namespace, env):
            runs.create(
                "on-k8s",
                **synth(tmp_path, "k8s", image="radps:test"),
                resources={"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"cpu": "1"}},
            )
            jobs = wait_until(
                lambda: batch.list_namespaced_job(runs.namespace).items,
                timeout=240,  # the worker's start and first poll, on a loaded machine
                what="the flow run's Job",
            )
            uid = runs.get("on-k8s")["metadata"]["uid"]
            runs.delete_all()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    job = jobs[0]
    pod = job.spec.template.spec
    container = pod.containers[0]
    env_vars = {e.name: e.value for e in container.env}
    assert container.image == "radps:test"
    assert env_vars["RADPS_RUN_UID"] == uid and env_vars["RADPS_RUN_NAME"] == "on-k8s"
    assert env_vars["RADPS_RUN_NAMESPACE"] == runs.namespace
    assert env_vars["RADPS_DASK_WORKERS"] == "1" and "PREFECT__FLOW_RUN_ID" in env_vars
    assert container.resources.requests == {"cpu": "250m", "memory": "1Gi"}
    assert container.resources.limits == {"cpu": "1"}
    assert job.metadata.labels["radps.io/run-uid"] == uid
    assert pod.service_account_name == "radps-flow"


def reason(runs: Runs, name: str) -> str | None:
    return (condition(runs.status(name), "Succeeded") or {}).get("reason")
