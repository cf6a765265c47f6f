"""The Helm chart renders, lints, validates its values, and every pod it makes meets the
restricted Pod Security Standard (checked on the rendered manifests; the e2e suite checks the
same against a namespace that enforces it)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import pinned_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "radps"


@pytest.fixture(scope="module")
def helm() -> str:
    """The pinned helm (`make deps` builds it before the tests)."""
    return pinned_helm()


def render(helm: str, *settings: str, values: Path | None = None) -> list[dict[str, Any]]:
    args = [helm, "template", "t", str(CHART), "--namespace", "radps", "--include-crds"]
    if values is not None:
        args += ["--values", str(values)]
    for setting in settings:
        args += ["--set", setting]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def pod_specs(documents: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for doc in documents:
        if doc["kind"] in ("Deployment", "Job"):
            specs.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "Pod":
            specs.append((doc["metadata"]["name"], doc["spec"]))
    return specs


def test_lint_is_clean(helm):
    result = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_pod_meets_the_restricted_standard(helm):
    specs = pod_specs(render(helm, "objectStore.enabled=true"))
    assert {name for name, _ in specs} >= {
        "t-radps-operator",
        "t-radps-prefect-server",
        "t-radps-prefect-worker",
        "t-radps-dask-operator",
        "t-radps-test",
        "t-radps-delete-runs",
        "t-radps-objectstore",
        "t-radps-objectstore-bucket",
    }
    for name, spec in specs:
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
        assert not any("hostPath" in v for v in spec.get("volumes", [])), name


def test_standard_labels_everywhere(helm):
    for doc in render(helm):
        if doc["kind"] == "CustomResourceDefinition":
            continue
        labels = doc["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks {key}"


def test_crds_are_included(helm):
    crds = {d["metadata"]["name"] for d in render(helm) if d["kind"] == "CustomResourceDefinition"}
    assert crds == {
        "pipelineruns.radps.io",
        "pipelineschedules.radps.io",
        "daskclusters.kubernetes.dask.org",
        "daskworkergroups.kubernetes.dask.org",
        "daskjobs.kubernetes.dask.org",
        "daskautoscalers.kubernetes.dask.org",
    }


def test_namespaced_by_default_cluster_wide_on_request(helm):
    namespaced = render(helm)
    bindings = [
        (d["metadata"]["name"], d["metadata"]["namespace"])
        for d in namespaced
        if d["kind"] == "RoleBinding" and "operator" in d["metadata"]["name"]
    ]
    assert sorted(bindings) == [
        ("t-radps-dask-operator", "radps"),
        ("t-radps-operator-runs", "radps"),
    ]
    wide = render(helm, "operator.watchNamespaces={*}")
    assert any(
        d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"] == "t-radps-operator-runs"
        for d in wide
    )
    env = next(
        c["env"]
        for name, spec in pod_specs(wide)
        if name == "t-radps-operator"
        for c in spec["containers"]
    )
    assert {"name": "RADPS_WATCH_NAMESPACES", "value": "*"} in env


def _env(documents: list[dict[str, Any]], pod: str) -> dict[str, str]:
    (spec,) = [spec for name, spec in pod_specs(documents) if name == pod]
    return {e["name"]: e.get("value") for e in spec["containers"][0].get("env", [])}


def test_worker_observer_watches_only_what_its_rbac_allows(helm):
    """prefect-kubernetes' observer watches the whole cluster by default; with namespaced RBAC
    that is an endless 403 and no Crashed detection, so it is told the watched namespaces."""
    observer = "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"
    assert _env(render(helm), "t-radps-prefect-worker")[observer] == "radps"
    listed = render(helm, "operator.watchNamespaces={radps,astro}")
    assert _env(listed, "t-radps-prefect-worker")[observer] == "radps,astro"
    assert observer not in _env(
        render(helm, "operator.watchNamespaces={*}"), "t-radps-prefect-worker"
    )


def test_cluster_wide_operator_makes_the_flow_account_per_namespace(helm):
    """Namespaced: the account and its Role are rendered per watched namespace. Cluster-wide:
    a flow-run ClusterRole that the operator may bind (and nothing else), the setting that
    turns that on, and the uninstall hook removing what it made."""
    namespaced = render(helm, "operator.watchNamespaces={radps,astro}")
    flow_accounts = [
        d["metadata"]["namespace"]
        for d in namespaced
        if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "radps-flow"
    ]
    assert sorted(flow_accounts) == ["astro", "radps"]
    wide = render(helm, "operator.watchNamespaces={*}")
    assert not [d for d in wide if d["metadata"]["name"] == "radps-flow"]
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in wide}
    flow_role = by_name[("ClusterRole", "t-radps-flow-run")]
    assert any("daskclusters" in rule["resources"] for rule in flow_role["rules"])
    # No port-forward: it would reach any pod of the namespace past its NetworkPolicy.
    for role in [flow_role] + [d for d in namespaced if d["kind"] == "Role"]:
        assert not [r for r in role["rules"] if "pods/portforward" in r["resources"]], role
    grants = by_name[("ClusterRole", "t-radps-operator-flow-identities")]["rules"]
    (bind,) = [rule for rule in grants if "bind" in rule["verbs"]]
    assert (bind["resources"], bind["resourceNames"]) == (["clusterroles"], ["t-radps-flow-run"])
    binding = by_name[("ClusterRoleBinding", "t-radps-operator-flow-identities")]
    assert binding["subjects"][0]["name"] == "t-radps-operator"
    assert _env(wide, "t-radps-operator")["RADPS_FLOW_CLUSTER_ROLE"] == "t-radps-flow-run"
    assert "RADPS_FLOW_CLUSTER_ROLE" not in _env(namespaced, "t-radps-operator")
    (hook,) = [spec for name, spec in pod_specs(wide) if name == "t-radps-delete-runs"]
    command = hook["containers"][0]["command"]
    assert command[command.index("--flow-cluster-role") + 1] == "t-radps-flow-run"


def test_the_operator_allows_the_charts_own_image_and_the_listed_ones(helm):
    default = _env(render(helm), "t-radps-operator")["RADPS_ALLOWED_IMAGES"]
    assert default == "radps"
    listed = render(
        helm, "image.repository=ghcr.io/org/radps", "images.allowed={registry.example.org/x/,radps}"
    )
    allowed = _env(listed, "t-radps-operator")["RADPS_ALLOWED_IMAGES"]
    assert allowed == "ghcr.io/org/radps,registry.example.org/x/,radps"


def test_admission_policy_pins_what_run_identities_create(helm):
    """The policy (checked on a real API server in tests/integration/test_admission.py)
    matches the release's worker and dask operator and any flow-run account, and holds the
    flow-run account's name and the allowed images; it can be turned off."""
    documents = render(helm, "images.allowed={ghcr.io/org/}", "flowRuns.serviceAccount.name=runs")
    by_kind = {d["kind"]: d for d in documents if d["kind"].startswith("ValidatingAdmission")}
    policy = by_kind["ValidatingAdmissionPolicy"]["spec"]
    (condition,) = policy["matchConditions"]
    assert "system:serviceaccount:radps:t-radps-prefect-worker" in condition["expression"]
    assert "system:serviceaccount:radps:t-radps-dask-operator" in condition["expression"]
    assert "endsWith(':runs')" in condition["expression"]
    variables = {v["name"]: v["expression"] for v in policy["variables"]}
    assert json.loads(variables["allowedImages"]) == ["radps", "ghcr.io/org/"]
    assert "s.serviceAccountName == 'runs'" in policy["validations"][0]["expression"]
    assert policy["failurePolicy"] == "Fail"
    binding = by_kind["ValidatingAdmissionPolicyBinding"]["spec"]
    assert binding == {"policyName": "t-radps-run-pods", "validationActions": ["Deny"]}
    off = render(helm, "admission.enabled=false")
    assert not [d for d in off if d["kind"].startswith("ValidatingAdmission")]


def test_uninstall_first_deletes_the_runs_as_the_operator(helm):
    (hook,) = [d for d in render(helm) if d["metadata"]["name"] == "t-radps-delete-runs"]
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    spec = hook["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "t-radps-operator"
    command = spec["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "radps_operator.release_cleanup"]
    assert command[command.index("--namespaces") + 1] == "radps"
    wide = render(helm, "operator.watchNamespaces={*}")
    (hook,) = [d for d in wide if d["metadata"]["name"] == "t-radps-delete-runs"]
    assert "*" in hook["spec"]["template"]["spec"]["containers"][0]["command"]
    assert not [d for d in render(helm, "uninstall.deleteRuns=false") if d["kind"] == "Job"]


def test_postgresql_replaces_the_sqlite_volume(helm):
    documents = render(
        helm,
        "prefect.server.database.type=postgresql",
        "prefect.server.database.postgresql.host=db.example",
        "prefect.server.database.postgresql.existingSecret=prefect-db",
    )
    assert not any(d["kind"] == "PersistentVolumeClaim" for d in documents)
    server = dict(pod_specs(documents))["t-radps-prefect-server"]["containers"][0]
    url = next(
        e["value"] for e in server["env"] if e["name"] == "PREFECT_API_DATABASE_CONNECTION_URL"
    )
    assert url.startswith("postgresql+asyncpg://prefect:$(RADPS_DB_PASSWORD)@db.example:5432/")


def test_node_port_publishes_the_prefect_ui_for_kind(helm):
    # kind-config.yaml maps node port 30420 to the host's 127.0.0.1:4200
    default = render(helm)
    (service,) = [
        d for d in default if d["kind"] == "Service" and "prefect" in d["metadata"]["name"]
    ]
    assert service["spec"]["type"] == "ClusterIP"
    assert not [d for d in default if d["metadata"]["name"].endswith("-prefect-node-port")]
    published = render(helm, "prefect.server.service.type=NodePort")
    (service,) = [
        d for d in published if d["kind"] == "Service" and "prefect" in d["metadata"]["name"]
    ]
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == 30420
    (policy,) = [d for d in published if d["metadata"]["name"].endswith("-prefect-node-port")]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "prefect-server"
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("operator.watchNamespaces={Bad_Name}", "watchNamespaces"),
        ("prefect.server.database.type=mysql", "type"),
        ("operator.bogus=1", "bogus"),
        ("prefect.server.service.type=LoadBalancer", "type"),
        ("prefect.server.service.nodePort=80", "nodePort"),
        ("images.allowed={a b}", "allowed"),
        ("objectStore.endpoint=s3.example.org", "endpoint"),
        ("objectStore.bucket=Bad_Bucket", "bucket"),
    ],
)
def test_values_schema_rejects_bad_values(helm, setting, message):
    result = subprocess.run(
        [helm, "template", "t", str(CHART), "--set", setting], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert message in result.stderr


def _auth_refs(documents: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every env entry of every container that carries a Prefect auth string, by (pod, name)."""
    refs = {}
    for pod, spec in pod_specs(documents):
        for container in spec["containers"] + spec.get("initContainers", []):
            for entry in container.get("env", []):
                if "AUTH_STRING" in entry["name"]:
                    refs[(f"{pod}/{container['name']}", entry["name"])] = entry
    return refs


def test_prefect_auth_is_on_by_default_from_a_generated_secret(helm):
    """The server, worker, operator and flow-pod template read the credential from a Secret
    (never a literal); the chart generates it, and copies it into each other run namespace,
    where flow pods read it; CSRF is on and CORS allows only the UI's own origin."""
    documents = render(helm, "operator.watchNamespaces={radps,astro}")
    secrets = [d for d in documents if d["kind"] == "Secret"]
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["astro", "radps"]
    assert {s["metadata"]["name"] for s in secrets} == {"t-radps-prefect-auth"}
    (value,) = {s["data"]["auth-string"] for s in secrets}  # one credential, in every copy
    user, password = base64.b64decode(value).decode().split(":")
    assert user == "radps" and len(password) == 40 and password.isalnum()
    refs = _auth_refs(documents)
    assert set(refs) >= {
        ("t-radps-prefect-server/prefect-server", "PREFECT_SERVER_API_AUTH_STRING"),
        ("t-radps-operator/operator", "RADPS_PREFECT_AUTH_STRING"),
        ("t-radps-operator/operator", "PREFECT_API_AUTH_STRING"),
        ("t-radps-prefect-worker/worker", "PREFECT_API_AUTH_STRING"),
        ("t-radps-prefect-worker/work-pool", "PREFECT_API_AUTH_STRING"),
    }
    for entry in refs.values():
        assert "value" not in entry
        assert entry["valueFrom"]["secretKeyRef"] == {
            "name": "t-radps-prefect-auth",
            "key": "auth-string",
        }
    # the flow-pod template (radps_operator.work_pool) takes the same Secret by name
    assert _env(documents, "t-radps-prefect-worker")["RADPS_AUTH_SECRET"] == "t-radps-prefect-auth"
    server = _env(documents, "t-radps-prefect-server")
    assert server["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] == "true"
    assert server["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"] == "http://localhost:4200"
    cors = _env(
        render(helm, "prefect.server.uiApiUrl=https://prefect.example.org/api"),
        "t-radps-prefect-server",
    )["PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS"]
    assert cors == "https://prefect.example.org"


def test_prefect_auth_from_an_existing_secret_or_off(helm):
    existing = render(
        helm, "prefect.basicAuth.existingSecret=mine", "prefect.basicAuth.secretKey=k"
    )
    assert not [d for d in existing if d["kind"] == "Secret"]  # (helm template cannot read it)
    for entry in _auth_refs(existing).values():
        assert entry["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "k"}
    off = render(helm, "prefect.basicAuth.enabled=false")
    assert not [d for d in off if d["kind"] == "Secret"]
    assert _auth_refs(off) == {}
    assert _env(off, "t-radps-prefect-worker")["RADPS_AUTH_SECRET"] == ""


def test_node_port_needs_prefect_auth(helm):
    result = subprocess.run(
        [helm, "template", "t", str(CHART), "--set", "prefect.server.service.type=NodePort",
         "--set", "prefect.basicAuth.enabled=false"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "NodePort publishes the Prefect API and UI on every node" in result.stderr


def test_a_cluster_wide_operator_copies_the_credential_and_is_held_to_its_own_objects(helm):
    wide = render(helm, "operator.watchNamespaces={*}")
    env = _env(wide, "t-radps-operator")
    assert (env["RADPS_AUTH_SECRET"], env["RADPS_AUTH_SECRET_KEY"]) == (
        "t-radps-prefect-auth",
        "auth-string",
    )
    (secret,) = [d for d in wide if d["kind"] == "Secret"]  # the release namespace's only
    assert secret["metadata"]["namespace"] == "radps"
    by_name = {d["metadata"]["name"]: d for d in wide if d["kind"] == "ValidatingAdmissionPolicy"}
    policy = by_name["t-radps-operator-identities"]["spec"]
    (condition,) = policy["matchConditions"]
    assert "system:serviceaccount:radps:t-radps-operator" in condition["expression"]
    assert "== 't-radps-flow-run'" in policy["validations"][0]["expression"]
    namespaced = render(helm)
    assert "t-radps-operator-identities" not in {d["metadata"]["name"] for d in namespaced}


def test_the_dask_operator_acts_only_in_the_served_namespaces(helm):
    """Its pod/service/deployment rights are bound per served namespace (cluster-wide only
    with "*"); only discovery (CRDs, namespaces) is cluster-wide, and kopf is told the
    namespaces."""
    listed = render(helm, "operator.watchNamespaces={astro,radps}")
    bindings = [
        (d["kind"], d["metadata"].get("namespace"))
        for d in listed
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and d["roleRef"]["name"] == "t-radps-dask-operator"
    ]
    assert sorted(bindings) == [("RoleBinding", "astro"), ("RoleBinding", "radps")]
    (discovery,) = [d for d in listed if d["metadata"]["name"] == "t-radps-dask-operator-discovery"
                    and d["kind"] == "ClusterRole"]  # fmt: skip
    assert {r for rule in discovery["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
    }
    command = dict(pod_specs(listed))["t-radps-dask-operator"]["containers"][0]["command"]
    assert "--all-namespaces" not in command
    assert [command[i + 1] for i, a in enumerate(command) if a == "--namespace"] == [
        "astro",
        "radps",
    ]
    wide = render(helm, "operator.watchNamespaces={*}")
    assert ("ClusterRoleBinding", "t-radps-dask-operator") in {
        (d["kind"], d["metadata"]["name"]) for d in wide
    }
    assert (
        "--all-namespaces"
        in dict(pod_specs(wide))["t-radps-dask-operator"]["containers"][0]["command"]
    )


def _policies(documents: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (
            d["metadata"].get("namespace", "radps"),
            d["metadata"]["name"].removeprefix("t-radps-"),
        ): d["spec"]
        for d in documents
        if d["kind"] == "NetworkPolicy"
    }


def test_network_policy_denies_by_default_with_explicit_allows(helm):
    """Default deny in the control plane's and each served namespace; the Prefect server
    admits the operator, the worker and the pods of runs in the served namespaces; flow pods
    may reach the API, and every pod of a run the Prefect server; schedulers admit the dask
    operator (a run's own pods come in through the policy the operator makes per run); the
    operator may make those."""
    documents = render(helm, "operator.watchNamespaces={astro}")
    policies = _policies(documents)
    for namespace in ("radps", "astro"):
        deny = policies[(namespace, "default-deny")]
        assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        dns = policies[(namespace, "dns")]["egress"][0]
        assert "to" not in dns and {p["port"] for p in dns["ports"]} == {53}
    server = policies[("radps", "prefect-server")]
    assert server["policyTypes"] == ["Ingress", "Egress"]
    control_pods, flow_pods = server["ingress"][0]["from"]
    assert control_pods["podSelector"]["matchExpressions"][1]["values"] == [
        "operator",
        "prefect-worker",
    ]
    assert flow_pods["namespaceSelector"]["matchExpressions"][0]["values"] == ["astro"]
    assert flow_pods["podSelector"]["matchExpressions"] == [
        {"key": "radps.io/run-uid", "operator": "Exists"}  # flow pods and their Dask pods
    ]
    flow = policies[("astro", "flow-pods")]
    assert flow["podSelector"]["matchExpressions"][0]["key"] == "radps.io/pipeline"
    (api_server,) = flow["egress"]
    assert {p["port"] for p in api_server["ports"]} == {443, 6443}
    (prefect,) = policies[("astro", "run-pods")]["egress"]
    (to_prefect,) = prefect["to"]
    assert to_prefect["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "radps"
    }
    assert to_prefect["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "prefect-server"
    )
    schedulers = policies[("astro", "dask-schedulers")]
    (peer,) = schedulers["ingress"][0]["from"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "dask-operator"
    assert ("radps", "flow-pods") not in policies  # runs are not served there
    env = _env(documents, "t-radps-operator")
    assert env["RADPS_RUN_NETWORK_POLICY"] == "true"
    runs_role = next(d for d in documents if d["metadata"]["name"] == "t-radps-operator-runs")
    assert {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
            "verbs": ["create"]} in runs_role["rules"]  # fmt: skip
    off = render(helm, "networkPolicy.enabled=false")
    assert not _policies(off)
    assert _env(off, "t-radps-operator")["RADPS_RUN_NETWORK_POLICY"] == "false"


def test_no_object_store_unless_asked(helm):
    documents = render(helm)
    assert not [d for d in documents if "objectstore" in d["metadata"]["name"]]
    assert not [k for k in _env(documents, "t-radps-prefect-worker") if "OBJECT_STORE" in k]


def test_the_charts_own_object_store_and_its_credential(helm):
    documents = render(helm, "objectStore.enabled=true", "operator.watchNamespaces={runs,more}")
    secrets = {
        d["metadata"]["namespace"]: d["data"]
        for d in documents
        if d["kind"] == "Secret" and d["metadata"]["name"] == "t-radps-objectstore"
    }
    assert set(secrets) == {"radps", "runs", "more"}  # the server's, and each run namespace's
    keys = secrets["radps"]
    assert set(keys) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(copy == keys for copy in secrets.values())
    secret_key = base64.b64decode(keys["AWS_SECRET_ACCESS_KEY"]).decode()
    assert len(secret_key) == 40
    rendered = yaml.safe_dump_all(documents)
    assert rendered.count(keys["AWS_SECRET_ACCESS_KEY"]) == 3  # in the Secrets only
    assert secret_key not in rendered

    (server,) = [s for n, s in pod_specs(documents) if n == "t-radps-objectstore"]
    container = server["containers"][0]
    assert container["image"] == "radps.local/seaweedfs:4.53-1"
    args = container["args"]
    # only the S3 gateway listens beyond the pod's loopback
    assert "-ip.bind=127.0.0.1" in args and "-s3.ip.bind=0.0.0.0" in args
    assert "-master.telemetry=false" in args
    env = {e["name"]: e for e in container["env"]}
    reference = env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "t-radps-objectstore", "key": "AWS_SECRET_ACCESS_KEY"}
    worker = _env(documents, "t-radps-prefect-worker")
    assert worker["RADPS_OBJECT_STORE_ENDPOINT"] == "http://t-radps-objectstore.radps.svc:8333"
    assert worker["RADPS_OBJECT_STORE_SECRET"] == "t-radps-objectstore"
    assert not [k for k in worker if k.startswith("AWS_")]  # the worker never holds the keys

    policies = _policies(documents)
    store = policies[("radps", "objectstore")]
    (rule,) = store["ingress"]
    assert rule["ports"] == [{"port": 8333, "protocol": "TCP"}]  # no other SeaweedFS port
    assert store["policyTypes"] == ["Ingress", "Egress"] and "egress" not in store
    for namespace in ("runs", "more"):
        (egress,) = policies[(namespace, "run-objectstore")]["egress"]
        assert egress["ports"] == [{"port": 8333, "protocol": "TCP"}]
        assert egress["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
            "objectstore"
        )


def test_an_outside_object_store_from_an_existing_secret(helm):
    documents = render(
        helm,
        "objectStore.endpoint=https://s3.example.org",
        "objectStore.existingSecret=our-s3",
        "objectStore.region=eu-west-3",
        "operator.watchNamespaces={runs}",
    )
    assert not [s for n, s in pod_specs(documents) if "objectstore" in n]  # no server of ours
    worker = _env(documents, "t-radps-prefect-worker")
    assert worker["RADPS_OBJECT_STORE_ENDPOINT"] == "https://s3.example.org"
    assert worker["RADPS_OBJECT_STORE_SECRET"] == "our-s3"
    assert worker["RADPS_OBJECT_STORE_REGION"] == "eu-west-3"
    (egress,) = _policies(documents)[("runs", "run-objectstore")]["egress"]
    assert egress == {"ports": [{"port": 443, "protocol": "TCP"}]}
    with_port = render(helm, "objectStore.endpoint=http://minio.storage:9000")
    (egress,) = _policies(with_port)[("radps", "run-objectstore")]["egress"]
    assert egress == {"ports": [{"port": 9000, "protocol": "TCP"}]}


OPERATORS_VALUES = """
imagePullSecrets: [{name: regcred}]
scheduling:
  nodeSelector: {pool: radps}
  tolerations: [{key: dedicated, operator: Equal, value: radps, effect: NoSchedule}]
  priorityClassName: radps-default
operator:
  serviceAccount: {annotations: {example.org/role: operator}}
  scheduling:
    nodeSelector: {pool: control}
  extraEnv: [{name: HTTPS_PROXY, value: "http://proxy:3128"}]
  extraVolumes: [{name: ca, configMap: {name: corporate-ca}}]
  extraVolumeMounts: [{name: ca, mountPath: /etc/ssl/corporate}]
prefect:
  worker:
    serviceAccount: {annotations: {example.org/role: worker}}
flowRuns:
  serviceAccount: {annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::1:role/radps"}}
  scheduling:
    priorityClassName: science
    affinity:
      nodeAffinity:
        requiredDuringSchedulingIgnoredDuringExecution:
          nodeSelectorTerms: [{matchExpressions: [{key: gpu, operator: DoesNotExist}]}]
  extraEnv: [{name: OMP_PROC_BIND, value: "true"}]
  extraVolumes: [{name: scratch, emptyDir: {sizeLimit: 50Gi}}]
  extraVolumeMounts: [{name: scratch, mountPath: /scratch}]
daskOperator:
  serviceAccount: {annotations: {example.org/role: dask}}
"""


def render_values(helm: str, tmp_path: Path, values: str, *settings: str) -> list[dict[str, Any]]:
    path = tmp_path / "values.yaml"
    path.write_text(values)
    return render(helm, *settings, values=path)


def test_every_role_takes_pull_secrets_placement_and_account_annotations(helm, tmp_path):
    """A cluster operator's usual knobs, on every pod of the chart: pull secrets, and each
    role's placement over the chart-wide one; and the flow-run pods' own settings travel to
    the work pool's template (and from there to the Dask pods, tests/unit/test_work_pool.py)."""
    documents = render_values(helm, tmp_path, OPERATORS_VALUES, "objectStore.enabled=true")
    for name, spec in pod_specs(documents):
        assert spec["imagePullSecrets"] == [{"name": "regcred"}], name
        assert spec["priorityClassName"] == "radps-default", name
        assert spec["tolerations"][0]["key"] == "dedicated", name
        expected = {"pool": "control"} if name == "t-radps-operator" else {"pool": "radps"}
        assert spec["nodeSelector"] == expected, name
    (operator,) = [s for n, s in pod_specs(documents) if n == "t-radps-operator"]
    container = operator["containers"][0]
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in container["env"]
    assert {"name": "ca", "mountPath": "/etc/ssl/corporate"} in container["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "corporate-ca"}} in operator["volumes"]
    accounts = {
        d["metadata"]["name"]: d["metadata"].get("annotations", {})
        for d in documents
        if d["kind"] == "ServiceAccount"
    }
    assert accounts["t-radps-operator"] == {"example.org/role": "operator"}
    assert accounts["t-radps-prefect-worker"] == {"example.org/role": "worker"}
    assert accounts["t-radps-dask-operator"] == {"example.org/role": "dask"}
    assert accounts["radps-flow"]["eks.amazonaws.com/role-arn"] == "arn:aws:iam::1:role/radps"
    settings = json.loads(_env(documents, "t-radps-prefect-worker")["RADPS_FLOW_POD_SETTINGS"])
    assert settings["priorityClassName"] == "science"  # flowRuns' own over the chart-wide
    assert settings["nodeSelector"] == {"pool": "radps"}  # the chart-wide, where it says none
    assert settings["imagePullSecrets"] == [{"name": "regcred"}]
    assert settings["affinity"]["nodeAffinity"]
    assert settings["extraVolumeMounts"] == [{"name": "scratch", "mountPath": "/scratch"}]
    assert settings["extraEnv"] == [{"name": "OMP_PROC_BIND", "value": "true"}]


def test_by_default_no_placement_and_no_extra_settings(helm):
    documents = render(helm)
    for name, spec in pod_specs(documents):
        for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity"):
            assert key not in spec, (name, key)
        assert "priorityClassName" not in spec, name
    settings = json.loads(_env(documents, "t-radps-prefect-worker")["RADPS_FLOW_POD_SETTINGS"])
    assert not any(settings.values()), settings


def test_service_monitor_and_grafana_dashboard_on_request(helm):
    assert not [d for d in render(helm) if d["kind"] in ("ServiceMonitor", "ConfigMap")]
    documents = render(
        helm,
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.labels.release=kube-prometheus",
        "metrics.grafanaDashboard.enabled=true",
    )
    (monitor,) = [d for d in documents if d["kind"] == "ServiceMonitor"]
    (service,) = [
        d for d in documents
        if d["kind"] == "Service" and d["metadata"]["name"] == "t-radps-operator-metrics"
    ]  # fmt: skip
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (allow,) = [
        d
        for d in documents
        if d["metadata"]["name"] == "t-radps-operator-metrics" and d["kind"] == "NetworkPolicy"
    ]
    assert allow["spec"]["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    (dashboard,) = [d for d in documents if d["kind"] == "ConfigMap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    panels = json.loads(dashboard["data"]["radps.json"])["panels"]
    queries = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in ("radps_pipelineruns", "radps_reconcile_seconds_bucket",
                   "radps_status_lag_seconds_bucket", "kube_pod_status_phase"):  # fmt: skip
        assert metric in queries, metric
    exposed = set(_operator_metric_names())
    used = {m.removesuffix("_bucket") for m in re.findall(r"radps_[a-z_]+", queries)}
    assert used <= exposed, used - exposed  # the dashboard queries metrics that exist


def _operator_metric_names() -> list[str]:
    source = (ROOT / "operator" / "radps_operator" / "metrics.py").read_text()
    return re.findall(r'"(radps_[a-z_]+)"', source)


def test_the_ui_ingress_only_behind_auth(helm):
    documents = render(
        helm,
        "prefect.server.ingress.enabled=true",
        "prefect.server.ingress.host=radps.example.org",
        "prefect.server.ingress.className=nginx",
        "prefect.server.ingress.tlsSecretName=radps-tls",
    )
    (ingress,) = [d for d in documents if d["kind"] == "Ingress"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"hosts": ["radps.example.org"], "secretName": "radps-tls"}]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "t-radps-prefect-server", "port": {"name": "http"}}
    result = subprocess.run(
        [helm, "template", "t", str(CHART), "--set", "prefect.server.ingress.enabled=true",
         "--set", "prefect.server.ingress.host=radps.example.org",
         "--set", "prefect.basicAuth.enabled=false"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0 and "needs prefect.basicAuth.enabled=true" in result.stderr


def test_the_operator_may_make_and_prune_the_runs_of_schedules_and_no_more(helm):
    """It creates runs for PipelineSchedules (owned by them: the finalizers rule lets an
    owner reference block deletion under OwnerReferencesPermissionEnforcement) and deletes
    those beyond the history limits; it gets no rights on anything a run's pods use."""
    documents = render(helm)
    role = next(d for d in documents if d["metadata"]["name"] == "t-radps-operator-runs")
    verbs: dict[str, set[str]] = {}
    for rule in role["rules"]:
        if rule["apiGroups"] == ["radps.io"]:
            for resource in rule["resources"]:
                verbs.setdefault(resource, set()).update(rule["verbs"])
    assert {"create", "delete", "list", "watch"} <= verbs["pipelineruns"]
    assert {"get", "list", "watch", "patch"} <= verbs["pipelineschedules"]
    assert "create" not in verbs["pipelineschedules"]  # schedules are their authors' own
    assert verbs["pipelineschedules/status"] >= {"patch"}
    assert verbs["pipelineschedules/finalizers"] == {"update"}
