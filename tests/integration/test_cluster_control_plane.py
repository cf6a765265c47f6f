"""The PipelineRun CRD against a real kube-apiserver (the local control plane, or the cluster in
RADPS_TEST_KUBECONFIG): it installs, explains, validates and enforces immutability as designed."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s import KubeCluster, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "manifests" / "crd" / "pipelineruns.radps.io.yaml"
GROUP, VERSION, PLURAL = "radps.io", "v1alpha1", "pipelineruns"


def pipelinerun(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {
            "pipeline": "synthesize",
            "parameters": {"output": "/data/products/t.ps.zarr", "n_times": 4},
            **spec,
        },
    }


@pytest.fixture(scope="module")
def crd_installed(kube_cluster: KubeCluster) -> KubeCluster:
    """Apply the generated CRD (server-side, as `kubectl apply` does) and wait until served."""
    kube_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))

    def established() -> bool:
        out = kube_cluster.kubectl(
            "get",
            "crd",
            "pipelineruns.radps.io",
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Established")].status}',
        ).stdout
        return out == "True"

    wait_until(established, timeout=60, what="the PipelineRun CRD to be Established")
    # Discovery may lag the Established condition by a moment.
    wait_until(
        lambda: kube_cluster.kubectl("get", "prun", "-A", check=False).returncode == 0,
        timeout=60,
        what="pipelineruns in discovery",
    )
    return kube_cluster


def apply(cluster: KubeCluster, namespace: str, obj: dict[str, Any], *extra: str):
    return cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", *extra, input=json.dumps(obj), check=False
    )


def test_api_server_is_reachable(kube_cluster: KubeCluster, kube_api: Any) -> None:
    from kubernetes import client

    version = client.VersionApi(kube_api).get_code()
    assert version.major == "1"
    assert client.CoreV1Api(kube_api).list_namespace().items, "no namespaces at all?"


def test_crd_is_structural_and_established(crd_installed: KubeCluster) -> None:
    crd = json.loads(
        crd_installed.kubectl("get", "crd", "pipelineruns.radps.io", "-o", "json").stdout
    )
    conditions = {c["type"]: c for c in crd["status"]["conditions"]}
    # NonStructuralSchema shows up here when the generated schema is not structural.
    assert "NonStructuralSchema" not in conditions, conditions["NonStructuralSchema"]["message"]
    assert conditions["NamesAccepted"]["status"] == "True"
    assert crd["status"]["acceptedNames"]["shortNames"] == ["prun"]


def test_kubectl_explain_pipelinerun_spec(crd_installed: KubeCluster) -> None:
    out = wait_until(
        lambda: crd_installed.kubectl("explain", "pipelinerun.spec", check=False).stdout,
        timeout=60,
        what="kubectl explain to see the published OpenAPI",
    )
    assert "pipeline" in out and "parameters" in out and "cancel" in out
    assert "catalog" in out  # the field descriptions made it through
    deep = crd_installed.kubectl("explain", "pipelinerun.spec.dask.workers").stdout
    assert "integer" in deep


def test_valid_pipelinerun_is_accepted_with_printer_columns(
    crd_installed: KubeCluster, kube_namespace: str
) -> None:
    obj = pipelinerun("ok", dask={"workers": 1, "threadsPerWorker": 2}, cancel=False)
    proc = apply(crd_installed, kube_namespace, obj)
    assert proc.returncode == 0, proc.stderr
    table = crd_installed.kubectl("get", "prun", "-n", kube_namespace).stdout
    header = table.splitlines()[0].split()
    assert header[:2] == ["NAME", "PIPELINE"] and "PHASE" in header and "AGE" in header
    stored = json.loads(
        crd_installed.kubectl("get", "prun", "ok", "-n", kube_namespace, "-o", "json").stdout
    )
    # parameters keep unknown fields (preserve-unknown-fields); nothing was pruned.
    assert stored["spec"]["parameters"] == obj["spec"]["parameters"]


@pytest.mark.parametrize(
    ("bad_spec", "expect"),
    [
        ({"dask": {"workers": -1}}, "spec.dask.workers"),
        ({"dask": {"workers": "two"}}, "spec.dask.workers"),
        ({"pipeline": "Not_A_Name"}, "spec.pipeline"),
        ({"timeoutSeconds": "soon"}, "spec.timeoutSeconds"),
        ({"cancel": "yes"}, "spec.cancel"),
        ({"resources": {"requests": {"cpu": "-1"}}}, "spec.resources.requests"),
    ],
    ids=[
        "negative-workers",
        "string-workers",
        "bad-pipeline-name",
        "bad-timeout",
        "bad-cancel",
        "negative-cpu",
    ],
)
def test_schema_rejects_bad_field(
    crd_installed: KubeCluster, kube_namespace: str, bad_spec: dict[str, Any], expect: str
) -> None:
    obj = pipelinerun("bad")
    obj["spec"].update(bad_spec)
    proc = apply(crd_installed, kube_namespace, obj)
    assert proc.returncode != 0, f"accepted: {bad_spec}"
    assert "Invalid value" in proc.stderr or "invalid" in proc.stderr.lower(), proc.stderr
    assert expect in proc.stderr, proc.stderr


def test_unknown_field_rejected_with_strict_validation(
    crd_installed: KubeCluster, kube_namespace: str
) -> None:
    obj = pipelinerun("typo")
    obj["spec"]["workerz"] = 3  # a typo of a real field
    proc = apply(crd_installed, kube_namespace, obj, "--validate=strict")
    assert proc.returncode != 0
    assert "workerz" in proc.stderr, proc.stderr


def test_missing_pipeline_is_rejected(crd_installed: KubeCluster, kube_namespace: str) -> None:
    obj = pipelinerun("nopipe")
    del obj["spec"]["pipeline"]
    proc = apply(crd_installed, kube_namespace, obj)
    assert proc.returncode != 0
    assert "spec.pipeline" in proc.stderr and "Required" in proc.stderr, proc.stderr


def _custom(kube_api: Any):
    from kubernetes import client

    return client.CustomObjectsApi(kube_api)


def test_spec_is_immutable_except_cancel(
    crd_installed: KubeCluster, kube_api: Any, kube_namespace: str
) -> None:
    from kubernetes.client.rest import ApiException

    api = _custom(kube_api)
    created = api.create_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, pipelinerun("imm", cancel=False)
    )

    def replace(mutate) -> dict[str, Any]:
        current = api.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, "imm")
        new = copy.deepcopy(current)
        mutate(new["spec"])
        return api.replace_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, PLURAL, "imm", new
        )

    # spec.pipeline cannot change: the CEL rule answers with its message.
    with pytest.raises(ApiException) as err:
        replace(lambda spec: spec.update(pipeline="imaging"))
    assert err.value.status == 422
    assert "spec.pipeline is immutable" in err.value.body, err.value.body

    # Nor can the parameters.
    with pytest.raises(ApiException) as err:
        replace(lambda spec: spec["parameters"].update(n_times=8))
    assert err.value.status == 422
    assert "immutable" in err.value.body, err.value.body

    # cancel false -> true is the one allowed change.
    updated = replace(lambda spec: spec.update(cancel=True))
    assert updated["spec"]["cancel"] is True
    assert updated["metadata"]["generation"] == created["metadata"]["generation"] + 1

    # ... and it is one-way.
    with pytest.raises(ApiException) as err:
        replace(lambda spec: spec.update(cancel=False))
    assert err.value.status == 422
    assert "spec.cancel cannot be set back" in err.value.body, err.value.body


def test_status_subresource_is_separate(
    crd_installed: KubeCluster, kube_api: Any, kube_namespace: str
) -> None:
    api = _custom(kube_api)
    api.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, pipelinerun("st"))
    patched = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, kube_namespace, PLURAL, "st", {"status": {"phase": "Pending"}}
    )
    assert patched["status"]["phase"] == "Pending"
    # A status write through the main resource is ignored (status subresource semantics).
    patched = api.patch_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, "st", {"status": {"phase": "Completed"}}
    )
    assert patched["status"]["phase"] == "Pending"


def test_example_manifests_apply(crd_installed: KubeCluster, kube_namespace: str) -> None:
    """Every example in manifests/examples passes the server-side schema (dry run)."""
    for path in sorted((REPO / "manifests" / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "PipelineRun":
                continue
            doc["metadata"].pop("namespace", None)
            proc = crd_installed.kubectl(
                "apply",
                "--dry-run=server",
                "-n",
                kube_namespace,
                "-f",
                "-",
                input=json.dumps(doc),
                check=False,
            )
            assert proc.returncode == 0, f"{path.name}: {proc.stderr}"
