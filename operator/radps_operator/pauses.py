"""A run paused for input, on the operator's side: what `.status.input` shows, and checking an
answer (spec.resume, `radps resume`) before it reaches Prefect.

The flow writes what it asks as a flow run input (:class:`radps_flows.contract.PauseRequest`)
and the pause's number as a label (:mod:`radps_flows.pipelines.interactive`); the answer's
model is the pipeline's ``pause_input`` (:mod:`radps_flows.parameters`), which checks it here,
in `radps resume`, in the flow, and (as its JSON schema) in Prefect's server and UI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from radps_flows import contract
from radps_operator import api
from radps_operator.validation import FieldError, pydantic_errors

PAUSED_CONDITION = "Paused"


def pause_model(pipeline: str) -> type[BaseModel] | None:
    """What ``pipeline`` asks at a pause, None for one that never pauses."""
    from radps_flows.catalog import get_pipeline

    found = get_pipeline(pipeline)
    return found.parameters.pause_input if found else None


def pause_of(snapshot_labels: Mapping[str, Any]) -> int | None:
    """The number of the flow run's latest pause, from its labels."""
    try:
        return int(str(snapshot_labels.get(contract.PAUSE_LABEL)))
    except (TypeError, ValueError):
        return None


def check_answer(
    pipeline: str,
    parameters: Mapping[str, Any],
    answer: Any,
    waiting: int | None,
    field: str = "spec.resume",
) -> tuple[dict[str, Any] | None, list[FieldError]]:
    """The answer as it goes to Prefect (the fields given), or every reason it is refused:
    ``waiting`` is the pause the run waits at (None: not paused)."""
    model = pause_model(pipeline)
    if model is None:
        return None, [FieldError(field, f"the {pipeline} pipeline never pauses for input")]
    if not isinstance(answer, dict):
        return None, [FieldError(field, "must be an object, e.g. {niter: 500}")]
    try:
        parsed = model.model_validate(answer)
    except ValidationError as exc:
        return None, pydantic_errors(exc, field)
    values = parsed.model_dump(exclude_unset=True)
    errors = [
        FieldError(f"{field}.{e.path}", e.message)
        for e in model.errors(values, parameters)  # type: ignore[attr-defined]
    ]
    if waiting is None:
        errors.append(FieldError(field, "the run is not paused for input"))
    elif values.get("pause") not in (None, waiting):
        errors.append(
            FieldError(
                f"{field}.pause",
                f"answers pause {values['pause']}; the run waits at pause {waiting}",
            )
        )
    return (None, errors) if errors else (values, [])


def input_status(
    previous: api.InputRequest | None,
    *,
    pipeline: str,
    name: str,
    pause: int | None,
    request: contract.PauseRequest | None,
    since: datetime | None,
    flow_run_url: str | None,
) -> api.InputRequest | None:
    """`.status.input` of a paused run: built from the flow's request when one was read for
    this pause, else what it showed before for the same pause."""
    if request is None or request.pause != pause:
        return previous if previous is not None and previous.pause == pause else None
    model = pause_model(pipeline)
    schema = model.model_json_schema() if model else {}
    example = {"pause": pause, **_example(request.defaults)}
    patch = json.dumps({"spec": {"resume": example}}, separators=(",", ":"))
    cli = " ".join(f"-p {k}={json.dumps(v)}" for k, v in example.items() if k != "pause")
    return api.InputRequest(
        pause=pause,
        prompt=request.prompt,
        since=since,
        expires=since + timedelta(seconds=request.timeout_seconds) if since else None,
        timeout_action=request.timeout_action.title(),
        schema=schema,
        defaults=request.defaults,
        previews=list(request.previews),
        artifacts=f"{flow_run_url}?tab=Artifacts" if flow_run_url else None,
        answer_with=[
            f"kubectl patch prun {name} --type merge -p '{patch}'",
            f"radps resume {name} {cli}",
        ],
        refused=request.refused,
    )


def _example(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """An answer to show: the iterations as they stand (the field most often changed)."""
    return {k: defaults[k] for k in ("niter",) if k in defaults} or {"action": "continue"}


def paused_condition(
    status: api.PipelineRunStatus, paused: bool, request: api.InputRequest | None
) -> tuple[str, str, str | None] | None:
    """The Paused condition's (status, reason, message): True while the run waits (its
    lastTransitionTime says since when), False once it went on; None before any pause."""
    if paused:
        prompt = request.prompt if request else "paused for input"
        return "True", "WaitingForInput", prompt
    previous = next((c for c in status.conditions if c.type == PAUSED_CONDITION), None)
    if previous is None:
        return None
    return "False", "Resumed", None
