"""The chart's security guarantees on the real node, with NetworkPolicy enforced (the local
cluster runs kube-network-policies, hack/build.sh): what a run namespace's accounts may do,
admission of what the flow-run account asks for, the Prefect API's credential, and the
network fences around the Prefect server and each run's Dask scheduler."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.release import (
    CONTROL_NAMESPACE,
    MS_NAME,
    RELEASE,
    RUNS_NAMESPACE,
    get,
    prefect_settings,
    why_not_completed,
)
from tests.k8s import REPO, KubeCluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.k8s_full]

PREFECT = f"{RELEASE}-prefect-server.{CONTROL_NAMESPACE}.svc"
FINISHED = ("Completed", "Failed", "Crashed", "Cancelled", "TimedOut")


def test_no_account_of_a_run_namespace_may_create_pods_in_kube_system(
    kube_cluster: KubeCluster, installed: Path
):
    accounts = [a["metadata"]["name"] for a in get(kube_cluster, "serviceaccounts")["items"]]
    assert "radps-flow" in accounts
    for account in accounts:
        user = f"system:serviceaccount:{RUNS_NAMESPACE}:{account}"
        for namespace, verb in (("kube-system", "create"), (CONTROL_NAMESPACE, "create")):
            answer = kube_cluster.kubectl(
                "auth", "can-i", verb, "pods", "-n", namespace, f"--as={user}", check=False
            ).stdout.strip()
            assert answer == "no", f"{user} may {verb} pods in {namespace}"
    # the flow account makes its DaskCluster, never pods of its own
    flow = f"system:serviceaccount:{RUNS_NAMESPACE}:radps-flow"
    for verb, resource in (("create", "pods"), ("create", "pods/portforward"), ("get", "secrets")):
        answer = kube_cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", RUNS_NAMESPACE, f"--as={flow}", check=False
        ).stdout.strip()
        assert answer == "no", f"radps-flow may {verb} {resource}"


def test_admission_keeps_the_flow_account_to_its_own_account_and_allowed_images(
    kube_cluster: KubeCluster, installed: Path
):
    flow = f"system:serviceaccount:{RUNS_NAMESPACE}:radps-flow"

    def dask_cluster(account: str, image: str) -> dict[str, Any]:
        pod = {"serviceAccountName": account, "containers": [{"name": "w", "image": image}]}
        return {
            "apiVersion": "kubernetes.dask.org/v1",
            "kind": "DaskCluster",
            "metadata": {"name": f"probe-{uuid.uuid4().hex[:6]}"},
            "spec": {
                "scheduler": {"spec": pod, "service": {"ports": [{"name": "c", "port": 8786}]}},
                "worker": {"replicas": 1, "spec": pod},
            },
        }

    for account, image, refusal in (
        ("default", "radps:0.1.0", "must use the service account radps-flow"),
        ("radps-flow", "attacker.invalid/evil:1", "may only run the allowed images"),
    ):
        result = kube_cluster.kubectl(
            "create", "-n", RUNS_NAMESPACE, "--dry-run=server", f"--as={flow}", "-f", "-",
            input=json.dumps(dask_cluster(account, image)), check=False,
        )  # fmt: skip
        assert result.returncode != 0 and refusal in result.stderr, result.stderr
    admitted = kube_cluster.kubectl(
        "create", "-n", RUNS_NAMESPACE, "--dry-run=server", f"--as={flow}", "-f", "-",
        input=json.dumps(dask_cluster("radps-flow", "radps:0.1.0")), check=False,
    )  # fmt: skip
    assert admitted.returncode == 0, admitted.stderr


def probes(cluster: KubeCluster, labels: dict[str, dict[str, str]], script: str) -> dict[str, str]:
    """Run ``script`` (Python) at once in one pod of the run namespace per entry of
    ``labels`` (its pod labels); the output of each, by key."""
    names = {key: f"probe-{key}-{uuid.uuid4().hex[:6]}" for key in labels}
    for key, name in names.items():
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels[key]},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "probe", "image": "radps:0.1.0", "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", textwrap.dedent(script)],
                    "securityContext": {"allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}},
                }],
            },
        }  # fmt: skip
        cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=json.dumps(pod))
    try:
        for name in names.values():
            wait_until(
                lambda name=name: (
                    get(cluster, "pod", name)["status"].get("phase") in ("Succeeded", "Failed")
                ),
                timeout=180,
                what=f"probe pod {name} to finish",
            )
        return {
            key: cluster.kubectl("logs", "-n", RUNS_NAMESPACE, name).stdout
            for key, name in names.items()
        }
    finally:
        for name in names.values():
            cluster.kubectl("delete", "pod", name, "-n", RUNS_NAMESPACE, "--wait=false")


# A new pod's first packets may be judged before the policy implementation has learnt its IP
# (kube-network-policies reads pod IPs from the API): a target counts as open if any attempt
# within 20 s connects, and closed only if none does.
CONNECT = """
import socket, time
for host, port in {targets!r}:
    deadline, outcome = time.monotonic() + 20, None
    while outcome != "open" and time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=3).close()
            outcome = "open"
        except OSError as exc:
            outcome = "closed " + type(exc).__name__
            time.sleep(1)
    print(host, port, outcome)
"""

# (a POST without the credential is refused even earlier, 403, for its missing CSRF token)
PREFECT_CALLS = f"""
import time, urllib.request, urllib.error
def call(path):
    try:
        with urllib.request.urlopen("http://{PREFECT}:4200/api" + path, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return type(exc).__name__
deadline = time.monotonic() + 30
while (health := call("/health")) != 200 and time.monotonic() < deadline:
    time.sleep(1)
print("health", health)
print("work_pool", call("/work_pools/radps"))
"""


def test_prefect_answers_401_without_the_credential(kube_cluster: KubeCluster, installed: Path):
    # A pod the policies let through as a run's pod (it carries the label), without the Secret.
    labels = {"run": {"radps.io/run-uid": str(uuid.uuid4())}}
    output = probes(kube_cluster, labels, PREFECT_CALLS)["run"]
    assert "health 200" in output, output  # reachable: what refuses is the API
    assert "work_pool 401" in output, output


def test_unlabelled_pods_reach_neither_prefect_nor_a_runs_scheduler(
    kube_cluster: KubeCluster, installed: Path
):
    run = yaml.safe_load((REPO / "manifests" / "examples" / "vla-imaging.yaml").read_text())
    name = "fenced-run"
    run["metadata"]["name"] = name
    run["spec"]["parameters"].update(input=f"/data/vla/{MS_NAME}", output=f"/data/products/{name}")
    run["spec"]["dask"] = {"workers": 1, "threadsPerWorker": 1}
    kube_cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=yaml.safe_dump(run))
    uid = get(kube_cluster, "prun", name)["metadata"]["uid"]
    try:
        selector = f"radps.io/run-uid={uid},dask.org/component=scheduler"

        def scheduler_ip() -> str | None:
            for pod in get(kube_cluster, "pods", "-l", selector)["items"]:
                if pod["status"].get("phase") == "Running" and pod["status"].get("podIP"):
                    return pod["status"]["podIP"]
            return None

        scheduler = wait_until(scheduler_ip, timeout=300, what="the run's Dask scheduler")
        targets = [(scheduler, 8786), (PREFECT, 4200)]
        # at once, while the run's scheduler lives (the run takes about a minute)
        found = probes(
            kube_cluster,
            {
                "unlabelled": {},
                "other-run": {"radps.io/run-uid": str(uuid.uuid4())},
                "same-run": {"radps.io/run-uid": uid},
                "flow-like": {"radps.io/pipeline": "probe", "radps.io/run-uid": "x"},
            },
            CONNECT.format(targets=targets),
        )
        unlabelled, other_run = found["unlabelled"], found["other-run"]
        same_run, flow_like = found["same-run"], found["flow-like"]
        assert f"{scheduler} 8786 closed" in unlabelled, unlabelled
        assert f"{PREFECT} 4200 closed" in unlabelled, unlabelled
        assert f"{scheduler} 8786 closed" in other_run, other_run
        assert f"{scheduler} 8786 open" in same_run, same_run  # the scheduler does listen
        assert f"{PREFECT} 4200 open" in flow_like, flow_like
        phase = wait_until(
            lambda: (
                (get(kube_cluster, "prun", name).get("status") or {}).get("phase") in FINISHED
                and get(kube_cluster, "prun", name)["status"]["phase"]
            ),
            timeout=600,
            what=f"{name} finished",
        )
        assert phase == "Completed", why_not_completed(kube_cluster, name)
    finally:
        kube_cluster.kubectl("delete", "prun", name, "-n", RUNS_NAMESPACE, "--timeout=120s",
                             check=False, timeout=180)  # fmt: skip


def test_a_flow_run_no_pipelinerun_asked_for_does_not_run(
    kube_cluster: KubeCluster, installed: Path
):
    """Someone holding the Prefect credential creates a flow run of a radps deployment aimed
    at the run namespace (the `namespace` job variable cannot be pinned: it places every run).
    The worker starts its pod, whose fixed command (radps_flows.origin) finds no PipelineRun
    there that records it, and refuses: the flow never starts, no Dask cluster is made."""
    from prefect.client.orchestration import get_client

    try:
        with prefect_settings(kube_cluster), get_client(sync_client=True) as client:
            (deployment,) = [d for d in client.read_deployments() if d.name.startswith("imaging")]
            parameters = yaml.safe_load(
                (REPO / "manifests" / "examples" / "vla-imaging.yaml").read_text()
            )["spec"]["parameters"]
            parameters.update(input=f"/data/vla/{MS_NAME}", output="/data/products/forged")
            flow_run = client.create_flow_run_from_deployment(
                deployment.id,
                parameters=parameters,
                # labelled like a run's pod, so that the network lets it through: what
                # stops it is the check, not the fences
                job_variables={
                    "namespace": RUNS_NAMESPACE,
                    "labels": {"radps.io/pipeline": "imaging", "radps.io/run-uid": "forged"},
                },
                name="forged",
            )
        label = f"prefect.io/flow-run-id={flow_run.id}"

        def refused() -> str | None:
            for pod in get(kube_cluster, "pods", "-l", label)["items"]:
                if pod["status"].get("phase") in ("Succeeded", "Failed"):
                    name = pod["metadata"]["name"]
                    return (
                        kube_cluster.kubectl("logs", "-n", RUNS_NAMESPACE, name).stdout
                        + (pod["status"]["phase"])
                    )
            return None

        output = wait_until(refused, timeout=300, what="the forged flow run's pod to end")
        assert f"refusing to run: flow run {flow_run.id} is not the flow run of any" in output
        assert output.endswith("Failed"), output
        assert "Beginning flow run" not in output
        assert not get(kube_cluster, "daskclusters", "-l", label)["items"]
    finally:
        kube_cluster.kubectl(
            "delete", "jobs", "-n", RUNS_NAMESPACE, "-l", "prefect.io/flow-run-name=forged",
            check=False,
        )  # fmt: skip
