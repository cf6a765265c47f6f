"""Rules on pipeline parameters that a JSON schema cannot say: where data may be read and
written, and the checks that pipelines' own rules share (one parameter against another).

Each pipeline's parameter model (:mod:`radps_flows.parameters`) names its data parameters and
its rules; :meth:`radps_flows.parameters.base.PipelineParameters.check` applies them, and
`radps validate`, the operator (before anything reaches Prefect) and each flow (at run time,
for a flow started some other way) call it. Standard library only.

Paths are checked lexically here (the operator cannot see the pods' filesystem); `radps run`
passes paths it has already resolved (symlinks included), see
:func:`radps_operator.local.paths`.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParameterError:
    path: str
    """Dotted path below `spec.parameters`, empty for the object itself."""
    message: str


@dataclass(frozen=True)
class DataParameters:
    """Which parameters of a pipeline name data: read (never written or removed by a run)
    and written (a run's products)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


SYSTEM_TREES = ("/proc", "/sys", "/dev", "/etc", "/boot", "/bin", "/sbin", "/lib", "/usr")
"""Never data: reading them leaks the host's or pod's secrets, writing them breaks it."""

GRIDDER_MIN_PIXELS = 16
"""ducc0's wgridder needs an even image of at least 16 pixels a side."""


def path_errors(data: DataParameters, values: Mapping[str, Any]) -> list[ParameterError]:
    """Data parameters that name no place a run may read (or write), or outputs that
    overlap inputs."""
    errors = []
    paths: dict[str, str] = {}
    for name in data.inputs + data.outputs:
        value = values.get(name)
        if not isinstance(value, str):
            continue
        problem = path_problem(value, written=name in data.outputs)
        if problem:
            errors.append(ParameterError(name, problem))
        else:
            paths[name] = value.rstrip("/") if "://" in value else posixpath.normpath(value)
    return errors + check_resolved_overlap(data, paths)


def check_resolved_overlap(data: DataParameters, paths: Mapping[str, str]) -> list[ParameterError]:
    """An output that is, contains or lies inside an input; `paths` already normalized (or
    resolved on the machine that runs it)."""
    errors = []
    for out in data.outputs:
        for inp in data.inputs:
            if out in paths and inp in paths:
                overlap = _overlap(paths[out], paths[inp])
                if overlap:
                    errors.append(
                        ParameterError(
                            out,
                            f"{overlap} {inp} ({paths[inp]}): a run never writes where it "
                            "reads, so that its input cannot be replaced or removed",
                        )
                    )
    return errors


def path_problem(path: str, written: bool) -> str | None:
    """Why `path` (a path or an s3:// URL) may not be read (or written), or None."""
    if not path.strip():
        return "must not be empty"
    if "\x00" in path:
        return "must not contain a NUL character"
    if "://" in path:
        from radps_flows.locations import url_problem

        return url_problem(path)
    if ".." in path.split("/"):
        return f"must not contain '..' ({path!r}): give the path it means"
    normal = posixpath.normpath(path)
    if written and normal in ("/", "."):
        return f"{path!r} is a whole filesystem or the working folder: name a folder of its own"
    for tree in SYSTEM_TREES:
        if normal == tree or normal.startswith(tree + "/"):
            return f"{path!r} is in the system tree {tree}, never data"
    return None


def _overlap(output: str, input: str) -> str | None:
    if output == input:
        return "is the same path as"
    if _inside(input, output):
        return "contains"
    if _inside(output, input):
        return "lies inside"
    return None


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def box_errors(name: str, box: Any, imsize: int) -> list[ParameterError]:
    if not (isinstance(box, list) and len(box) == 4 and all(type(v) is int for v in box)):
        return []
    x0, y0, x1, y1 = box
    if not (0 <= x0 <= x1 < imsize and 0 <= y0 <= y1 < imsize):
        return [
            ParameterError(
                name,
                f"box {box} must satisfy 0 <= x0 <= x1 < imsize and 0 <= y0 <= y1 < imsize "
                f"(imsize {imsize})",
            )
        ]
    return []


def model_errors(values: Mapping[str, Any]) -> list[ParameterError]:
    if values.get("model") and values.get("model_image"):
        return [ParameterError("model_image", "give the model as model or model_image, not both")]
    return []


def brief(value: Any) -> str:
    """A value as JSON, cut short: an error message never echoes a huge input."""
    if isinstance(value, list) and len(value) > 8:
        return f"a list of {len(value)} items"
    if isinstance(value, dict) and len(value) > 8:
        return f"a mapping of {len(value)} keys"
    if isinstance(value, str) and len(value) > 60:
        return json.dumps(value[:60]) + f"... ({len(value)} characters)"
    try:
        text = json.dumps(value, default=str)
    except (ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."
