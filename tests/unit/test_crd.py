"""The CRD is generated from the Pydantic models and checked in; these tests keep the two in
step and hold the generated schema to Kubernetes' structural-schema rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from radps_operator import api
from radps_operator.crd import build_crd, build_schedule_crd, render_crd, render_schedule_crd

CHECKED_IN = (
    Path(__file__).resolve().parents[2] / "manifests" / "crd" / "pipelineruns.radps.io.yaml"
)


def _schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


def test_checked_in_crd_is_what_the_models_generate():
    assert CHECKED_IN.read_text() == render_crd(), "stale CRD: run `make crd`"


def test_every_field_is_described_for_kubectl_explain():
    undocumented = [
        path
        for path, node in _walk(_schema())
        if path not in ("", ".metadata") and not node.get("description")
    ]
    assert undocumented == []


def test_schema_is_structural():
    for path, node in _walk(_schema()):
        assert "$ref" not in node and "title" not in node, path
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        assert typed, f"{path} has no type"
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
        elif "anyOf" in node or "allOf" in node or "oneOf" in node:
            raise AssertionError(f"{path}: unions are not structural")


def test_spec_fields_match_the_design():
    spec = _schema()["properties"]["spec"]
    assert spec["properties"].keys() == {
        "pipeline",
        "parameters",
        "image",
        "workPool",
        "dask",
        "resources",
        "timeoutSeconds",
        "startDeadlineSeconds",
        "retries",
        "cancel",
        "cache",
        "rerunOf",
        "fromStage",
        "resume",
        "pauseTimeoutSeconds",
        "pauseTimeoutAction",
        "ttlSecondsAfterFinished",
    }
    assert spec["required"] == ["pipeline"]
    assert spec["properties"]["resume"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["properties"]["pauseTimeoutAction"]["enum"] == ["Fail", "Finish"]
    assert spec["properties"]["cache"]["enum"] == ["Use", "Refresh", "Off"]
    assert spec["properties"]["fromStage"]["enum"][-1] == "imaging"
    assert spec["properties"]["parameters"]["x-kubernetes-preserve-unknown-fields"] is True
    dask = spec["properties"]["dask"]["properties"]
    assert dask.keys() == {"workers", "threadsPerWorker", "workerResources", "idleTimeoutSeconds"}


def test_status_fields_match_the_design():
    status = _schema()["properties"]["status"]["properties"]
    assert status.keys() >= {
        "phase",
        "conditions",
        "observedGeneration",
        "startTime",
        "completionTime",
        "message",
        "prefect",
        "dask",
        "progress",
        "outputs",
    }
    assert set(status["phase"]["enum"]) == {p.value for p in api.Phase}
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) >= {"type", "status"}
    assert status["prefect"]["properties"].keys() == {
        "deploymentId",
        "flowRunId",
        "flowRunName",
        "state",
        "url",
    }
    assert status["startTime"]["format"] == "date-time"


def test_every_spec_field_but_cancel_and_resume_is_immutable():
    spec = _schema()["properties"]["spec"]
    rules = spec["x-kubernetes-validations"]
    guarded = {r["message"].split()[0] for r in rules}
    expected = {f"spec.{n}" for n in spec["properties"] if n not in ("cancel", "resume")}
    assert expected <= guarded
    assert not any("spec.cancel is immutable" in r["message"] for r in rules)
    assert not any("spec.resume is immutable" in r["message"] for r in rules)
    assert any("oldSelf.cancel" in r["rule"] for r in rules), "cancel must not be undone"


def test_names_columns_and_subresources():
    crd = build_crd()
    assert crd["metadata"]["name"] == "pipelineruns.radps.io"
    assert crd["spec"]["names"]["shortNames"] == ["prun"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [
        c["name"].upper() for c in version["additionalPrinterColumns"] if "priority" not in c
    ]
    assert columns == ["PIPELINE", "PHASE", "PROGRESS", "AGE", "DURATION"]


def test_crd_yaml_is_a_single_valid_document():
    documents = list(yaml.safe_load_all(CHECKED_IN.read_text()))
    assert len(documents) == 1 and documents[0]["kind"] == "CustomResourceDefinition"


CHART_CRDS = CHECKED_IN.parents[2] / "charts" / "radps" / "crds"


def test_chart_installs_the_same_crds():
    from radps_operator.dask_crds import render_dask_crds

    assert (CHART_CRDS / CHECKED_IN.name).read_text() == render_crd(), "run `make crd`"
    schedules = "pipelineschedules.radps.io.yaml"
    assert (CHART_CRDS / schedules).read_text() == render_schedule_crd(), "run `make crd`"
    assert (CHECKED_IN.parent / schedules).read_text() == render_schedule_crd(), "run `make crd`"
    dask = (CHART_CRDS / "daskclusters.kubernetes.dask.org.yaml").read_text()
    assert dask == render_dask_crds(), "run `make crd`"
    documents = list(yaml.safe_load_all(dask))
    assert [d["spec"]["names"]["kind"] for d in documents] == [
        "DaskCluster",
        "DaskWorkerGroup",
        "DaskJob",
        "DaskAutoscaler",
    ]
    assert "$ref" not in dask


def test_the_schedule_crd_checks_what_the_api_server_can():
    """Structural: a schedule's template is a PipelineRun spec (the same schema, without the
    run's immutability rules: a schedule may change), its name at most 52 characters."""
    crd = build_schedule_crd()
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    assert crd["spec"]["names"]["shortNames"] == ["psched"]
    assert [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c] == [
        "Schedule",
        "Suspend",
        "Active",
        "Last",
        "Next",
        "Age",
    ]
    assert root["properties"]["metadata"]["properties"]["name"]["maxLength"] == 52
    template_spec = root["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    run_spec = _schema()["properties"]["spec"]
    assert template_spec["properties"] == run_spec["properties"]
    assert "x-kubernetes-validations" not in template_spec
    assert root["properties"]["spec"]["properties"]["concurrencyPolicy"]["enum"] == [
        "Allow",
        "Forbid",
        "Replace",
    ]
