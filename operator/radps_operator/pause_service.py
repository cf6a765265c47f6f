"""Answering a paused run (spec.resume): the operator's side of
:mod:`radps_operator.pauses`, with its I/O (Prefect's resume, the status, Events)."""

from __future__ import annotations

import json
from typing import Any

from radps_operator import api
from radps_operator.follower import Follower, Tracked
from radps_operator.pauses import check_answer
from radps_operator.prefect_gateway import PrefectGateway, PrefectRejected
from radps_operator.validation import FieldError


async def answer(
    follower: Follower, gateway: PrefectGateway, run: Tracked, resume: Any, generation: int | None
) -> None:
    """spec.resume changed: check it against the pause the run waits at and resume the flow
    run with it; a refusal (ours or Prefect's) goes into `.status.input.refused` and an Event,
    and the run stays paused. Each pause takes one answer (its metadata.generation)."""
    status = run.status
    request = status.input if status.phase == api.Phase.PAUSED else None
    if resume is None or (request and request.answered_generation == generation):
        return
    waiting = request.pause if request else None
    values, errors = check_answer(run.spec.pipeline, run.spec.flow_parameters(), resume, waiting)
    if not errors and run.flow_run_id is not None and values is not None:
        try:
            await gateway.resume_flow_run(run.flow_run_id, values)
        except PrefectRejected as exc:
            errors = [FieldError("spec.resume", str(exc))]
    if errors:
        message = "; ".join(str(e) for e in errors)
        if request is not None:
            await follower.update(run, lambda s: _with_input(s, refused=message))
        follower.post_event(
            run,
            "Warning",
            "AnswerRefused",
            f"{message} (the run still waits)" if request else message,
        )
        return
    await follower.update(run, lambda s: _with_input(s, refused=None, answered=generation))
    follower.post_event(run, "Normal", "Resumed", f"pause {waiting} answered: {json.dumps(values)}")
    assert run.flow_run_id is not None
    follower.flow_run_changed(run.flow_run_id)


def _with_input(
    status: api.PipelineRunStatus, refused: str | None, answered: int | None = None
) -> api.PipelineRunStatus:
    if status.input is None:
        return status
    update: dict[str, Any] = {"refused": refused}
    if answered is not None:
        update["answered_generation"] = answered
    return status.model_copy(update={"input": status.input.model_copy(update=update)})
