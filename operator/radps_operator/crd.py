"""Generate the PipelineRun CustomResourceDefinition from the Pydantic models.

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no `$ref`, no nullable
unions, free-form maps marked `x-kubernetes-preserve-unknown-fields`. Pydantic emits JSON Schema
with `$defs`, `anyOf: [X, null]` for optional fields and titles; `structural_schema` rewrites one
into the other so the models stay the only place the API is written down.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from radps_operator import api, schedule_api

# JSON-schema keywords that mean the same in a Kubernetes structural schema.
_KEPT_KEYWORDS = (
    "description",
    "type",
    "format",
    "enum",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)


class UnsupportedSchemaError(ValueError):
    """A model uses a JSON-schema construct that has no structural equivalent."""


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's validation schema (wire names) as a Kubernetes structural schema."""
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(schema, schema.get("$defs", {}), path=model.__name__)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline `$ref` and drop the `null` branch of optional fields, keeping the outer
    description (the field's) over the referenced model's."""
    while True:
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
            continue
        branches = node.get("anyOf") or node.get("allOf")
        if branches and not node.get("x-kubernetes-int-or-string"):
            non_null = [b for b in branches if b.get("type") != "null"]
            if len(non_null) != 1:
                raise UnsupportedSchemaError(f"union of {len(non_null)} types: {node}")
            outer = {k: v for k, v in node.items() if k not in ("anyOf", "allOf")}
            node = {**non_null[0], **outer}
            continue
        return node


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs)
    if node.get("x-kubernetes-int-or-string"):
        out = {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
        }
        out.update({k: node[k] for k in ("description", "pattern") if k in node})
        return out

    out = {k: node[k] for k in _KEPT_KEYWORDS if k in node}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "enum" in out and "type" not in out:
        out["type"] = "string"

    if out.get("type") == "object":
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        if properties:
            out["properties"] = {
                name: _convert(child, defs, f"{path}.{name}") for name, child in properties.items()
            }
            if node.get("required"):
                out["required"] = list(node["required"])
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = _convert(extra, defs, f"{path}.*")
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif out.get("type") == "array":
        out["items"] = _convert(node["items"], defs, f"{path}[]")
    elif "type" not in out:
        raise UnsupportedSchemaError(f"{path}: no type in {node}")
    return out


MUTABLE_SPEC_FIELDS = ("cancel", "resume")


def _immutability_rules(spec_schema: dict[str, Any]) -> list[dict[str, str]]:
    """A run is immutable like a Job: every spec field but `cancel` and `resume` (the answer
    to a pause, see radps_operator.pauses) keeps its value, and a cancelled run stays
    cancelled. One rule per field so the message names the field."""
    rules = []
    required = set(spec_schema.get("required", []))
    for name in spec_schema["properties"]:
        if name in MUTABLE_SPEC_FIELDS:
            continue
        if name in required:
            rule = f"self.{name} == oldSelf.{name}"
        else:
            rule = (
                f"has(self.{name}) == has(oldSelf.{name}) && "
                f"(!has(self.{name}) || self.{name} == oldSelf.{name})"
            )
        rules.append(
            {
                "rule": rule,
                "message": f"spec.{name} is immutable: a PipelineRun cannot be changed once "
                "created (only spec.cancel and spec.resume can); delete it and create a new one",
            }
        )
    rules.append(
        {
            "rule": "!has(oldSelf.cancel) || !oldSelf.cancel || (has(self.cancel) && self.cancel)",
            "message": "spec.cancel cannot be set back to false once a run is cancelled",
        }
    )
    return rules


PRINTER_COLUMNS = [
    {"name": "Pipeline", "type": "string", "jsonPath": ".spec.pipeline"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Duration", "type": "string", "jsonPath": ".status.duration"},
    {
        "name": "Message",
        "type": "string",
        "jsonPath": ".status.message",
        "priority": 1,
    },
]


SCHEDULE_PRINTER_COLUMNS = [
    {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
    {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
    {"name": "Active", "type": "integer", "jsonPath": ".status.activeCount"},
    {"name": "Last", "type": "date", "jsonPath": ".status.lastScheduleTime"},
    {"name": "Next", "type": "string", "jsonPath": ".status.nextScheduleTime"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Pipeline",
        "type": "string",
        "jsonPath": ".spec.template.spec.pipeline",
        "priority": 1,
    },
    {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
]


def build_crd() -> dict[str, Any]:
    """The complete CRD object for PipelineRun."""
    spec = structural_schema(api.PipelineRunSpec)
    spec["x-kubernetes-validations"] = _immutability_rules(spec)
    return _crd(
        api.KIND,
        api.PLURAL,
        api.SINGULAR,
        api.SHORT_NAMES,
        api.PipelineRun.__doc__ or "",
        spec,
        structural_schema(api.PipelineRunStatus),
        PRINTER_COLUMNS,
    )


def build_schedule_crd() -> dict[str, Any]:
    """The complete CRD object for PipelineSchedule. Its name is at most 52 characters, so
    that its runs' names (``<name>-<minute>``) are DNS labels."""
    crd = _crd(
        schedule_api.KIND,
        schedule_api.PLURAL,
        schedule_api.SINGULAR,
        schedule_api.SHORT_NAMES,
        schedule_api.PipelineSchedule.__doc__ or "",
        structural_schema(schedule_api.PipelineScheduleSpec),
        structural_schema(schedule_api.PipelineScheduleStatus),
        SCHEDULE_PRINTER_COLUMNS,
    )
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    root["properties"]["metadata"] = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": schedule_api.MAX_NAME_LENGTH},
        },
    }
    return crd


def _crd(
    kind: str,
    plural: str,
    singular: str,
    short_names: tuple[str, ...],
    description: str,
    spec: dict[str, Any],
    status: dict[str, Any],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    root = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": api.API_VERSION},
            "kind": {"type": "string", "description": kind},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "radps", "app.kubernetes.io/part-of": "radps"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": singular,
                "listKind": f"{kind}List",
                "shortNames": list(short_names),
                "categories": ["radps"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render_crd() -> str:
    header = (
        "# Generated by `radps crd` from radps_operator/api.py; do not edit by hand.\n"
        "# Regenerate with `make crd`.\n"
    )
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def render_schedule_crd() -> str:
    header = (
        "# Generated by `radps crd --schedules` from radps_operator/schedule_api.py; do not "
        "edit by hand.\n# Regenerate with `make crd`.\n"
    )
    return header + yaml.safe_dump(build_schedule_crd(), sort_keys=False, width=100)
