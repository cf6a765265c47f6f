"""A run paused for input, the operator's side (radps_operator.pauses): the Paused phase, what
`.status.input` shows, and the checks an answer (spec.resume, `radps resume`) passes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from radps_flows import contract
from radps_operator import api, pauses
from radps_operator import reconcile as r
from radps_operator.settings import OperatorSettings

NOW = datetime(2026, 12, 5, 3, 0, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(prefect_ui_url="http://ui:4200", default_image="radps:9")
REQUEST = contract.PauseRequest(
    pause=1,
    prompt="CLEAN paused after the PSF and dirty image: residual peak 1.2 Jy/beam",
    defaults={"action": "continue", "niter": 1000, "threshold_jy": 0.0, "mask": []},
    previews=["/data/out/.staging/pauses/pause-1-residual.png"],
    timeout_seconds=600,
    timeout_action="finish",
)


def snap(state_type: str, name: str, pause: int | None = None, at: datetime = NOW):
    labels = {contract.PAUSE_LABEL: str(pause)} if pause else {}
    return r.FlowRunSnapshot(
        id="8c3b6a3e-0000-4000-8000-000000000001",
        name="deep",
        state_type=state_type,
        state_name=name,
        start_time=NOW - timedelta(minutes=5),
        labels=labels,
        state_time=at,
    )


def status(previous, snapshot, request=None, now=NOW) -> api.PipelineRunStatus:
    return r.status_from_flow_run(
        previous or api.PipelineRunStatus(),
        snapshot,
        now=now,
        settings=SETTINGS,
        work_pool="radps",
        run_name="deep",
        pipeline="imaging",
        pause_request=request,
    )


def test_a_paused_run_shows_what_it_waits_for_and_since_when():
    paused = status(None, snap("PAUSED", "Paused", pause=1), REQUEST)
    assert paused.phase == api.Phase.PAUSED
    waiting = paused.input
    assert waiting is not None and waiting.pause == 1
    assert waiting.prompt == REQUEST.prompt == paused.message
    assert waiting.since == NOW and waiting.expires == NOW + timedelta(seconds=600)
    assert waiting.timeout_action == "Finish"
    assert waiting.defaults["niter"] == 1000
    assert waiting.previews == REQUEST.previews
    assert waiting.artifacts.endswith("?tab=Artifacts")
    schema = waiting.answer_schema
    assert {"action", "niter", "threshold_jy", "mask", "pause"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    assert any(c.startswith("kubectl patch prun deep --type merge") for c in waiting.answer_with)
    assert "radps resume deep -p niter=1000" in waiting.answer_with
    condition = r.get_condition(paused, pauses.PAUSED_CONDITION)
    assert (condition.status, condition.reason) == ("True", "WaitingForInput")
    assert condition.last_transition_time == NOW
    wire = paused.to_wire()["input"]
    assert "schema" in wire and "answerSchema" not in wire  # as the CRD names it

    # a later read of the same pause keeps it (the request is read once a pause) ...
    later = NOW + timedelta(seconds=30)
    again = status(paused, snap("PAUSED", "Paused", pause=1), None, now=later)
    assert again.input == paused.input
    assert r.get_condition(again, pauses.PAUSED_CONDITION).last_transition_time == NOW
    # ... and once the run goes on, it is gone, the condition says so
    going = status(again, snap("RUNNING", "Running", pause=1), None, now=later)
    assert going.phase == api.Phase.RUNNING and going.input is None
    condition = r.get_condition(going, pauses.PAUSED_CONDITION)
    assert (condition.status, condition.reason) == ("False", "Resumed")
    assert condition.last_transition_time == later


def test_a_second_pause_replaces_the_first():
    first = status(None, snap("PAUSED", "Paused", pause=1), REQUEST)
    second_request = contract.PauseRequest(**{**REQUEST.to_json(), "pause": 2, "refused": "x"})
    second = status(first, snap("PAUSED", "Paused", pause=2), second_request)
    assert second.input.pause == 2 and second.input.refused == "x"
    # a pause whose request is not read yet shows no stale input
    third = status(second, snap("PAUSED", "Paused", pause=3), None)
    assert third.phase == api.Phase.PAUSED and third.input is None


def test_a_run_never_paused_has_no_paused_condition():
    running = status(None, snap("RUNNING", "Running"))
    assert r.get_condition(running, pauses.PAUSED_CONDITION) is None and running.input is None


def check(answer, waiting=1, pipeline="imaging", parameters=None):
    return pauses.check_answer(pipeline, parameters or {"imsize": 256}, answer, waiting)


def test_a_right_answer_goes_on_with_the_fields_given():
    assert check({"niter": 500}) == ({"niter": 500}, [])
    assert check({"action": "stop", "pause": 1}) == ({"action": "stop", "pause": 1}, [])
    values, errors = check({"mask": [[10, 10, 20, 20]], "threshold_jy": 0.01})
    assert not errors and values["mask"] == [[10, 10, 20, 20]]


@pytest.mark.parametrize(
    ("answer", "waiting", "field", "words"),
    [
        ({"niter": -5}, 1, "spec.resume.niter", "greater than or equal to 0"),
        ({"niter": "many"}, 1, "spec.resume.niter", "valid integer"),
        ({"nitre": 500}, 1, "spec.resume.nitre", "unknown field"),
        ({"action": "pause"}, 1, "spec.resume.action", "'continue' or 'stop'"),
        ({"mask": [[0, 0, 300, 10]]}, 1, "spec.resume.mask.0", "imsize 256"),
        ({"mask": "/etc/mask.fits"}, 1, "spec.resume.mask", "system tree"),
        ({"niter": 500, "pause": 2}, 1, "spec.resume.pause", "waits at pause 1"),
        ({"niter": 500}, None, "spec.resume", "not paused"),
        (500, 1, "spec.resume", "must be an object"),
    ],
)
def test_a_wrong_answer_is_refused_with_the_field_and_why(answer, waiting, field, words):
    values, errors = check(answer, waiting)
    assert values is None
    assert any(e.field == field and words in e.message for e in errors), errors


def test_a_pipeline_that_never_pauses_refuses_any_answer():
    _, errors = check({"niter": 5}, pipeline="flagging")
    assert [str(e) for e in errors] == ["spec.resume: the flagging pipeline never pauses for input"]
