"""Checking a PipelineRun before anything runs: the same checks for `radps validate`,
`radps run` and the operator, each problem reported with the exact field and why."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from radps_operator import api, image_policy

if TYPE_CHECKING:
    from radps_flows.catalog import PipelineInfo


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
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidPipelineRun([FieldError(where, f"YAML syntax error: {problem}")]) from None
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
    document: dict[str, Any], allowed_images: tuple[str, ...] | None = None
) -> api.PipelineRun:
    """The parsed PipelineRun, or InvalidPipelineRun listing every problem found.
    ``allowed_images`` defaults to :func:`image_policy.from_env`."""
    errors = _check_type_meta(document)
    if errors:  # another kind of object: its fields would only produce noise
        raise InvalidPipelineRun(errors)
    try:
        run = api.PipelineRun.model_validate(document)
    except ValidationError as exc:
        raise InvalidPipelineRun(pydantic_errors(exc)) from None
    errors = check_image(run.spec, allowed_images) + check_spec_against_catalog(run.spec)
    if errors:
        raise InvalidPipelineRun(errors)
    return run


def validate_spec(
    spec: dict[str, Any],
    catalog: Mapping[str, PipelineInfo] | None = None,
    allowed_images: tuple[str, ...] | None = None,
) -> api.PipelineRunSpec:
    """The operator's entry: the spec of an object the API server already admitted."""
    try:
        parsed = api.PipelineRunSpec.model_validate(spec)
    except ValidationError as exc:
        raise InvalidPipelineRun(pydantic_errors(exc, prefix="spec")) from None
    errors = check_image(parsed, allowed_images) + check_spec_against_catalog(parsed, catalog)
    if errors:
        raise InvalidPipelineRun(errors)
    return parsed


def check_image(
    spec: api.PipelineRunSpec, allowed: tuple[str, ...] | None = None
) -> list[FieldError]:
    """`spec.image` against the allowed images (see :mod:`radps_operator.image_policy`)."""
    allowed = image_policy.from_env() if allowed is None else allowed
    if spec.image is None or image_policy.allows(allowed, spec.image):
        return []
    return [FieldError("spec.image", image_policy.rejection(allowed, spec.image))]


def _check_type_meta(document: dict[str, Any]) -> list[FieldError]:
    errors = []
    if document.get("apiVersion") != api.API_VERSION:
        errors.append(
            FieldError(
                "apiVersion",
                f"must be {api.API_VERSION!r}, got {document.get('apiVersion')!r}",
            )
        )
    if document.get("kind") != api.KIND:
        errors.append(FieldError("kind", f"must be {api.KIND!r}, got {document.get('kind')!r}"))
    return errors


def check_spec_against_catalog(
    spec: api.PipelineRunSpec, catalog: Mapping[str, PipelineInfo] | None = None
) -> list[FieldError]:
    """`catalog` defaults to this process's own (which imports every pipeline)."""
    from radps_flows.catalog import catalog_info, validate_parameters

    catalog = catalog_info() if catalog is None else catalog
    pipeline = catalog.get(spec.pipeline)
    if pipeline is None:
        known = ", ".join(sorted(catalog))
        return [FieldError("spec.pipeline", f"unknown pipeline {spec.pipeline!r} (known: {known})")]
    size = len(json.dumps(spec.parameters, separators=(",", ":")).encode())
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
        for e in validate_parameters(pipeline, spec.parameters)
    ]


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
            f"alphanumeric, at most 63 characters (got {json.dumps(value)})"
        )
    shown = json.dumps(value, default=str)[:80] if value is not None else "null"
    message = error["msg"].removeprefix("Value error, ")
    return f"{message} (got {shown})"


def _join(prefix: str, name: str) -> str:
    if not name:
        return prefix
    return f"{prefix}.{name}" if prefix else name
