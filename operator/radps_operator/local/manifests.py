"""The PipelineRuns a `radps run` or `radps validate` is given, as kubectl reads manifests.

A file may hold several YAML documents (``---``), ``-`` is standard input, a document with
``metadata.generateName`` and no name gets one (the prefix and five random characters, as the
API server makes them), and ``-p key=value`` sets a parameter of every run (the value read as
YAML: ``-p niter=2000`` is a number, ``-p image_formats=[fits,casa]`` a list). Each document
is known by its source: the file, with ``#n`` where the file holds several.
"""

from __future__ import annotations

import copy
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from radps_operator import manifest_yaml
from radps_operator.validation import FieldError, InvalidPipelineRun

STDIN = "-"
_NAME_CHARACTERS = "bcdfghjklmnpqrstvwxz2456789"  # the API server's: no vowels, no 0/1/3


@dataclass(frozen=True)
class Manifest:
    """One PipelineRun document and where it came from."""

    source: str
    document: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "document": self.document}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Manifest:
        return cls(source=str(value["source"]), document=dict(value["document"]))


def read_manifests(
    paths: Sequence[str | Path], overrides: Sequence[str] = (), stdin: TextIO | None = None
) -> list[Manifest]:
    """Every document of ``paths``, in order, named and with ``overrides`` applied; or
    InvalidPipelineRun with every problem of every file at once (each names its source)."""
    parameters, errors = parse_overrides(overrides)
    out: list[Manifest] = []
    for path in paths:
        source = "<stdin>" if str(path) == STDIN else str(path)
        try:
            text = (stdin or sys.stdin).read() if str(path) == STDIN else _read(Path(path))
            documents = manifest_yaml.load_documents(text)
        except InvalidPipelineRun as invalid:
            errors += invalid.errors
            continue
        except manifest_yaml.ManifestYAMLError as exc:
            where = source if exc.line is None else f"{source}:{exc.line}:{exc.column}"
            errors.append(FieldError(where, exc.message))
            continue
        if not documents:
            errors.append(FieldError(source, "empty: expected a PipelineRun"))
        for i, document in enumerate(documents, start=1):
            name = f"{source}#{i}" if len(documents) > 1 else source
            if not isinstance(document, dict):
                errors.append(
                    FieldError(name, f"expected a mapping, got {type(document).__name__}")
                )
                continue
            out.append(Manifest(name, with_parameters(named(document), parameters)))
    if errors:
        raise InvalidPipelineRun(errors)
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise InvalidPipelineRun([FieldError(str(path), "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidPipelineRun([FieldError(str(path), f"cannot read: {exc}")]) from None


def parse_overrides(items: Sequence[str]) -> tuple[dict[str, Any], list[FieldError]]:
    """``key=value`` items as parameters (values read as YAML), and the malformed ones."""
    parameters: dict[str, Any] = {}
    errors: list[FieldError] = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            errors.append(FieldError(f"-p {item}", "expected key=value, e.g. -p niter=2000"))
            continue
        try:
            values = manifest_yaml.load_documents(text) if text.strip() else [""]
        except manifest_yaml.ManifestYAMLError as exc:
            errors.append(FieldError(f"-p {item}", f"the value is not YAML: {exc.message}"))
            continue
        parameters[key.strip()] = values[0] if values else None
    return parameters, errors


def with_parameters(document: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """``document`` with ``parameters`` set in its ``spec.parameters`` (a copy); in a
    PipelineSchedule's, in its template's."""
    if not parameters:
        return document
    document = copy.deepcopy(document)
    spec = document.setdefault("spec", {})
    if document.get("kind") == "PipelineSchedule" and isinstance(spec, dict):
        template = spec.setdefault("template", {})
        spec = template.setdefault("spec", {}) if isinstance(template, dict) else None
    if isinstance(spec, dict):
        current = spec.get("parameters")
        spec["parameters"] = {**(current if isinstance(current, dict) else {}), **parameters}
    return document


def as_rerun(document: dict[str, Any], of: str, from_stage: str | None) -> dict[str, Any]:
    """``document`` (a copy of run ``of``'s PipelineRun) as its rerun: spec.rerunOf names
    ``of``, spec.fromStage is ``from_stage`` (the earlier run's own is dropped: a rerun
    without ``--from`` takes from the stage cache whatever it holds)."""
    document = copy.deepcopy(document)
    spec = document.setdefault("spec", {})
    spec.pop("fromStage", None)
    spec["rerunOf"] = of
    if from_stage is not None:
        spec["fromStage"] = from_stage
    return document


def named(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with a name made from ``metadata.generateName`` where it has none."""
    metadata = document.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("name"):
        return document
    prefix = metadata.get("generateName")
    if not isinstance(prefix, str) or not prefix:
        return document
    document = copy.deepcopy(document)
    suffix = "".join(secrets.choice(_NAME_CHARACTERS) for _ in range(5))
    document["metadata"]["name"] = f"{prefix}{suffix}"
    del document["metadata"]["generateName"]
    return document
