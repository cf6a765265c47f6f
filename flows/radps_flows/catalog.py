"""The pipeline catalog: every pipeline a PipelineRun may name, with its parameter schema.

The catalog is the one list of pipelines. Each is described by its parameter model
(:mod:`radps_flows.parameters`): the description, the JSON schema and the flow's own signature
come from it, so they are never written twice. Loading the catalog imports only those light
modules (pydantic, jsonschema): ``radps validate``, ``radps pipelines`` and the operator never
load the science stack or Prefect to check a spec. The flow itself is imported only to run it
(:meth:`Pipeline.load_flow`).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import jsonschema

from radps_flows.parameter_rules import ParameterError, brief
from radps_flows.parameters.base import PipelineParameters
from radps_flows.parameters.calibration import CalibrationParameters
from radps_flows.parameters.flagging import FlaggingParameters
from radps_flows.parameters.imaging import ImagingParameters
from radps_flows.parameters.synthesize import SynthesizeParameters

if TYPE_CHECKING:
    from prefect import Flow

PARAMETER_MODELS: tuple[type[PipelineParameters], ...] = (
    SynthesizeParameters,
    ImagingParameters,
    CalibrationParameters,
    FlaggingParameters,
)


@dataclass(frozen=True)
class Pipeline:
    """What the operator, the CLI and a run need of a pipeline, as plain data."""

    name: str
    entrypoint: str
    """`module:function` of its Prefect flow, what a deployment points at."""
    flow_name: str
    description: str
    parameter_schema: dict[str, Any]
    """JSON schema of the parameters; unknown parameters are errors."""
    parameters: type[PipelineParameters]
    """The parameter model: its data parameters and rules besides the schema."""

    @classmethod
    def of(cls, model: type[PipelineParameters]) -> Pipeline:
        return cls(
            name=model.pipeline,
            entrypoint=model.flow,
            flow_name=model.pipeline,
            description=model.description(),
            parameter_schema=model.parameter_schema(),
            parameters=model,
        )

    def load_flow(self) -> Flow:
        """The Prefect flow (imports the pipeline, its science stack and Prefect)."""
        module, _, name = self.entrypoint.partition(":")
        return getattr(importlib.import_module(module), name)


@cache
def pipelines() -> dict[str, Pipeline]:
    return {model.pipeline: Pipeline.of(model) for model in PARAMETER_MODELS}


def get_pipeline(name: str) -> Pipeline | None:
    return pipelines().get(name)


def validate_parameters(pipeline: Pipeline, parameters: dict[str, Any]) -> list[ParameterError]:
    """Every way `parameters` break the pipeline's schema or its rules (its model's
    :meth:`~radps_flows.parameters.base.PipelineParameters.check`), each with its exact path
    and what is expected."""
    schema = pipeline.parameter_schema
    errors = _schema_errors(schema, parameters, pipeline.name)
    defaults = {k: p["default"] for k, p in schema["properties"].items() if "default" in p}
    failed = {e.path for e in errors}
    errors += [e for e in pipeline.parameters.check(parameters, defaults) if e.path not in failed]
    return errors


def _schema_errors(
    schema: dict[str, Any], instance: Any, pipeline: str, prefix: str = ""
) -> list[ParameterError]:
    validator = jsonschema.Draft202012Validator(schema)
    errors = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.path]):
        path = _join(prefix, ".".join(str(p) for p in error.path))
        if error.validator == "additionalProperties":
            allowed = ", ".join(error.schema.get("properties", {}))
            for unknown in _unexpected(error.instance, error.schema):
                errors.append(
                    ParameterError(
                        _join(path, unknown),
                        f"unknown parameter of pipeline {pipeline!r} (known: {allowed})"
                        if not path
                        else f"unknown field (known: {allowed})",
                    )
                )
        elif error.validator == "required":
            what = "parameter" if not path else "field"
            present = error.instance if isinstance(error.instance, dict) else {}
            for missing in [name for name in error.validator_value if name not in present]:
                # jsonschema reports each missing name once, each error naming the whole list
                error_here = ParameterError(_join(path, missing), f"required {what} is missing")
                if error_here not in errors:
                    errors.append(error_here)
        elif error.validator in ("anyOf", "oneOf") and len(_not_null(error.validator_value)) == 1:
            # `X | None`: null is not the mistake, so say what is wrong as an X
            only = {**_not_null(error.validator_value)[0], "definitions": _definitions(schema)}
            errors += _schema_errors(only, error.instance, pipeline, path)
        else:
            errors.append(ParameterError(path, _describe(error, schema)))
    return errors


def _not_null(options: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in options if o.get("type") != "null"]


def _definitions(schema: dict[str, Any]) -> dict[str, Any]:
    return schema.get("definitions", {})


def _unexpected(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    return [k for k in instance if k not in schema.get("properties", {})]


def _join(prefix: str, name: str) -> str:
    if not name:
        return prefix
    return f"{prefix}.{name}" if prefix else name


def expected(schema: dict[str, Any], root: dict[str, Any]) -> str:
    """What `schema` accepts, in words: `"int", "inf" or a number > 0`."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        target = _definitions(root).get(name, {})
        return f"a {name} mapping ({', '.join(target.get('properties', {}))})"
    if "enum" in schema:
        return _or([json.dumps(v) for v in schema["enum"]])
    if "const" in schema:
        return json.dumps(schema["const"])
    if "anyOf" in schema or "oneOf" in schema:
        return _or([expected(s, root) for s in schema.get("anyOf", schema.get("oneOf"))])
    kind = schema.get("type", "any value")
    words = {"integer": "an integer", "number": "a number", "string": "a string"}
    words |= {"boolean": "true or false", "array": "a list", "object": "a mapping", "null": "null"}
    text = words.get(kind, str(kind))
    low = next((f"{op} {schema[k]}" for k, op in _LOWER if k in schema), None)
    high = next((f"{op} {schema[k]}" for k, op in _UPPER if k in schema), None)
    bounds = [b for b in (low, high) if b]
    if low and high and low.startswith(">=") and high.startswith("<="):
        bounds = [f"from {schema['minimum']} to {schema['maximum']}"]
    if kind == "integer" and schema.get("multipleOf") == 2:
        text = "an even integer"
    if kind == "array" and "items" in schema:
        text += f" of {expected(schema['items'], root).removeprefix('a ').removeprefix('an ')}s"
        if schema.get("minItems") == schema.get("maxItems") is not None:
            bounds.append(f"of exactly {schema['minItems']} items")
    return " ".join([text, " and ".join(bounds)]) if bounds else text


_LOWER = (("minimum", ">="), ("exclusiveMinimum", ">"))
_UPPER = (("maximum", "<="), ("exclusiveMaximum", "<"))


def _or(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _describe(error: jsonschema.ValidationError, root: dict[str, Any]) -> str:
    got = brief(error.instance)
    limit = error.validator_value
    match error.validator:
        case "type" | "enum" | "const" | "anyOf" | "oneOf":
            return f"must be {expected(error.schema, root)}, got {got}"
        case "minimum":
            return f"must be >= {limit}, got {got}"
        case "exclusiveMinimum":
            return f"must be > {limit}, got {got}"
        case "maximum":
            return f"must be <= {limit}, got {got}"
        case "exclusiveMaximum":
            return f"must be < {limit}, got {got}"
        case "multipleOf":
            return f"must be a multiple of {limit}, got {got}"
        case "minItems" | "maxItems":
            bound = "at least" if error.validator == "minItems" else "at most"
            return f"must have {bound} {limit} items, got {len(error.instance)}"
        case "minLength" | "maxLength":
            bound = "at least" if error.validator == "minLength" else "at most"
            return f"must have {bound} {limit} characters, got {len(error.instance)}"
    return f"{error.message[:200]}"
