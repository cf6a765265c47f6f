"""One look at a PipelineSchedule: check it, read its runs, decide (:mod:`schedules`), act
(delete, create), and write its status and Events. The kopf daemon of each schedule calls
:meth:`ScheduleService.look` and sleeps for as long as it says."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from radps_operator import api, reconcile, schedule_api, schedules
from radps_operator.kube import Kube, KubeApiError
from radps_operator.prefect_gateway import (
    CREATE_BUSY_RETRIES,
    PrefectBusy,
    PrefectGateway,
    PrefectRejected,
    PrefectUnavailable,
    busy_retry_delay,
)
from radps_operator.settings import OperatorSettings
from radps_operator.validation import InvalidPipelineRun, validate_schedule_spec

if TYPE_CHECKING:
    from radps_flows.catalog import Pipeline

log = logging.getLogger(__name__)

VALID = "Valid"
SUSPENDED = "Suspended"


class ScheduleService:
    """Looks at schedules for one operator: its Kubernetes client, catalog and images."""

    def __init__(
        self,
        kube: Kube,
        gateway: PrefectGateway,
        settings: OperatorSettings,
        catalog: Mapping[str, Pipeline],
    ) -> None:
        self._kube = kube
        self._gateway = gateway
        self._settings = settings
        self._catalog = catalog
        self._allowed_images = settings.allowed_images
        self._said: dict[str, set[str]] = {}  # per schedule UID: the Events already posted
        self._wake: dict[str, asyncio.Event] = {}

    def wake_event(self, uid: str) -> asyncio.Event:
        """Set when the schedule of UID ``uid`` should be looked at now."""
        return self._wake.setdefault(uid, asyncio.Event())

    def wake(self, uid: str) -> None:
        self.wake_event(uid).set()

    def forget(self, uid: str) -> None:
        """The schedule is gone (or its daemon stops)."""
        self._said.pop(uid, None)
        self._wake.pop(uid, None)

    async def look(self, body: Mapping[str, Any]) -> float:
        """Act on the schedule ``body`` as it is now; the seconds until the next look."""
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):  # going: a run made now would be collected at once
            return schedules.LONGEST_SLEEP_S
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        ref = {"namespace": namespace, "name": name, "uid": uid, "kind": schedule_api.KIND}
        now = datetime.now(UTC)
        status = schedule_api.parse_status(dict(body.get("status") or {}))
        try:
            spec = validate_schedule_spec(
                dict(body.get("spec") or {}), self._catalog, self._allowed_images
            )
        except InvalidPipelineRun as invalid:
            message = f"invalid spec: {invalid}"[:2000]
            await self._event(ref, "Warning", "InvalidSpec", message)
            await self._kube.patch_schedule_status(
                namespace,
                name,
                {
                    "message": message,
                    "nextScheduleTime": None,
                    "observedGeneration": meta.get("generation"),
                    "conditions": [_condition(VALID, False, "InvalidSpec", message, now)],
                },
            )
            return schedules.LONGEST_SLEEP_S
        deployment_id = await self._show_in_prefect(ref, spec) or status.prefect_deployment_id
        found = await self._kube.runs_labelled(namespace, f"{schedules.SCHEDULE_LABEL}={name}")
        runs = [schedules.OwnedRun.from_object(r) for r in found if schedules.owned_by(r, uid)]
        created = api.parse_time(meta.get("creationTimestamp")) or now
        plan = schedules.plan(
            spec,
            name,
            created,
            status.last_schedule_time,
            status.last_successful_time,
            runs,
            now,
        )
        for run_name in plan.delete:
            await self._kube.delete_run(namespace, run_name)
        message = status.message
        if plan.create_for is not None:
            message, made = await self._create(body, spec, plan, ref)
            if not made:  # the time stays unmet: the next look tries again
                plan.last_schedule_time = status.last_schedule_time
        for type_, reason, text in plan.events:
            await self._event(ref, type_, reason, text)
        conditions = [_condition(VALID, True, "Valid", "the template is a valid PipelineRun", now)]
        conditions.append(
            _condition(
                SUSPENDED,
                spec.suspend,
                "Suspended" if spec.suspend else "Scheduling",
                "spec.suspend is true: no runs are made" if spec.suspend else "runs are made",
                now,
            )
        )
        patch = {
            "lastScheduleTime": _iso(plan.last_schedule_time),
            "nextScheduleTime": _iso(plan.next_schedule_time),
            "lastSuccessfulTime": _iso(plan.last_successful_time),
            "active": plan.active,
            "activeCount": len(plan.active),
            "message": message,
            "prefectDeploymentId": deployment_id,
            "observedGeneration": meta.get("generation"),
            "conditions": _keep_transition_times(status, conditions),
        }
        if not _already(dict(body.get("status") or {}), patch):  # most looks change nothing
            await self._kube.patch_schedule_status(namespace, name, patch)
        return plan.sleep_seconds(datetime.now(UTC))

    async def _show_in_prefect(
        self, ref: dict[str, str], spec: schedule_api.PipelineScheduleSpec
    ) -> str | None:
        """The schedule's Prefect deployment (upserted once per change, per operator
        process); None when Prefect cannot be reached now. Runs are made either way."""
        pipeline = self._catalog[spec.template.spec.pipeline]
        request = reconcile.desired_schedule_deployment(
            ref["namespace"],
            ref["name"],
            spec,
            self._settings,
            pipeline.entrypoint,
            pipeline.flow_name,
            pipeline.parameter_schema,
        )
        try:
            return await self._gateway.ensure_deployment(request)
        except (PrefectUnavailable, PrefectRejected) as exc:
            log.warning(
                "schedule %s/%s: not shown in Prefect: %s", ref["namespace"], ref["name"], exc
            )
            return None

    async def forget_in_prefect(self, deployment_id: str | None, name: str) -> None:
        """Delete a deleted schedule's deployment (its flow runs stay). A busy answer (503
        of a locked SQLite) is asked again; Prefect being away leaves it, paused, rather than
        keep the schedule from going."""
        if not deployment_id:
            return
        for retry in range(CREATE_BUSY_RETRIES + 1):
            try:
                await self._gateway.delete_deployment(deployment_id)
                return
            except PrefectBusy as exc:  # a locked SQLite answers again within moments
                if retry == CREATE_BUSY_RETRIES:
                    log.warning("schedule %s: its Prefect deployment stays: %s", name, exc)
                    return
                await asyncio.sleep(busy_retry_delay(retry))
            except (PrefectUnavailable, PrefectRejected) as exc:
                log.warning("schedule %s: its Prefect deployment stays: %s", name, exc)
                return

    async def _create(
        self,
        body: Mapping[str, Any],
        spec: schedule_api.PipelineScheduleSpec,
        plan: schedules.Plan,
        ref: dict[str, str],
    ) -> tuple[str, bool]:
        """Make the run due at ``plan.create_for``: a message, and whether it exists now."""
        due = plan.create_for
        assert due is not None
        run = schedules.run_object(dict(body), spec, due)
        name = run["metadata"]["name"]
        try:
            made = await self._kube.create_run(ref["namespace"], run)
        except KubeApiError as exc:
            message = f"could not make the run {name} due at {_iso(due)}: {exc}"
            await self._event(ref, "Warning", "FailedCreate", message)
            return message[:2000], False
        if made:
            plan.active.append(name)
            await self._event(ref, "Normal", "RunCreated", f"made {name} for {_iso(due)}")
            return f"made {name} for {_iso(due)}", True
        # made by an earlier look whose status write was lost, or a run of the same name that
        # is not this schedule's: either way the time is not run twice
        return f"{name} for {_iso(due)} already exists", True

    async def _event(self, ref: dict[str, str], type_: str, reason: str, message: str) -> None:
        """Post an Event once per schedule and message: a look every few seconds must not
        repeat one."""
        said = self._said.setdefault(ref["uid"], set())
        if message in said:
            return
        said.add(message)
        if len(said) > 200:  # bounded: an old message may be said again
            said.clear()
            said.add(message)
        await self._kube.post_event(ref, type_, reason, message)


def _already(status: dict[str, Any], patch: dict[str, Any]) -> bool:
    """Whether merge-patching ``patch`` into ``status`` would change nothing."""
    return all(
        (key not in status) if value is None else status.get(key) == value
        for key, value in patch.items()
    )


def _condition(type_: str, ok: bool, reason: str, message: str, now: datetime) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": _iso(now),
    }


def _keep_transition_times(
    status: schedule_api.PipelineScheduleStatus, conditions: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """A condition whose status did not change keeps its time of transition."""
    before = {c.type: c for c in status.conditions}
    for condition in conditions:
        old = before.get(condition["type"])
        if old is not None and old.status == condition["status"] and old.last_transition_time:
            condition["lastTransitionTime"] = _iso(old.last_transition_time)
    return conditions


def _iso(value: datetime | None) -> str | None:
    return schedules.format_time(value) if value else None
