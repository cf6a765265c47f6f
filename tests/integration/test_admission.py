"""The chart's admission policy (templates/admission.yaml) on a real kube-apiserver: what the
identities that act for runs create keeps the flow-run service account and an allowed image.
Each identity is impersonated (`kubectl --as`), with RBAC that would let it create the object,
so what refuses is admission, and what it says is checked."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.integration.operator_helpers import install_dask_crds
from tests.k8s import REPO, KubeCluster, pinned_helm, wait_until

pytestmark = pytest.mark.integration

GOOD_IMAGE = "radps:0.1.0"
EVIL_IMAGE = "attacker.invalid/evil:1"
WRONG_ACCOUNT = "pods made for a radps run must use the service account radps-flow"
WRONG_IMAGE = "pods made for a radps run may only run the allowed images: radps, ghcr.io/org/"


def applied_policies(
    cluster: KubeCluster, namespace: str, name_suffix: str, *settings: str
) -> Iterator[str]:
    """The chart's policy named ``<release>-radps<name_suffix>`` and its binding, as `helm
    install` in ``namespace`` renders them (a unique release name: policies are cluster-wide);
    removed afterwards. Yields the release's name prefix."""
    release = f"adm-{uuid.uuid4().hex[:6]}"
    args = [pinned_helm(), "template", release, str(REPO / "charts" / "radps"), "-n", namespace]
    for setting in settings:
        args += ["--set", setting]
    rendered = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    documents = [
        d
        for d in yaml.safe_load_all(rendered)
        if d
        and d["kind"].startswith("ValidatingAdmissionPolicy")
        and d["metadata"]["name"] == f"{release}-radps{name_suffix}"
    ]
    assert len(documents) == 2
    text = yaml.safe_dump_all(documents)
    cluster.kubectl("apply", "-f", "-", input=text)
    try:
        yield f"{release}-radps"
    finally:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=text)


@pytest.fixture
def policy(kube_cluster: KubeCluster, kube_namespace: str) -> Iterator[str]:
    yield from applied_policies(
        kube_cluster, kube_namespace, "-run-pods", "images.allowed={ghcr.io/org/}"
    )


@pytest.fixture
def operator_policy(kube_cluster: KubeCluster, kube_namespace: str) -> Iterator[str]:
    """The policy of a cluster-wide install on what its operator may create and delete."""
    yield from applied_policies(
        kube_cluster, kube_namespace, "-operator-identities", "operator.watchNamespaces={*}"
    )


def identity(namespace: str, account: str) -> str:
    return f"system:serviceaccount:{namespace}:{account}"


def grant(cluster: KubeCluster, namespace: str, accounts: list[str]) -> None:
    """RBAC that lets each account create every kind the policy checks, in ``namespace``, and
    the flow-run account that a pod may name (pods must name an existing one)."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "creates-run-pods", "namespace": namespace},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create"]},
            {
                "apiGroups": ["kubernetes.dask.org"],
                "resources": ["daskclusters"],
                "verbs": ["create"],
            },
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "creates-run-pods", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "creates-run-pods"},
        "subjects": [
            {"kind": "ServiceAccount", "name": account, "namespace": namespace}
            for account in accounts
        ],
    }  # fmt: skip
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "radps-flow"}}
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([role, binding, account])
    )


def pod_spec(account: str | None, image: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": image}]}
    if account is not None:
        spec["serviceAccountName"] = account
    return spec


def dask_cluster(name: str, worker_account: str | None, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name},
        "spec": {
            "scheduler": {
                "spec": pod_spec("radps-flow", GOOD_IMAGE),
                "service": {"ports": [{"name": "tcp-comm", "port": 8786}]},
            },
            "worker": {"replicas": 1, "spec": pod_spec(worker_account, image)},
        },
    }


def job(name: str, account: str, image: str) -> dict[str, Any]:
    spec = {**pod_spec(account, image), "restartPolicy": "Never"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": spec}},
    }


def deployment(name: str, account: str, image: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec(account, image)},
        },
    }


def pod(name: str, account: str | None, image: str) -> dict[str, Any]:
    spec = pod_spec(account, image)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def create(cluster: KubeCluster, namespace: str, obj: dict[str, Any], user: str | None):
    args = ["create", "-n", namespace, "-f", "-"] + ([f"--as={user}"] if user else [])
    return cluster.kubectl(*args, input=json.dumps(obj), check=False)


def test_run_identities_keep_the_flow_account_and_allowed_images(
    kube_cluster: KubeCluster, kube_namespace: str, policy: str
):
    ns = kube_namespace
    install_dask_crds(kube_cluster)
    flow = identity(ns, "radps-flow")
    # The chart's worker and dask operator, as if released into this namespace.
    worker = identity(ns, f"{policy}-prefect-worker")
    dask_operator = identity(ns, f"{policy}-dask-operator")
    grant(kube_cluster, ns, ["radps-flow", f"{policy}-prefect-worker", f"{policy}-dask-operator"])

    # The flow-run account (a run author's code) asks for a worker on another account: the
    # policy takes effect within moments of its binding.
    def refused() -> str:
        result = create(
            kube_cluster, ns, dask_cluster("other-account", "default", GOOD_IMAGE), flow
        )
        return result.returncode != 0 and result.stderr

    message = wait_until(refused, timeout=30, what="the policy to refuse a DaskCluster")
    assert "ValidatingAdmissionPolicy" in message and WRONG_ACCOUNT in message, message

    cases = [
        (flow, dask_cluster("evil-image", "radps-flow", EVIL_IMAGE), WRONG_IMAGE),
        (flow, dask_cluster("unset-account", None, GOOD_IMAGE), WRONG_ACCOUNT),
        (worker, job("other-account", "default", GOOD_IMAGE), WRONG_ACCOUNT),
        (worker, job("evil-image", "radps-flow", EVIL_IMAGE), WRONG_IMAGE),
        (dask_operator, deployment("evil-image", "radps-flow", EVIL_IMAGE), WRONG_IMAGE),
        (dask_operator, pod("other-account", "default", GOOD_IMAGE), WRONG_ACCOUNT),
        # a tag of an allowed repository's name with more after it is another repository
        (worker, job("lookalike", "radps-flow", "radps-evil:1"), WRONG_IMAGE),
    ]
    for user, obj, expected in cases:
        result = create(kube_cluster, ns, obj, user)
        name = f"{obj['kind']}/{obj['metadata']['name']} as {user}"
        assert result.returncode != 0, f"{name} was admitted"
        assert expected in result.stderr, f"{name}: {result.stderr}"

    # What runs need is admitted: the flow account, allowed images (tag, digest, a prefix).
    admitted = [
        (flow, dask_cluster("ok", "radps-flow", "ghcr.io/org/radps:2")),
        (worker, job("ok", "radps-flow", GOOD_IMAGE)),
        (dask_operator, deployment("ok", "radps-flow", "radps@sha256:" + "0" * 64)),
        (dask_operator, pod("ok", "radps-flow", GOOD_IMAGE)),
        # a person in their namespace is not an identity that acts for runs
        (None, pod("by-a-person", "default", EVIL_IMAGE)),
    ]
    for user, obj in admitted:
        result = create(kube_cluster, ns, obj, user)
        assert result.returncode == 0, f"{obj['kind']}/{obj['metadata']['name']}: {result.stderr}"


def test_a_cluster_wide_operator_may_touch_only_what_it_made(
    kube_cluster: KubeCluster, kube_namespace: str, operator_policy: str
):
    """Watching every namespace, the operator may create and delete service accounts,
    role bindings and Secrets anywhere (RBAC cannot narrow that by label): admission keeps it
    to those labelled as its own, and to Opaque Secrets."""
    ns, release = kube_namespace, operator_policy
    operator = identity(ns, f"{release}-operator")
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "identities"},
        "rules": [
            {"apiGroups": [""], "resources": ["serviceaccounts", "secrets"],
             "verbs": ["create", "delete", "patch"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"],
             "verbs": ["create", "delete"]},
        ],
    }  # fmt: skip
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "identities"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "identities"},
        "subjects": [{"kind": "ServiceAccount", "name": f"{release}-operator", "namespace": ns}],
    }
    someone = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "someone"}}
    kube_cluster.kubectl(
        "apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all([role, binding, someone])
    )
    own = {"radps.io/flow-cluster-role": f"{release}-flow-run"}

    def secret(name: str, labels: dict[str, str], kind: str = "Opaque") -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": labels}
        if kind == "kubernetes.io/service-account-token":
            meta["annotations"] = {"kubernetes.io/service-account.name": "someone"}
        return {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": meta}

    def delete(kind: str, name: str):
        return kube_cluster.kubectl("delete", kind, name, "-n", ns, f"--as={operator}", check=False)

    def refused_dry_run() -> str:  # (until the policy is active a real delete would succeed)
        result = kube_cluster.kubectl(
            "delete", "serviceaccount", "someone", "-n", ns, f"--as={operator}",
            "--dry-run=server", check=False,
        )  # fmt: skip
        return result.returncode != 0 and result.stderr

    wait_until(refused_dry_run, timeout=30, what="the policy to be active")
    refused = wait_until(
        lambda: (r := delete("serviceaccount", "someone")).returncode != 0 and r.stderr,
        timeout=30,
        what="the policy to refuse deleting another's account",
    )
    assert "may only delete serviceaccounts it made" in refused, refused
    assert delete("rolebinding", "identities").returncode != 0
    foreign = create(kube_cluster, ns, secret("foreign", {}), operator)
    assert "may only create secrets it made" in foreign.stderr, foreign.stderr
    token = create(
        kube_cluster, ns, secret("token", own, "kubernetes.io/service-account-token"), operator
    )
    assert "may only create Opaque Secrets" in token.stderr, token.stderr

    # what it makes for a namespace's first run it may create, and delete again
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "made", "labels": own},
    }
    for obj, kind in ((account, "serviceaccount"), (secret("made", own), "secret")):
        made = create(kube_cluster, ns, obj, operator)
        assert made.returncode == 0, made.stderr
        deleted = delete(kind, "made")
        assert deleted.returncode == 0, deleted.stderr
    # and a person is not the operator
    kube_cluster.kubectl("delete", "serviceaccount", "someone", "-n", ns)
