"""Local runs after the fact: what `radps list`, `get`, `logs`, `cancel` and `rerun` read.

Every `radps run` is a Prefect flow run on the local server, named after its PipelineRun and
tagged ``radps``; the PipelineRun it ran is kept beside it as the flow run's input
``radps-pipelinerun`` (:func:`record_manifest`), so a rerun starts from the very spec, its
Dask settings included. A name means the latest run of that name, as kubectl means the one
object of that name.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from radps_operator.local.manifests import as_rerun, with_parameters

if TYPE_CHECKING:
    from radps_operator.local.server import LocalServer

RADPS_TAG = "radps"
MANIFEST_INPUT_KEY = "radps-pipelinerun"
FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@contextlib.contextmanager
def local_prefect() -> Iterator[tuple[Any, LocalServer]]:
    """A Prefect client of the local radps server, started in the background as `radps run`
    starts it where none runs (the runs are in its database)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from radps_operator.local import server as local_server
    from radps_operator.local.home import configure_process_env, process_env, radps_home

    home = radps_home()
    environment = dict(os.environ)
    configure_process_env(home, False)
    server = local_server.find_running_server(home)
    if server is None:
        server, _ = local_server.start_background(home, process_env(home, False, environment))
    with (
        temporary_settings({PREFECT_API_URL: server.api_url}),
        get_client(sync_client=True) as client,
    ):
        yield client, server


class RunNotFound(LookupError):
    """No local run of that name."""


def record_manifest(client: Any, flow_run_id: Any, document: dict[str, Any]) -> None:
    """Keep the PipelineRun a flow run runs beside it, for `radps get` and `radps rerun`."""
    client.create_flow_run_input(flow_run_id, MANIFEST_INPUT_KEY, json.dumps(document))


def manifest_of(client: Any, flow_run: Any) -> dict[str, Any]:
    """The PipelineRun a flow run ran: as recorded, else rebuilt from its parameters and
    pipeline tag (a run recorded before radps kept it)."""
    try:
        return json.loads(client.read_flow_run_input(flow_run.id, MANIFEST_INPUT_KEY))
    except Exception:
        pipeline = pipeline_of(flow_run)
        return {
            "apiVersion": "radps.io/v1alpha1",
            "kind": "PipelineRun",
            "metadata": {"name": flow_run.name},
            "spec": {"pipeline": pipeline, "parameters": dict(flow_run.parameters or {})},
        }


def pipeline_of(flow_run: Any) -> str:
    for tag in flow_run.tags or ():
        if tag.startswith("pipeline:"):
            return tag.removeprefix("pipeline:")
    return "?"


def runs(client: Any, name: str | None = None, limit: int = 50) -> list[Any]:
    """radps's flow runs, the newest first; only those named ``name`` if given."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    flow_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[RADPS_TAG]))
    if name is not None:
        flow_filter.name = FlowRunFilterName(any_=[name])
    return client.read_flow_runs(
        flow_run_filter=flow_filter, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit
    )


def latest(client: Any, name: str) -> Any:
    found = runs(client, name, limit=1)
    if not found:
        raise RunNotFound(f"no local run named {name!r} (`radps list` shows them)")
    return found[0]


def state_type(flow_run: Any) -> str:
    return flow_run.state.type.value if flow_run.state else "PENDING"


def summary_row(flow_run: Any) -> dict[str, Any]:
    """A line of `radps list`."""
    start = flow_run.start_time or flow_run.expected_start_time
    end = flow_run.end_time
    return {
        "name": flow_run.name,
        "pipeline": pipeline_of(flow_run),
        "state": flow_run.state.name if flow_run.state else "Pending",
        "started": _iso(start),
        "duration_s": round((end - start).total_seconds(), 1) if start and end else None,
        "flow_run_id": str(flow_run.id),
    }


def record(client: Any, flow_run: Any, ui_url: str | None = None) -> dict[str, Any]:
    """What `radps get` shows: the PipelineRun as run, and its status as the operator writes
    it on Kubernetes (phase, message, times, outputs), with the science summary."""
    from radps_flows.contract import (
        OUTPUTS_ARTIFACT_DESCRIPTION,
        SUMMARY_ARTIFACT_DESCRIPTION,
        read_cache,
    )

    document = manifest_of(client, flow_run)
    status: dict[str, Any] = {
        "phase": flow_run.state.name if flow_run.state else "Pending",
        "message": (flow_run.state.message if flow_run.state else None) or None,
        "flowRunId": str(flow_run.id),
        "startTime": _iso(flow_run.start_time),
        "completionTime": _iso(flow_run.end_time),
        "cache": read_cache(flow_run.labels),
    }
    if ui_url:
        status["flowRunUrl"] = f"{ui_url}/runs/flow-run/{flow_run.id}"
    if flow_run.state is not None and flow_run.state.is_paused():
        status["input"] = _waiting_for(client, flow_run, document, status.get("flowRunUrl"))
    tables = table_artifacts(client, flow_run.id)
    if OUTPUTS_ARTIFACT_DESCRIPTION in tables:
        status["outputs"] = tables[OUTPUTS_ARTIFACT_DESCRIPTION]
    if SUMMARY_ARTIFACT_DESCRIPTION in tables:
        rows = tables[SUMMARY_ARTIFACT_DESCRIPTION]
        status["summary"] = {r.get("quantity"): r.get("value") for r in rows}
    document["status"] = {k: v for k, v in status.items() if v is not None}
    return document


def _waiting_for(
    client: Any, flow_run: Any, document: dict[str, Any], url: str | None
) -> dict[str, Any] | None:
    """`.status.input` of a paused local run, as the operator shows it on a cluster (the
    answers by `radps resume` only)."""
    from radps_flows.contract import PauseRequest, pause_input_key
    from radps_operator import pauses

    pause = pauses.pause_of(flow_run.labels or {})
    if pause is None:
        return None
    try:
        request = PauseRequest.from_json(
            json.loads(client.read_flow_run_input(flow_run.id, pause_input_key(pause)))
        )
    except Exception:  # not written yet
        return None
    waiting = pauses.input_status(
        None,
        pipeline=str((document.get("spec") or {}).get("pipeline")),
        name=flow_run.name,
        pause=pause,
        request=request,
        since=flow_run.state.timestamp,
        flow_run_url=url,
    )
    if waiting is None:
        return None
    local = [c for c in waiting.answer_with if c.startswith("radps ")]
    return waiting.model_copy(update={"answer_with": local}).to_wire()


def table_artifacts(client: Any, flow_run_id: Any) -> dict[str, list[dict[str, Any]]]:
    """The rows of a flow run's artifacts, by description (radps's tables: its outputs, its
    science summary, ...)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    artifacts = client.read_artifacts(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )
    return {a.description: _rows(a.data) for a in artifacts if a.description}


def _rows(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return []
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def logs(
    client: Any, flow_run_id: Any, *, follow: bool = False, poll: float = 1.0
) -> Iterator[Any]:
    """The run's log records in order; with ``follow``, new ones as they come until the run
    ends (and the records of its end)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
    from prefect.client.schemas.sorting import LogSort

    after = None
    seen: set[Any] = set()
    while True:
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        if after is not None:
            log_filter.timestamp = LogFilterTimestamp(after_=after)
        offset = 0
        while True:  # the API returns at most 200 records a call
            page = client.read_logs(
                log_filter=log_filter, sort=LogSort.TIMESTAMP_ASC, limit=200, offset=offset
            )
            for entry in page:
                if entry.id not in seen:
                    seen.add(entry.id)
                    after = entry.timestamp
                    yield entry
            if len(page) < 200:
                break
            offset += len(page)
        if not follow:
            return
        if state_type(client.read_flow_run(flow_run_id)) in FINAL_STATES:
            follow = False  # one more read: the records of its end
            time.sleep(poll)
            continue
        time.sleep(poll)


def request_cancel(client: Any, flow_run: Any) -> str:
    """Ask the run to stop: the flow run goes Cancelling, which the `radps run` running it
    sees within a second and cancels as Ctrl-C does; a message saying what happened."""
    from prefect.states import Cancelling

    kind = state_type(flow_run)
    if kind in FINAL_STATES:
        return f"{flow_run.name} has already ended ({flow_run.state.name}): nothing to cancel"
    client.set_flow_run_state(
        flow_run.id, Cancelling(message="Cancelled with radps cancel"), force=True
    )
    return f"cancelling {flow_run.name} (flow run {flow_run.id})"


def request_resume(client: Any, flow_run: Any, answer: dict[str, Any]) -> str:
    """Answer the pause a local run waits at, once the answer passed the operator's checks
    (InvalidPipelineRun with every reason otherwise); a message saying what happened."""
    from prefect.flow_runs import resume_flow_run

    from radps_operator import api, pauses
    from radps_operator.validation import FieldError, InvalidPipelineRun

    paused = flow_run.state is not None and flow_run.state.is_paused()
    waiting = pauses.pause_of(flow_run.labels or {}) if paused else None
    spec = api.PipelineRunSpec.model_validate(manifest_of(client, flow_run)["spec"])
    values, errors = pauses.check_answer(
        spec.pipeline, spec.flow_parameters(), answer, waiting, field="answer"
    )
    if errors:
        raise InvalidPipelineRun(errors)
    try:
        resume_flow_run(flow_run.id, run_input=values)
    except Exception as exc:  # Prefect's refusal (e.g. resumed meanwhile): its own words
        raise InvalidPipelineRun([FieldError("answer", str(exc))]) from exc
    return f"answered pause {waiting} of {flow_run.name}: {json.dumps(values)}"


def rerun_manifest(
    client: Any,
    flow_run: Any,
    overrides: dict[str, Any] | None = None,
    from_stage: str | None = None,
) -> dict[str, Any]:
    """A new PipelineRun with the spec ``flow_run`` ran and ``overrides`` set among its
    parameters, named ``<name>-`` plus five characters (``metadata.generateName``); a rerun
    of it (:func:`~radps_operator.local.manifests.as_rerun`) from ``from_stage``."""
    document = manifest_of(client, flow_run)
    document.pop("status", None)
    document["metadata"] = {"generateName": f"{flow_run.name[:57]}-"}
    return with_parameters(as_rerun(document, flow_run.name, from_stage), overrides or {})


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
