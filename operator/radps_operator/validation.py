"""Checking a PipelineRun before anything runs: the same checks for `radps validate`,
`radps run` and the operator, each problem reported with the exact field and why."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from radps_flows.parameter_rules import brief
from radps_operator import (
    api,
    image_policy,
    manifest_yaml,
    plain_json,
    quantity,
    schedule_api,
)

log = logging.getLogger(__name__)
ModelT = TypeVar("ModelT", bound=BaseModel)

if TYPE_CHECKING:
    from radps_flows.catalog import Pipeline


@dataclass(frozen=True)
class FieldError:
    field: str
    """Where, as a dotted path from the document root (`spec.dask.workers`), or the file."""
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidPipelineRun(ValueError):
    """The manifest cannot run; `errors` says every reason found."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read exactly one YAML document from `path`; syntax errors carry their line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidPipelineRun([FieldError(str(path), "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidPipelineRun([FieldError(str(path), f"cannot read: {exc}")]) from None
    return parse_manifest(text, source=str(path))


def parse_manifest(text: str, source: str = "<input>") -> dict[str, Any]:
    """One PipelineRun document of plain JSON values (see :mod:`radps_operator.manifest_yaml`)."""
    try:
        documents = manifest_yaml.load_documents(text)
    except manifest_yaml.ManifestYAMLError as exc:
        where = source if exc.line is None else f"{source}:{exc.line}:{exc.column}"
        raise InvalidPipelineRun([FieldError(where, exc.message)]) from None
    if not documents:
        raise InvalidPipelineRun([FieldError(source, "empty: expected one PipelineRun")])
    if len(documents) > 1:
        raise InvalidPipelineRun(
            [
                FieldError(
                    source,
                    f"holds {len(documents)} YAML documents; expected exactly one PipelineRun "
                    "(split the file, or validate each document separately)",
                )
            ]
        )
    document = documents[0]
    if not isinstance(document, dict):
        raise InvalidPipelineRun(
            [FieldError(source, f"expected a mapping, got {type(document).__name__}")]
        )
    return document


def validate_manifest(
    document: dict[str, Any],
    allowed_images: tuple[str, ...] | None = None,
    catalog: Mapping[str, Pipeline] | None = None,
) -> api.PipelineRun:
    """The parsed PipelineRun, or InvalidPipelineRun listing every problem found, the spec's
    and the parameters' together. ``allowed_images`` defaults to
    :func:`image_policy.from_env`, ``catalog`` to this process's own."""
    return _validated(
        document,
        api.KIND,
        api.PipelineRun,
        lambda spec: check_spec_rules(spec, catalog, allowed_images),
    )


def _validated(
    document: dict[str, Any],
    kind: str,
    model: type[ModelT],
    rules: Callable[[dict[str, Any]], list[FieldError]],
) -> ModelT:
    """``document`` as ``model``, with what ``rules`` find in its raw spec; every problem at
    once."""
    errors = _check_type_meta(document, kind)
    if errors:  # another kind of object: its fields would only produce noise
        raise InvalidPipelineRun(errors)
    document, errors = _checked_copy(document, "")
    parsed = None
    try:
        parsed = model.model_validate(document)
    except ValidationError as exc:
        errors += pydantic_errors(exc)
    spec = document.get("spec")
    if isinstance(spec, dict):
        errors += rules(spec)
    if errors or parsed is None:
        raise InvalidPipelineRun(_first_per_field(errors))
    return parsed


def _validated_spec(
    spec: dict[str, Any],
    model: type[ModelT],
    rules: Callable[[dict[str, Any]], list[FieldError]],
) -> ModelT:
    """A spec the API server already admitted, as ``model``: never raises anything but
    InvalidPipelineRun, whatever ``spec`` holds."""
    parsed = None
    try:
        spec, errors = _checked_copy(spec, "spec")
        try:
            parsed = model.model_validate(spec)
        except ValidationError as exc:
            errors += pydantic_errors(exc, prefix="spec")
        errors += rules(spec)
    except InvalidPipelineRun:
        raise
    except Exception as exc:  # a validator bug must not stop the operator serving others
        log.exception("checking a spec failed")
        raise InvalidPipelineRun(
            [FieldError("spec", f"could not be checked ({type(exc).__name__}: {exc})")]
        ) from None
    if errors or parsed is None:
        raise InvalidPipelineRun(_first_per_field(errors))
    return parsed


def validate_spec(
    spec: dict[str, Any],
    catalog: Mapping[str, Pipeline] | None = None,
    allowed_images: tuple[str, ...] | None = None,
) -> api.PipelineRunSpec:
    """The operator's entry: the spec of an object the API server already admitted."""
    return _validated_spec(
        spec, api.PipelineRunSpec, lambda raw: check_spec_rules(raw, catalog, allowed_images)
    )


def validate_schedule_manifest(
    document: dict[str, Any],
    allowed_images: tuple[str, ...] | None = None,
    catalog: Mapping[str, Pipeline] | None = None,
) -> schedule_api.PipelineSchedule:
    """A PipelineSchedule, its template checked exactly as a PipelineRun's spec is; or
    InvalidPipelineRun listing every problem."""
    return _validated(
        document,
        schedule_api.KIND,
        schedule_api.PipelineSchedule,
        lambda spec: _template_rules(spec, catalog, allowed_images),
    )


def validate_schedule_spec(
    spec: dict[str, Any],
    catalog: Mapping[str, Pipeline] | None = None,
    allowed_images: tuple[str, ...] | None = None,
) -> schedule_api.PipelineScheduleSpec:
    """The operator's entry for a schedule, as :func:`validate_spec` is for a run."""
    return _validated_spec(
        spec,
        schedule_api.PipelineScheduleSpec,
        lambda raw: _template_rules(raw, catalog, allowed_images),
    )


def _template_rules(
    spec: dict[str, Any],
    catalog: Mapping[str, Pipeline] | None,
    allowed_images: tuple[str, ...] | None,
) -> list[FieldError]:
    """:func:`check_spec_rules` of the template's run spec, with the fields named from the
    schedule's root (`spec.template.spec.parameters.niter`)."""
    template = spec.get("template")
    run_spec = template.get("spec") if isinstance(template, dict) else None
    if not isinstance(run_spec, dict):
        return []
    return [
        FieldError(f"spec.template.{e.field}", e.message)
        for e in check_spec_rules(run_spec, catalog, allowed_images)
    ]


def check_spec_rules(
    spec: dict[str, Any],
    catalog: Mapping[str, Pipeline] | None = None,
    allowed_images: tuple[str, ...] | None = None,
) -> list[FieldError]:
    """What the spec's schema cannot say: the allowed images, requests within limits, the
    pipeline's parameters. Works on the raw spec, so a mistake elsewhere in it never hides
    these."""
    errors = []
    image = spec.get("image")
    if isinstance(image, str):
        errors += check_image(image, allowed_images)
    for field in ("resources", "dask.workerResources"):
        section: Any = spec
        for part in field.split("."):
            section = section.get(part) if isinstance(section, dict) else None
        errors += check_requests_within_limits(section, f"spec.{field}")
    pipeline = spec.get("pipeline")
    parameters = spec.get("parameters", {})
    if isinstance(pipeline, str) and isinstance(parameters, dict):
        errors += check_parameters(pipeline, parameters, catalog)
        errors += check_spec_parameters(spec, pipeline, parameters, catalog)
    return errors


SPEC_PARAMETER_ABSENT = {
    "cache": "has no cached stages",
    "fromStage": "has no cached stages",
    "pauseTimeoutSeconds": "never pauses for input",
    "pauseTimeoutAction": "never pauses for input",
    "resume": "never pauses for input",
}
"""Why a spec field means nothing for a pipeline that lacks its parameter."""


def check_spec_parameters(
    spec: dict[str, Any],
    pipeline_name: str,
    parameters: dict[str, Any],
    catalog: Mapping[str, Pipeline] | None = None,
) -> list[FieldError]:
    """The spec fields that are also pipeline parameters (spec.cache, spec.fromStage,
    spec.pauseTimeout*; api.SPEC_PARAMETERS) and spec.resume: only for a pipeline that takes
    them, and not contradicted by the same setting among its parameters."""
    from radps_flows.catalog import pipelines

    pipeline = (pipelines() if catalog is None else catalog).get(pipeline_name)
    if pipeline is None:
        return []  # check_parameters says so
    errors = []
    takes = pipeline.parameter_schema.get("properties", {})
    fields = {to_camel(f): p for f, p in api.SPEC_PARAMETERS.items()}
    for field, absent in SPEC_PARAMETER_ABSENT.items():
        if spec.get(field) is None:
            continue
        parameter = fields.get(field)
        lacking = pipeline.parameters.pause_input is None if field == "resume" else None
        if lacking or (parameter is not None and parameter not in takes):
            errors.append(FieldError(f"spec.{field}", f"the {pipeline_name} pipeline {absent}"))
            continue
        if parameter is None or parameters.get(parameter) is None:
            continue
        ours, theirs = spec[field], parameters[parameter]
        if field == "pauseTimeoutAction" and isinstance(ours, str):
            ours = ours.lower()
        if ours != theirs:
            errors.append(
                FieldError(
                    f"spec.{field}",
                    f"{brief(spec[field])} contradicts spec.parameters.{parameter} "
                    f"{brief(theirs)}: set one of them",
                )
            )
    return errors


def check_image(image: str, allowed: tuple[str, ...] | None = None) -> list[FieldError]:
    """`spec.image` against the allowed images (see :mod:`radps_operator.image_policy`)."""
    allowed = image_policy.from_env() if allowed is None else allowed
    if image_policy.allows(allowed, image):
        return []
    return [FieldError("spec.image", image_policy.rejection(allowed, image))]


def check_requests_within_limits(resources: Any, prefix: str) -> list[FieldError]:
    """A request above its limit is refused by the API server only when the pod is created,
    minutes into a run; here it is refused before anything starts."""
    if not isinstance(resources, dict):
        return []
    requests, limits = resources.get("requests"), resources.get("limits")
    if not isinstance(requests, dict) or not isinstance(limits, dict):
        return []
    errors = []
    for name in sorted(set(requests) & set(limits)):
        request, limit = quantity.parse(requests[name]), quantity.parse(limits[name])
        if request is not None and limit is not None and request > limit:
            errors.append(
                FieldError(
                    f"{prefix}.requests.{name}",
                    f"request {requests[name]} is above the limit {limits[name]} "
                    f"({prefix}.limits.{name})",
                )
            )
    return errors


def _check_type_meta(document: dict[str, Any], kind: str = api.KIND) -> list[FieldError]:
    errors = []
    if document.get("apiVersion") != api.API_VERSION:
        errors.append(
            FieldError(
                "apiVersion",
                f"must be {api.API_VERSION!r}, got {brief(document.get('apiVersion'))}",
            )
        )
    if document.get("kind") == schedule_api.KIND and kind == api.KIND:
        errors.append(
            FieldError(
                "kind",
                "a PipelineSchedule makes its runs on a cluster (kubectl apply it there; "
                "`radps validate` checks it); here, run its template as a PipelineRun",
            )
        )
    elif document.get("kind") != kind:
        errors.append(FieldError("kind", f"must be {kind!r}, got {brief(document.get('kind'))}"))
    return errors


def _checked_copy(value: Any, prefix: str) -> tuple[Any, list[FieldError]]:
    """`value` with what no validator may see (they recurse, or crash printing a huge
    integer) replaced by None, and why; past depth or size limits nothing else is checked."""
    try:
        copy, problems = plain_json.checked_copy(value, prefix)
    except plain_json.Unbounded as exc:
        field, _, message = str(exc).partition(": ")
        raise InvalidPipelineRun([FieldError(field, message)]) from None
    return copy, [FieldError(field, message) for field, message in problems]


def check_parameters(
    pipeline_name: str,
    parameters: dict[str, Any],
    catalog: Mapping[str, Pipeline] | None = None,
) -> list[FieldError]:
    """`spec.pipeline` and `spec.parameters` against the catalog (default: the whole
    catalog, :func:`radps_flows.catalog.pipelines`)."""
    from radps_flows.catalog import pipelines, validate_parameters

    catalog = pipelines() if catalog is None else catalog
    pipeline = catalog.get(pipeline_name)
    if pipeline is None:
        known = ", ".join(sorted(catalog))
        return [
            FieldError("spec.pipeline", f"unknown pipeline {brief(pipeline_name)} (known: {known})")
        ]
    size = len(json.dumps(parameters, separators=(",", ":"), default=repr).encode())
    if size > api.MAX_PARAMETERS_BYTES:
        return [
            FieldError(
                "spec.parameters",
                f"{size / 1024:.0f} KiB serialized, over the "
                f"{api.MAX_PARAMETERS_BYTES // 1024} KiB limit: pass large inputs as files",
            )
        ]
    return [
        FieldError(_join("spec.parameters", e.path), e.message)
        for e in validate_parameters(pipeline, parameters)
    ]


MAX_ERRORS = 30


def _first_per_field(errors: list[FieldError]) -> list[FieldError]:
    """One message per field, none for what lies inside a field already reported (a list
    too long says so once, not once per item), at most MAX_ERRORS in all."""
    reported: list[str] = []
    out = []
    for error in errors:
        if any(error.field == f or error.field.startswith(f + ".") for f in reported):
            continue
        reported.append(error.field)
        out.append(error)
    if len(out) > MAX_ERRORS:
        more = len(out) - MAX_ERRORS
        out = [*out[:MAX_ERRORS], FieldError("(manifest)", f"{more} more errors not shown")]
    return out


def pydantic_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """Pydantic's errors as wire-named field paths with a plain-words reason."""
    errors = []
    for error in exc.errors(include_url=False):
        path = prefix
        for part in error["loc"]:
            path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
        errors.append(FieldError(path or "(document)", _reason(error)))
    return errors


def _reason(error: dict[str, Any]) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch" and error["ctx"]["pattern"] == api.DNS_LABEL_PATTERN:
        return (
            "must be a lowercase DNS label: a-z, 0-9 and '-', starting and ending "
            f"alphanumeric, at most 63 characters (got {brief(value)})"
        )
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(value, bool) and "'Off'" in message:
        return f'{message} (got {brief(value)}: YAML reads an unquoted Off as false; write "Off")'
    return f"{message} (got {brief(value)})"


def _join(prefix: str, name: str) -> str:
    if not name:
        return prefix
    return f"{prefix}.{name}" if prefix else name


def check_local_paths(
    spec: api.PipelineRunSpec, produced: Collection[str] = ()
) -> list[FieldError]:
    """For `radps run` and `radps validate --check-data`, where the data are reachable from
    this machine: inputs exist (or are the outputs of runs earlier in the same command,
    `produced`, resolved), and the overlap rules hold for the paths as resolved (symlinks
    followed), which a lexical check misses. An ``s3://`` input is looked up on its store
    (AWS's environment says which, and with what credential), and an output's bucket too: a
    missing bucket or object, a refused credential or an unreachable store is an error naming
    the field and the URL."""
    from radps_flows import locations
    from radps_flows.catalog import get_pipeline
    from radps_flows.parameter_rules import check_resolved_overlap

    pipeline = get_pipeline(spec.pipeline)
    if pipeline is None:
        return []
    data = pipeline.parameters.data
    errors = []
    resolved = {}
    for name in data.inputs + data.outputs:
        value = spec.parameters.get(name)
        if not isinstance(value, str):
            continue
        remote = locations.is_url(value)
        path = resolved[name] = locations.absolute(value) if remote else os.path.realpath(value)
        made_before = any(path == p or path.startswith(p.rstrip("/") + "/") for p in produced)
        if name in data.outputs and remote:
            try:
                locations.check_bucket(path)
            except OSError as exc:
                errors.append(FieldError(f"spec.parameters.{name}", str(exc)))
        if name not in data.inputs or made_before:
            continue
        if remote:
            try:
                locations.check_readable(path)
            except OSError as exc:
                errors.append(FieldError(f"spec.parameters.{name}", str(exc)))
        elif not os.path.exists(path):
            errors.append(FieldError(f"spec.parameters.{name}", f"no such file or folder: {value}"))
    errors += [
        FieldError(f"spec.parameters.{e.path}", e.message)
        for e in check_resolved_overlap(data, resolved)
    ]
    return errors


def local_outputs(spec: api.PipelineRunSpec) -> list[str]:
    """Where a run's products will be, resolved: inputs of the runs after it may name them."""
    from radps_flows.catalog import get_pipeline

    pipeline = get_pipeline(spec.pipeline)
    outputs = [
        spec.parameters.get(name) for name in (pipeline.parameters.data.outputs if pipeline else ())
    ]
    paths = [
        p.rstrip("/") if "://" in p else os.path.realpath(p) for p in outputs if isinstance(p, str)
    ]
    return paths + [p + ".ps.zarr" for p in paths if spec.pipeline == "synthesize"]
