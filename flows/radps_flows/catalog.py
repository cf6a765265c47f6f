"""The pipeline catalog: every pipeline a PipelineRun may name, with its parameter schema.

Descriptions and schemas come from the flows themselves (docstring and signature, through
Prefect's own `parameter_schema`), so they are never written twice and the schema the operator
enforces is the one the Prefect deployment carries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema
from prefect import Flow
from prefect.utilities.callables import parameter_schema


@dataclass(frozen=True)
class Pipeline:
    name: str
    flow: Flow
    entrypoint: str
    """`module:function`, what a Prefect deployment points at."""

    @property
    def description(self) -> str:
        doc = (self.flow.fn.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @property
    def parameter_schema(self) -> dict[str, Any]:
        """JSON schema of the parameters; unknown parameters are errors."""
        schema = parameter_schema(self.flow.fn).model_dump_for_openapi()
        schema["additionalProperties"] = False
        return schema


@dataclass(frozen=True)
class PipelineInfo:
    """What the operator needs of a pipeline, as plain data: it learns these from a child
    process (`python -m radps_flows.catalog`), so the operator never imports the science
    stack (about 200 MiB of its memory otherwise)."""

    name: str
    entrypoint: str
    flow_name: str
    description: str
    parameter_schema: dict[str, Any]

    @classmethod
    def of(cls, pipeline: Pipeline) -> PipelineInfo:
        return cls(
            name=pipeline.name,
            entrypoint=pipeline.entrypoint,
            flow_name=pipeline.flow.name,
            description=pipeline.description,
            parameter_schema=pipeline.parameter_schema,
        )


@cache
def catalog_info() -> dict[str, PipelineInfo]:
    return {name: PipelineInfo.of(p) for name, p in pipelines().items()}


def catalog_info_from_child_process(timeout: float = 300) -> dict[str, PipelineInfo]:
    """`catalog_info()` computed in a child process, which frees that memory when it exits."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "radps_flows.catalog"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"listing the pipeline catalog failed: {out.stderr[-2000:]}")
    return {row["name"]: PipelineInfo(**row) for row in json.loads(out.stdout)}


@dataclass(frozen=True)
class ParameterError:
    path: str
    """Dotted path below `spec.parameters`, empty for the object itself."""
    message: str


@cache
def pipelines() -> dict[str, Pipeline]:
    from radps_flows.pipelines.calibration import calibration
    from radps_flows.pipelines.flagging import flagging
    from radps_flows.pipelines.imaging import imaging
    from radps_flows.pipelines.synthesize import synthesize

    flows = {
        "synthesize": synthesize,
        "imaging": imaging,
        "calibration": calibration,
        "flagging": flagging,
    }
    return {
        name: Pipeline(name=name, flow=flow, entrypoint=f"{flow.fn.__module__}:{flow.fn.__name__}")
        for name, flow in flows.items()
    }


def get_pipeline(name: str) -> Pipeline | None:
    return pipelines().get(name)


def validate_parameters(
    pipeline: Pipeline | PipelineInfo, parameters: dict[str, Any]
) -> list[ParameterError]:
    """Every way `parameters` break the pipeline's schema, each with its exact path."""
    validator = jsonschema.Draft202012Validator(pipeline.parameter_schema)
    errors = []
    for error in sorted(validator.iter_errors(parameters), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in error.path)
        if error.validator == "additionalProperties":
            allowed = ", ".join(pipeline.parameter_schema["properties"])
            for unknown in _unexpected(error.instance, pipeline.parameter_schema):
                errors.append(
                    ParameterError(
                        _join(path, unknown),
                        f"unknown parameter of pipeline {pipeline.name!r} (known: {allowed})",
                    )
                )
            continue
        if error.validator == "required":
            missing = error.message.split("'")[1]
            errors.append(ParameterError(_join(path, missing), "required parameter is missing"))
            continue
        errors.append(ParameterError(path, _describe(error)))
    return errors


def _unexpected(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    return [k for k in instance if k not in schema.get("properties", {})]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _describe(error: jsonschema.ValidationError) -> str:
    got = json.dumps(error.instance)[:80]
    match error.validator:
        case "type":
            return f"must be of type {error.validator_value}, got {got}"
        case "minimum" | "exclusiveMinimum" | "maximum" | "exclusiveMaximum":
            return f"{error.message}"
        case "enum" | "const":
            return f"must be one of {error.validator_value}, got {got}"
    return error.message


if __name__ == "__main__":
    from dataclasses import asdict

    print(json.dumps([asdict(info) for info in catalog_info().values()]))
