"""Who asked for a run and what code ran it: the provenance a products manifest records.

On Kubernetes the flow-run pod reads both from the API with its own account (which may get the
pods and PipelineRuns of its namespace, see the chart's `radps.flowRunRules`): the PipelineRun
as stored (its whole spec, not only the parameters Prefect passed) and the image ID the
kubelet resolved for the pod's container, which is the digest of what actually ran, where the
spec names a tag that can move. `radps run` records the PipelineRun it was given
(:func:`set_local_run`) and has no image.

Read in the flow process, then passed to where products are committed: synthesize commits in a
Dask worker, whose pod need not hold the account.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from radps_flows import contract
from radps_flows.contract import PIPELINERUN_GROUP, PIPELINERUN_PLURAL, PIPELINERUN_VERSION

_local_run: dict[str, Any] | None = None

#: Parameters that say where a product goes, not how it was made: left out of its HISTORY.
_NOT_HISTORY = frozenset({"output", "overwrite"})


def software_version() -> str:
    """The installed radps version (``0.0.0`` in a source tree that was never installed)."""
    try:
        return metadata.version("radps")
    except metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "0.0.0"


def history(pipeline: str, parameters: Mapping[str, Any]) -> list[str]:
    """The HISTORY of a product: the radps version and pipeline, then every parameter that
    shaped it (the input, calibration, imaging and CLEAN settings; defaults included, so the
    record does not depend on a later release's defaults) as ``name = value``."""
    lines = [f"radps {software_version()} pipeline {pipeline}"]
    for name in sorted(parameters):
        if name not in _NOT_HISTORY:
            lines.append(f"{name} = {json.dumps(parameters[name], default=str)}")
    return lines


def pause_history(answers: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """HISTORY lines of an interactive run's answers (the image attribute ``clean_answers``):
    where CLEAN stood, and what each answer set."""
    lines = []
    for n, answer in enumerate(answers or (), start=1):
        i = answer.get("pause", n)
        cycle = answer.get("cycle")
        where = "the dirty image" if cycle == 0 else f"major cycle {cycle}"
        said = {k: v for k, v in answer.items() if k not in ("cycle", "components", "pause")}
        told = ", ".join(f"{k} = {json.dumps(v, default=str)}" for k, v in said.items())
        lines.append(
            f"pause {i} after {where} ({answer.get('components')} components): {told or 'continue'}"
        )
    return lines


def set_local_run(name: str, spec: Mapping[str, Any]) -> None:
    """The PipelineRun a local run (`radps run`, in this process) was given."""
    global _local_run
    _local_run = {"name": name, "namespace": None, "uid": None, "spec": dict(spec)}


def of_this_run(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``{"pipeline_run": {name, namespace, uid, spec}, "image": {reference, id}}``; what
    cannot be read is None, with the reason under ``"unavailable"``."""
    if not environ.get("RADPS_POD_NAME"):
        return {"pipeline_run": _local_run, "image": None}
    run: dict[str, Any] = {
        "name": environ.get(contract.RUN_NAME_ENV),
        "namespace": environ.get(contract.RUN_NAMESPACE_ENV) or environ.get("RADPS_POD_NAMESPACE"),
        "uid": environ.get(contract.RUN_UID_ENV),
        "spec": None,
    }
    image: dict[str, Any] = {"reference": environ.get(contract.IMAGE_ENV), "id": None}
    record: dict[str, Any] = {"pipeline_run": run, "image": image}
    try:
        stored, pod = _read(environ, run["namespace"], run["name"])
    except Exception as exc:  # provenance is a record, never a reason to fail a run
        record["unavailable"] = f"not read from the Kubernetes API: {exc}"[:500]
        return record
    if stored.get("metadata", {}).get("uid") == run["uid"]:
        run["spec"] = stored.get("spec")
    else:  # deleted and made again under the same name since this run started
        record["unavailable"] = f"PipelineRun {run['name']} is no longer the one with this UID"
    image["id"] = image_id(pod, image["reference"])
    return record


def image_id(pod: Mapping[str, Any], reference: str | None) -> str | None:
    """The resolved image of the pod's container running ``reference`` (the only one, in a
    flow-run pod)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if len(statuses) > 1:
        named = (reference, f"docker.io/library/{reference}")
        statuses = [s for s in statuses if s.get("image") in named]
    return (statuses[0].get("imageID") or None) if len(statuses) == 1 else None


def _read(
    environ: Mapping[str, str], namespace: str | None, name: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    from kubernetes import client, config

    config.load_incluster_config()
    api = client.ApiClient()
    pod = client.CoreV1Api(api).read_namespaced_pod(
        environ["RADPS_POD_NAME"], environ.get("RADPS_POD_NAMESPACE", namespace or "default")
    )
    stored = client.CustomObjectsApi(api).get_namespaced_custom_object(
        PIPELINERUN_GROUP, PIPELINERUN_VERSION, namespace, PIPELINERUN_PLURAL, name
    )
    return stored, api.sanitize_for_serialization(pod)
