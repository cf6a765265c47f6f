"""The operator's own Kubernetes calls (radps_operator.kube: plain REST with kopf's login)
against a real kube-apiserver: what they create, what a refusal raises, what `already there`
and `gone` answer. The calls' use by the operator is tested in test_operator*.py and e2e."""

from __future__ import annotations

import asyncio

import pytest

from radps_operator.flow_identity import AuthSecret, FlowIdentities
from radps_operator.kube import Kube, KubeApiError
from radps_operator.run_network import ensure_run_network_policy
from tests.integration.operator_helpers import Runs, install_crd

pytest_plugins = ["tests.k8s"]
pytestmark = pytest.mark.integration


@pytest.fixture
def kube_env(kube_cluster, monkeypatch):
    """Log in as the operator does outside a pod: kopf's login from $KUBECONFIG."""
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_the_operators_calls_create_once_and_answer_refusals(
    kube_cluster, kube_env, kube_api, kube_namespace
):
    from kubernetes import client

    install_crd(kube_cluster)
    runs = Runs(kube_api, kube_namespace)
    # a real owner: the garbage collector removes a NetworkPolicy whose owner does not exist
    ns, uid = kube_namespace, runs.create("run-a", pipeline="synthesize")["metadata"]["uid"]
    secret = AuthSecret("radps-prefect-auth", "auth-string", "user:first")

    async def calls() -> dict:
        async with Kube() as kube:
            for _ in range(2):  # the second finds them there (409), as after a restart
                await ensure_run_network_policy(kube, ns, "run-a", uid)
                identities = FlowIdentities(kube, "radps-flow", "radps-flow-role", secret)
                await identities.ensure(ns)
            changed = AuthSecret("radps-prefect-auth", "auth-string", "user:second")
            await FlowIdentities(kube, "radps-flow", "radps-flow-role", changed).ensure(ns)
            ref = {"name": "run-a", "namespace": ns, "uid": uid}
            await kube.post_event(ref, "Warning", "TestReason", "x" * 2000)
            with pytest.raises(KubeApiError) as missing:
                await kube.request("GET", f"/api/v1/namespaces/{ns}/configmaps/nothing-here")
            return {
                "patched": await kube.patch_status(ns, "run-a", {"message": "from the test"}),
                "gone": await kube.patch_status(ns, "no-such-run", {"message": "nobody"}),
                "pods": await kube.run_pods(ns),
                "jobs": await kube.run_job_uids(ns),
                "missing": missing.value,
            }

    got = asyncio.run(calls())
    core = client.CoreV1Api(kube_api)
    policies = client.NetworkingV1Api(kube_api).list_namespaced_network_policy(ns).items
    assert [p.spec.pod_selector.match_labels for p in policies] == [{"radps.io/run-uid": uid}]
    assert core.read_namespaced_service_account("radps-flow", ns).metadata.name == "radps-flow"
    binding = client.RbacAuthorizationV1Api(kube_api).read_namespaced_role_binding("radps-flow", ns)
    assert binding.role_ref.name == "radps-flow-role"
    stored = core.read_namespaced_secret("radps-prefect-auth", ns)
    assert stored.data["auth-string"] == "dXNlcjpzZWNvbmQ="  # the patch replaced the first
    (event,) = [e for e in core.list_namespaced_event(ns).items if e.reason == "TestReason"]
    assert event.involved_object.uid == uid and len(event.message) == 1024
    assert got["patched"] is True and runs.status("run-a")["message"] == "from the test"
    assert got["gone"] is False and got["pods"] == {} and got["jobs"] == set()
    assert got["missing"].status == 404 and got["missing"].reason == "NotFound"
    assert "nothing-here" in str(got["missing"])


def test_a_refused_login_is_a_clear_error(kube_cluster, tmp_path, monkeypatch):
    """A token the API server refuses (401) is asked again once with a fresh login, then
    raised as KubeApiError: a rotated token recovers, a wrong one says so."""
    import yaml

    config = yaml.safe_load(kube_cluster.kubeconfig.read_text())
    config["users"] = [{"name": "stranger", "user": {"token": "not-a-token"}}]
    for context in config["contexts"]:
        context["context"]["user"] = "stranger"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    async def call() -> KubeApiError:
        async with Kube() as kube:
            with pytest.raises(KubeApiError) as refused:
                await kube.request("GET", "/api/v1/namespaces")
            return refused.value

    refused = asyncio.run(call())
    assert refused.status == 401 and refused.reason == "Unauthorized"
