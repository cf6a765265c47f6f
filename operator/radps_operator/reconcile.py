"""The operator's decisions as pure functions: no I/O, no clocks (``now`` is an argument).

spec -> the Prefect deployment and flow run a PipelineRun needs; a Prefect flow run (read
back as a :class:`FlowRunSnapshot`) -> the PipelineRun's ``.status``; and the small rules
around them (timeouts, TTL, merge patches, conditions).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from radps_flows import contract
from radps_flows.contract import PIPELINE_LABEL, RUN_NAME_LABEL, RUN_UID_LABEL
from radps_operator import api, pauses, schedule_api
from radps_operator.schedule_api import cron_fields
from radps_operator.settings import OperatorSettings

SUCCEEDED = "Succeeded"
PREFECT_REACHABLE = "PrefectReachable"

# Prefect state types (StateType values), kept as strings so this module never imports Prefect.
SCHEDULED, PENDING, RUNNING, PAUSED = "SCHEDULED", "PENDING", "RUNNING", "PAUSED"
LATE_AFTER = timedelta(seconds=15)
"""Prefect's default PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS."""
COMPLETED, FAILED, CRASHED = "COMPLETED", "FAILED", "CRASHED"
CANCELLING, CANCELLED = "CANCELLING", "CANCELLED"
TERMINAL_STATE_TYPES = frozenset({COMPLETED, FAILED, CRASHED, CANCELLED})

_PHASE_OF_STATE_TYPE = {
    SCHEDULED: api.Phase.SCHEDULED,
    PENDING: api.Phase.PENDING,
    RUNNING: api.Phase.RUNNING,
    PAUSED: api.Phase.PAUSED,
    COMPLETED: api.Phase.COMPLETED,
    FAILED: api.Phase.FAILED,
    CRASHED: api.Phase.CRASHED,
    CANCELLING: api.Phase.CANCELLING,
    CANCELLED: api.Phase.CANCELLED,
}


# --- spec -> Prefect --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentRequest:
    """One deployment per (pipeline, image, work pool); and one per PipelineSchedule, which
    shows its cron in Prefect's UI (paused, its schedule inactive: the operator makes the
    runs, as PipelineRuns) and holds the flow runs of its PipelineRuns."""

    flow_name: str
    name: str
    entrypoint: str
    work_pool: str
    image: str
    parameter_schema: dict[str, Any]
    description: str = ""
    tags: tuple[str, ...] = ()
    cron: str | None = None
    time_zone: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def paused(self) -> bool:
        return self.cron is not None

    @property
    def key(self) -> tuple[str, ...]:
        """What makes two requests the same deployment as it is now (the per-process cache
        of upserts is keyed on it: a schedule's changed cron or template upserts again)."""
        parameters = json.dumps(self.parameters, sort_keys=True, default=str)
        return (self.flow_name, self.name, self.work_pool, self.image) + (
            (self.cron or "", self.time_zone or "", parameters) if self.cron else ()
        )


@dataclass(frozen=True)
class FlowRunRequest:
    name: str
    idempotency_key: str
    parameters: dict[str, Any]
    tags: tuple[str, ...]
    job_variables: dict[str, Any]
    retries: int = 0
    """Prefect's server retries a failed flow run this many times (its empirical policy)."""


def deployment_name(pipeline: str, image: str, work_pool: str) -> str:
    """A readable, stable deployment name for (pipeline, image, work pool), such as
    `imaging-radps-0-1-0-radps-1a2b3c4d`.

    The pool is part of the name because Prefect keys deployments by (flow, name): one name
    shared by two pools would be moved to whichever pool upserted it last, and a run asking for
    one pool would start on the other."""
    image_slug = re.sub(r"[^a-z0-9]+", "-", image.rsplit("/", 1)[-1].lower()).strip("-")[:40]
    pool_slug = re.sub(r"[^a-z0-9]+", "-", work_pool.lower()).strip("-")[:40]
    digest = hashlib.sha256(f"{image}\0{work_pool}".encode()).hexdigest()[:8]
    return f"{pipeline}-{image_slug}-{pool_slug}-{digest}"


def schedule_deployment_name(namespace: str, name: str) -> str:
    """The Prefect deployment of the PipelineSchedule ``namespace/name``."""
    return f"schedule-{namespace}-{name}"


def desired_schedule_deployment(
    namespace: str,
    name: str,
    schedule: schedule_api.PipelineScheduleSpec,
    settings: OperatorSettings,
    entrypoint: str,
    flow_name: str,
    parameter_schema: dict[str, Any],
) -> DeploymentRequest:
    """The deployment that shows a PipelineSchedule in Prefect: its cron, paused and
    inactive (Prefect must never make a run itself: the PipelineRuns are the record), the
    template's parameters as its own, and its runs' flow runs."""
    spec = schedule.template.spec
    pipeline = desired_deployment(spec, settings, entrypoint, flow_name, parameter_schema)
    return DeploymentRequest(
        flow_name=flow_name,
        name=schedule_deployment_name(namespace, name),
        entrypoint=entrypoint,
        work_pool=pipeline.work_pool,
        image=pipeline.image,
        parameter_schema=parameter_schema,
        description=f"PipelineSchedule {namespace}/{name}: the radps operator makes its runs "
        f"as PipelineRuns (kubectl get prun -n {namespace} -l radps.io/schedule={name}); "
        "this deployment stays paused.",
        tags=(*pipeline.tags, f"namespace:{namespace}", f"schedule:{name}"),
        cron=cron_fields(schedule.schedule),
        time_zone=schedule.time_zone or "UTC",
        parameters=spec.flow_parameters(),
    )


def desired_deployment(
    spec: api.PipelineRunSpec,
    settings: OperatorSettings,
    entrypoint: str,
    flow_name: str,
    parameter_schema: dict[str, Any],
    description: str = "",
) -> DeploymentRequest:
    image = spec.image or settings.default_image
    work_pool = spec.work_pool or settings.work_pool
    return DeploymentRequest(
        flow_name=flow_name,
        name=deployment_name(spec.pipeline, image, work_pool),
        entrypoint=entrypoint,
        work_pool=work_pool,
        image=image,
        parameter_schema=parameter_schema,
        description=description,
        tags=("radps", f"pipeline:{spec.pipeline}"),
    )


def _quantity(value: int | str | None) -> str | None:
    return None if value is None else str(value)


def dask_config(spec: api.PipelineRunSpec) -> contract.DaskClusterConfig:
    """The size of the run's Dask cluster (`spec.dask`, or the defaults), for a pod's
    environment or a local run."""
    dask = spec.dask_or_default()
    return contract.DaskClusterConfig(
        workers=dask.workers,
        threads_per_worker=dask.threads_per_worker,
        idle_timeout_seconds=dask.idle_timeout_seconds,
    )


def job_variables(
    namespace: str, name: str, uid: str, spec: api.PipelineRunSpec, settings: OperatorSettings
) -> dict[str, Any]:
    """What the worker needs to start the flow-run pod (prefect-kubernetes' variable names).

    A process pool ignores what its template does not know (the gateway keeps only the
    variables the pool declares)."""
    from radps_flows.allocator import ENVIRONMENT as ALLOCATOR_ENV

    dask = spec.dask_or_default()
    env = {
        **ALLOCATOR_ENV,
        contract.RUN_NAMESPACE_ENV: namespace,
        contract.RUN_NAME_ENV: name,
        contract.RUN_UID_ENV: uid,
        contract.IMAGE_ENV: spec.image or settings.default_image,
        **dask_config(spec).to_env(),
    }
    if dask.worker_resources is not None:
        import json

        env[contract.DASK_WORKER_RESOURCES_ENV] = json.dumps(
            dask.worker_resources.to_wire(), separators=(",", ":")
        )
    variables: dict[str, Any] = {
        "image": spec.image or settings.default_image,
        "namespace": namespace,
        "env": env,
        "labels": {RUN_UID_LABEL: uid, RUN_NAME_LABEL: name, PIPELINE_LABEL: spec.pipeline},
    }
    if settings.flow_service_account:
        variables["service_account_name"] = settings.flow_service_account
    deadline = active_deadline_seconds(spec, settings.start_deadline_seconds)
    if deadline is not None:
        variables["active_deadline_seconds"] = deadline
    resources = spec.resources
    if resources is not None:
        for kind, values in (("request", resources.requests), ("limit", resources.limits)):
            for resource in ("cpu", "memory"):
                quantity = _quantity((values or {}).get(resource))
                if quantity is not None:
                    variables[f"{resource}_{kind}"] = quantity
    return variables


def desired_flow_run(
    namespace: str,
    name: str,
    uid: str,
    spec: api.PipelineRunSpec,
    settings: OperatorSettings,
    schedule: str | None = None,
) -> FlowRunRequest:
    """The flow run of a PipelineRun (``schedule``: the PipelineSchedule that made it)."""
    tags = ("radps", f"pipeline:{spec.pipeline}", f"namespace:{namespace}")
    return FlowRunRequest(
        name=name,
        idempotency_key=uid,
        parameters=spec.flow_parameters(),
        tags=(*tags, f"schedule:{schedule}") if schedule else tags,
        job_variables=job_variables(namespace, name, uid, spec, settings),
        retries=spec.retries,
    )


# --- Prefect -> status ------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowRunSnapshot:
    """What the operator reads from a Prefect flow run (Prefect-free, so tests build them)."""

    id: str
    name: str
    state_type: str | None
    state_name: str | None = None
    state_message: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    deployment_id: str | None = None
    work_pool: str | None = None
    state_time: datetime | None = None
    """When Prefect entered the current state (for the status-lag metric)."""
    expected_start_time: datetime | None = None
    """When a scheduled run should start: past it by LATE_AFTER, the run is late."""

    @property
    def terminal(self) -> bool:
        return self.state_type in TERMINAL_STATE_TYPES


def parse_status(raw: dict[str, Any] | None) -> api.PipelineRunStatus:
    """The object's `.status` as the model (kopf's bookkeeping is kept apart, untouched)."""
    raw = {k: v for k, v in (raw or {}).items() if k != "kopf"}
    try:
        return api.PipelineRunStatus.model_validate(raw)
    except ValueError:
        return api.PipelineRunStatus()


def set_condition(
    conditions: list[api.Condition],
    type_: str,
    status: str,
    reason: str | None,
    message: str | None,
    now: datetime,
) -> list[api.Condition]:
    """Conditions with `type_` set; lastTransitionTime moves only when the status changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    changed = previous is None or previous.status != status
    new = api.Condition(
        type=type_,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message=message,
        last_transition_time=now if changed else previous.last_transition_time,
    )
    if previous is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def get_condition(status: api.PipelineRunStatus, type_: str) -> api.Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def format_duration(seconds: float) -> str:
    """`kubectl`-style durations: 45s, 2m13s, 1h4m, 3d2h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _progress(snapshot: FlowRunSnapshot, previous: api.Progress | None) -> api.Progress | None:
    """From the labels (else as before); a Completed run has done every stage, even while
    its flow's last label write is still on its way."""
    done = snapshot.state_type == COMPLETED
    found = contract.read_progress(snapshot.labels, run_completed=done)
    if found is None and previous is not None:
        found = (previous.total, previous.total) if done else (previous.completed, previous.total)
    if found is None:
        return None
    completed, total = found
    return api.Progress(completed=completed, total=total, summary=f"{completed}/{total}")


def is_late(snapshot: FlowRunSnapshot, now: datetime) -> bool:
    """Prefect's own late-runs service renames such runs "Late", but it may be off, behind, or
    fail its write on a busy SQLite server; the operator does not wait for it to say so."""
    if snapshot.state_type != SCHEDULED:
        return False
    if snapshot.state_name == "Late":
        return True
    expected = snapshot.expected_start_time
    return expected is not None and now - expected > LATE_AFTER


def _phase_and_reason(
    snapshot: FlowRunSnapshot, previous: api.PipelineRunStatus, work_pool: str, now: datetime
) -> tuple[api.Phase, str, str | None]:
    state_type = snapshot.state_type or SCHEDULED
    name = "Late" if is_late(snapshot, now) else snapshot.state_name or state_type.title()
    message = snapshot.state_message or None
    if state_type == FAILED and name == "TimedOut":
        return api.Phase.TIMED_OUT, "TimedOut", message
    if previous.phase == api.Phase.TIMED_OUT and (
        state_type == CANCELLED or state_type not in TERMINAL_STATE_TYPES
    ):
        # The operator cancelled the run because of spec.timeoutSeconds. A read from before
        # the cancel (e.g. the snapshot its create handler still holds) must not undo that.
        return api.Phase.TIMED_OUT, "TimedOut", previous.message
    phase = _PHASE_OF_STATE_TYPE.get(state_type, api.Phase.PENDING)
    if name == "Late":
        message = (
            f"no worker has started the flow run yet (work pool {work_pool!r}): is a worker up?"
        )
    if state_type == CRASHED and not message:
        message = "the flow run's infrastructure stopped unexpectedly"
    return phase, re.sub(r"[^A-Za-z0-9]", "", name) or phase.value, message


def status_from_flow_run(
    previous: api.PipelineRunStatus,
    snapshot: FlowRunSnapshot,
    *,
    now: datetime,
    settings: OperatorSettings,
    work_pool: str,
    outputs: list[dict[str, Any]] | None = None,
    generation: int | None = None,
    run_name: str = "",
    pipeline: str = "",
    pause_request: contract.PauseRequest | None = None,
) -> api.PipelineRunStatus:
    """The status that tells the truth about `snapshot`, built on the previous status (whose
    conditions keep their transition times). A finished status never goes back to running.
    A paused run shows what it waits for (``.status.input``, from ``pause_request``, the
    flow's, read once per pause; see :mod:`radps_operator.pauses`)."""
    prefect = api.PrefectStatus(
        deployment_id=snapshot.deployment_id
        or (previous.prefect.deployment_id if previous.prefect else None),
        flow_run_id=snapshot.id,
        flow_run_name=snapshot.name,
        state=snapshot.state_name,
        url=settings.flow_run_url(snapshot.id),
    )
    if has_operator_verdict(previous):
        # final; where its flow run is still shows (a verdict may come before the create
        # call that made it returns)
        return previous.model_copy(update={"prefect": prefect})
    if is_finished(previous) and not snapshot.terminal:
        return previous
    phase, reason, message = _phase_and_reason(snapshot, previous, work_pool, now)
    if phase in (api.Phase.FAILED, api.Phase.CRASHED):
        message = explain_with_pods(message, phase, previous)
    # TimedOut while Prefect still cancels is not finished: completion comes with Cancelled.
    finished = phase in api.FINISHED_PHASES and snapshot.terminal
    if phase == api.Phase.COMPLETED:
        condition = ("True", "Completed", message)
    elif finished:
        condition = ("False", reason, message)
    else:
        condition = ("Unknown", reason, message)
    start = snapshot.start_time or previous.start_time
    completion = (snapshot.end_time or previous.completion_time or now) if finished else None
    duration = None
    if start is not None:
        duration = format_duration(((completion or now) - start).total_seconds())
    new_outputs = previous.outputs
    if outputs is not None:
        new_outputs = [api.Output.model_validate(o) for o in outputs]
    conditions = set_condition(previous.conditions, SUCCEEDED, *condition, now=now)
    waiting = None
    if phase == api.Phase.PAUSED:
        waiting = pauses.input_status(
            previous.input,
            pipeline=pipeline,
            name=run_name,
            pause=pauses.pause_of(snapshot.labels),
            request=pause_request,
            since=snapshot.state_time,
            flow_run_url=prefect.url,
        )
        message = waiting.prompt if waiting else message
    paused = pauses.paused_condition(previous, phase == api.Phase.PAUSED, waiting)
    if paused is not None:
        conditions = set_condition(conditions, pauses.PAUSED_CONDITION, *paused, now=now)
    return previous.model_copy(
        update={
            "phase": phase,
            "conditions": conditions,
            "input": waiting,
            "observed_generation": generation or previous.observed_generation,
            "start_time": start,
            "completion_time": completion,
            "duration": duration,
            "message": message,
            "prefect": prefect,
            "progress": _progress(snapshot, previous.progress),
            "outputs": new_outputs,
            "cache": contract.read_cache(snapshot.labels) or previous.cache,
        }
    )


def dask_status(cluster: dict[str, Any]) -> api.DaskStatus:
    """`.status.dask` from the run's DaskCluster object (dask-kubernetes names the scheduler
    Service `<cluster>-scheduler`; the dashboard is its port 8787)."""
    meta = cluster.get("metadata", {})
    name, namespace = meta.get("name"), meta.get("namespace")
    replicas = (cluster.get("spec") or {}).get("worker", {}).get("replicas")
    return api.DaskStatus(
        cluster=name,
        dashboard_url=f"http://{name}-scheduler.{namespace}.svc:8787/status" if name else None,
        workers=replicas if isinstance(replicas, int) and replicas >= 0 else None,
    )


def pending_status(
    previous: api.PipelineRunStatus, now: datetime, generation: int | None
) -> api.PipelineRunStatus:
    """Accepted by the operator, flow run not created yet."""
    if previous.phase is not None:
        return previous
    return previous.model_copy(
        update={
            "phase": api.Phase.PENDING,
            "observed_generation": generation,
            "message": "creating the Prefect flow run",
            "conditions": set_condition(
                previous.conditions, SUCCEEDED, "Unknown", "Pending", None, now
            ),
        }
    )


def invalid_spec_status(
    previous: api.PipelineRunStatus, message: str, now: datetime, generation: int | None
) -> api.PipelineRunStatus:
    status = verdict_status(previous, api.Phase.FAILED, INVALID_SPEC, message, now)
    return status.model_copy(update={"observed_generation": generation})


# --- the operator's own verdicts --------------------------------------------------------------
# Ends the operator decides on, not Prefect: the run can never start or its flow run is gone.
# Such a status is final; a later Prefect state (the Cancelled that follows the operator's own
# cancel) does not change it.

INVALID_SPEC = "InvalidSpec"
PREFECT_REJECTED = "PrefectRejected"
START_DEADLINE_EXCEEDED = "StartDeadlineExceeded"
FLOW_RUN_LOST = "FlowRunLost"
PODS_HEALTHY = "PodsHealthy"
"""Condition: False with the reason (ImagePullBackOff, Unschedulable, OOMKilled, ...) while a
pod of the run (flow-run pod or Dask pod) cannot start or was killed."""

FATAL_WAITING_REASONS = frozenset({"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
"""A container waiting for one of these never starts by itself: the run fails at once."""
WAITING_REASONS = FATAL_WAITING_REASONS | {
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
}
TERMINATED_REASONS = frozenset({"OOMKilled", "ContainerCannotRun", "DeadlineExceeded"})


def verdict_status(
    previous: api.PipelineRunStatus,
    phase: api.Phase,
    reason: str,
    message: str,
    now: datetime,
) -> api.PipelineRunStatus:
    start = previous.start_time
    return previous.model_copy(
        update={
            "phase": phase,
            "message": message,
            "completion_time": now,
            "duration": format_duration((now - start).total_seconds()) if start else None,
            "conditions": set_condition(
                previous.conditions, SUCCEEDED, "False", reason, message, now
            ),
        }
    )


def has_operator_verdict(status: api.PipelineRunStatus) -> bool:
    condition = get_condition(status, SUCCEEDED)
    return condition is not None and condition.reason in _VERDICT_REASONS and is_finished(status)


_VERDICT_REASONS = (
    frozenset({INVALID_SPEC, PREFECT_REJECTED, START_DEADLINE_EXCEEDED, FLOW_RUN_LOST})
    | FATAL_WAITING_REASONS
)


def start_deadline(
    spec: api.PipelineRunSpec,
    status: api.PipelineRunStatus,
    created: datetime | None,
    default_seconds: int,
) -> datetime | None:
    """When a run that has not started running fails: `startDeadlineSeconds` after creation."""
    if is_finished(status) or status.start_time is not None or created is None:
        return None
    return created + timedelta(seconds=spec.start_deadline_seconds or default_seconds)


def start_deadline_status(
    previous: api.PipelineRunStatus, seconds: int, now: datetime
) -> api.PipelineRunStatus:
    why = f" (last: {previous.message})" if previous.message else ""
    message = f"not running {seconds} s after creation (spec.startDeadlineSeconds){why}"
    return verdict_status(previous, api.Phase.FAILED, START_DEADLINE_EXCEEDED, message, now)


def active_deadline_seconds(spec: api.PipelineRunSpec, default_start_seconds: int) -> int | None:
    """The flow-run Job's own deadline: the Kubernetes backstop of `timeoutSeconds`, which the
    operator enforces first (it counts from the start of running; the Job from its creation,
    so the start deadline is added)."""
    if spec.timeout_seconds is None:
        return None
    return spec.timeout_seconds + (spec.start_deadline_seconds or default_start_seconds)


@dataclass(frozen=True)
class PodProblem:
    reason: str
    message: str
    fatal: bool


def pod_problems(pods: list[dict[str, Any]]) -> list[PodProblem]:
    """Why pods of a run (as the API returns them, camelCase) cannot start or were killed."""
    problems = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        if status.get("reason") == "Evicted":
            problems.append(
                PodProblem("Evicted", f"pod {name}: {status.get('message', '')}", False)
            )
        for condition in status.get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("reason") == "Unschedulable"
            ):
                text = condition.get("message") or "no node can run it"
                problems.append(PodProblem("Unschedulable", f"pod {name}: {text}", False))
        containers = (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or []
        )
        for container in containers:
            cname = container.get("name", "?")
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in WAITING_REASONS:
                text = waiting.get("message") or reason
                problems.append(
                    PodProblem(
                        reason,
                        f"pod {name} container {cname}: {text}",
                        reason in FATAL_WAITING_REASONS,
                    )
                )
            for state in ("state", "lastState"):
                terminated = (container.get(state) or {}).get("terminated") or {}
                if terminated.get("reason") in TERMINATED_REASONS:
                    problems.append(
                        PodProblem(
                            terminated["reason"],
                            f"pod {name} container {cname}: {terminated['reason']} "
                            f"(exit code {terminated.get('exitCode')})",
                            False,
                        )
                    )
                    break
    return problems


def pods_status(
    previous: api.PipelineRunStatus,
    problems: list[PodProblem],
    now: datetime,
    flow_pod: str | None = None,
) -> api.PipelineRunStatus:
    """The PodsHealthy condition, True naming the flow-run pod once one is seen (so that an
    operator restarted later knows a pod existed, see :func:`pods_seen`); a pod that can
    never start ends the run with its reason."""
    if not problems:
        old = get_condition(previous, PODS_HEALTHY)
        if old is None and flow_pod is None:
            return previous
        kept = old.message if old is not None and old.status == "True" else None
        condition = ("True", "Healthy", f"flow-run pod {flow_pod}" if flow_pod else kept)
    else:
        first = next((p for p in problems if p.fatal), problems[0])
        message = "; ".join(dict.fromkeys(p.message for p in problems))[:1000]
        condition = ("False", first.reason, message)
    status = previous.model_copy(
        update={"conditions": set_condition(previous.conditions, PODS_HEALTHY, *condition, now)}
    )
    fatal = next((p for p in problems if p.fatal), None)
    if fatal is not None and not is_finished(previous):
        status = verdict_status(status, api.Phase.FAILED, fatal.reason, fatal.message, now)
    return status


def pods_seen(status: api.PipelineRunStatus) -> bool:
    """Whether a pod of the run was ever seen (it runs on Kubernetes, not a process pool):
    then a Running run without a flow-run pod is lost."""
    return get_condition(status, PODS_HEALTHY) is not None


def explain_with_pods(
    message: str | None, phase: api.Phase, status: api.PipelineRunStatus
) -> str | None:
    """A failed or crashed run's message, with why its pods died when `status` says."""
    pods = get_condition(status, PODS_HEALTHY)
    if pods is None or pods.status != "False":
        return message
    return f"{message or phase.value}; {pods.reason}: {pods.message}"[:2000]


def lost_status(previous: api.PipelineRunStatus, why: str, now: datetime) -> api.PipelineRunStatus:
    return verdict_status(previous, api.Phase.CRASHED, FLOW_RUN_LOST, why, now)


def timed_out_status(
    previous: api.PipelineRunStatus, timeout_seconds: int, now: datetime
) -> api.PipelineRunStatus:
    message = f"exceeded spec.timeoutSeconds ({timeout_seconds} s): flow run cancelled"
    return previous.model_copy(
        update={
            "phase": api.Phase.TIMED_OUT,
            "message": message,
            "conditions": set_condition(
                previous.conditions, SUCCEEDED, "Unknown", "TimedOut", message, now
            ),
        }
    )


def reachability_status(
    previous: api.PipelineRunStatus, reachable: bool, message: str | None, now: datetime
) -> api.PipelineRunStatus:
    if reachable:
        condition = ("True", "Reachable", None)
    else:
        condition = ("False", "PrefectUnreachable", message)
    return previous.model_copy(
        update={
            "conditions": set_condition(previous.conditions, PREFECT_REACHABLE, *condition, now)
        }
    )


def is_finished(status: api.PipelineRunStatus) -> bool:
    return status.phase in api.FINISHED_PHASES and status.completion_time is not None


def timeout_deadline(
    spec: api.PipelineRunSpec, status: api.PipelineRunStatus, created: datetime | None
) -> datetime | None:
    """When an unfinished run times out: `timeoutSeconds` after it started running (after
    its creation while it has not started, so a run no worker takes still times out)."""
    if spec.timeout_seconds is None or is_finished(status):
        return None
    since = status.start_time or created
    return None if since is None else since + timedelta(seconds=spec.timeout_seconds)


def ttl_deadline(spec: api.PipelineRunSpec, status: api.PipelineRunStatus) -> datetime | None:
    if spec.ttl_seconds_after_finished is None or not is_finished(status):
        return None
    assert status.completion_time is not None
    return status.completion_time + timedelta(seconds=spec.ttl_seconds_after_finished)


def status_patch(
    old: api.PipelineRunStatus | None, new: api.PipelineRunStatus
) -> dict[str, Any] | None:
    """A JSON merge patch for `.status` turning `old` into `new`, or None when equal."""
    before = old.to_wire() if old is not None else {}
    after = new.to_wire()
    patch: dict[str, Any] = {}
    for key in set(before) | set(after):
        if key == "kopf":
            continue
        if before.get(key) != after.get(key):
            patch[key] = after.get(key)
    return patch or None


def phase_event(
    old: api.PipelineRunStatus | None, new: api.PipelineRunStatus
) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Kubernetes Event a phase change deserves, if any."""
    old_phase = old.phase if old is not None else None
    if new.phase is None or new.phase == old_phase:
        return None
    failed = new.phase in (
        api.Phase.FAILED,
        api.Phase.CRASHED,
        api.Phase.TIMED_OUT,
    )
    message = f"phase {old_phase or '-'} -> {new.phase}"
    if new.message:
        message += f": {new.message}"
    return ("Warning" if failed else "Normal", str(new.phase), message[:1000])
