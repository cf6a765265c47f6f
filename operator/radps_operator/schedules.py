"""When a PipelineSchedule makes a run: CronJob's rules, as plain functions of the schedule,
its runs and the time.

- The due time considered is the latest one after the last it acted on (or after its
  creation) and not after now. Earlier missed times are not run: after an operator outage
  one run is made, never a flood. ``startingDeadlineSeconds`` skips a due time that is more
  than that late.
- A run's name is the schedule's and the due time's minute (``nightly-29448000``), so making
  it twice (an operator restart between creating it and writing the status) finds the first
  instead: one run per due time.
- ``Forbid`` makes no run while one is active, and leaves the time unmet, so it runs when the
  active one ends, if its deadline allows (as CronJob: set ``startingDeadlineSeconds`` to
  skip it for good). ``Replace`` deletes the active runs first.
- Ended runs beyond the history limits are deleted, the oldest first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from radps_operator import api
from radps_operator.schedule_api import (
    FORBID,
    KIND,
    REPLACE,
    PipelineScheduleSpec,
    cron_fields,
)

SCHEDULE_LABEL = "radps.io/schedule"
"""On each run a schedule makes: the schedule's name."""
SCHEDULED_TIME_ANNOTATION = "radps.io/scheduled-time"
"""On each run a schedule makes: the due time it was made for (RFC 3339, UTC)."""
TOO_MANY_MISSED = 100
LONGEST_SLEEP_S = 30.0
"""The longest a schedule waits between looks at its runs (their status, the history)."""


@dataclass(frozen=True)
class OwnedRun:
    """What a schedule needs of one of its runs."""

    name: str
    phase: str | None
    created: datetime | None
    completion_time: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.phase in api.FINISHED_PHASES

    @classmethod
    def from_object(cls, run: dict[str, Any]) -> OwnedRun:
        status = run.get("status") or {}
        return cls(
            name=run["metadata"]["name"],
            phase=status.get("phase"),
            created=api.parse_time(run["metadata"].get("creationTimestamp")),
            completion_time=api.parse_time(status.get("completionTime")),
        )


@dataclass
class Plan:
    """What one look at a schedule decides."""

    create_for: datetime | None = None
    """The due time to make a run for."""
    delete: list[str] = field(default_factory=list)
    """Active runs to delete first (Replace), then ended ones beyond the history limits."""
    last_schedule_time: datetime | None = None
    next_schedule_time: datetime | None = None
    active: list[str] = field(default_factory=list)
    last_successful_time: datetime | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message) of what happened, for the schedule's Events."""

    def sleep_seconds(self, now: datetime) -> float:
        """How long until the next look: the next due time, at most LONGEST_SLEEP_S."""
        if self.next_schedule_time is None:
            return LONGEST_SLEEP_S
        wait = (self.next_schedule_time - now).total_seconds()
        return min(max(wait, 0.5), LONGEST_SLEEP_S)


def due_times(
    schedule: str, time_zone: str | None, after: datetime, now: datetime
) -> tuple[datetime | None, int]:
    """The latest due time in (``after``, ``now``], and how many there are (counted up to
    TOO_MANY_MISSED + 1)."""
    from cronsim import CronSim

    zone = ZoneInfo(time_zone or "UTC")
    times = CronSim(cron_fields(schedule), after.astimezone(zone))
    latest, count = None, 0
    for due in times:
        if due > now:
            break
        latest, count = due, count + 1
        if count > TOO_MANY_MISSED:  # the rest only to find the latest: jump near now
            return _latest_before(schedule, zone, now), count
    return (latest.astimezone(UTC) if latest else None), count


def _latest_before(schedule: str, zone: ZoneInfo, now: datetime) -> datetime | None:
    from cronsim import CronSim

    latest = None
    for start in (now - timedelta(hours=1), now - timedelta(days=1), now - timedelta(days=366)):
        for due in CronSim(cron_fields(schedule), start.astimezone(zone)):
            if due > now:
                break
            latest = due
        if latest is not None:
            return latest.astimezone(UTC)
    return None


def next_time(schedule: str, time_zone: str | None, after: datetime) -> datetime | None:
    """The first due time after ``after`` (None: never again, e.g. 30 February)."""
    from cronsim import CronSim

    zone = ZoneInfo(time_zone or "UTC")
    try:
        return next(CronSim(cron_fields(schedule), after.astimezone(zone))).astimezone(UTC)
    except StopIteration:
        return None


def run_name(schedule_name: str, due: datetime) -> str:
    """The name of the run for ``due``: the same whoever makes it, however often."""
    return f"{schedule_name}-{int(due.timestamp()) // 60}"


def plan(
    spec: PipelineScheduleSpec,
    name: str,
    created: datetime,
    last_schedule_time: datetime | None,
    last_successful_time: datetime | None,
    runs: Sequence[OwnedRun],
    now: datetime,
) -> Plan:
    """What the schedule does now, given its runs."""
    active = sorted((r for r in runs if not r.finished), key=_age_key)
    result = Plan(
        last_schedule_time=last_schedule_time,
        active=[r.name for r in active],
        last_successful_time=_latest_success(runs, last_successful_time),
    )
    result.delete = _beyond_history(runs, spec)
    if spec.suspend:
        return result
    earliest = last_schedule_time or created
    if spec.starting_deadline_seconds is not None:
        earliest = max(earliest, now - timedelta(seconds=spec.starting_deadline_seconds))
    due, count = due_times(spec.schedule, spec.time_zone, earliest, now)
    result.next_schedule_time = next_time(spec.schedule, spec.time_zone, now)
    if count > TOO_MANY_MISSED:
        result.events.append(
            (
                "Warning",
                "TooManyMissedTimes",
                f"more than {TOO_MANY_MISSED} due times were missed; only the latest runs. "
                "Set or lower spec.startingDeadlineSeconds",
            )
        )
    if due is None:
        return result
    made = run_name(name, due)
    if any(r.name == made for r in runs):  # made before the last status write
        result.last_schedule_time = due
        return result
    if active and spec.concurrency_policy == FORBID:
        result.events.append(
            (
                "Normal",
                "RunAlreadyActive",
                f"not making the run due at {format_time(due)}: {', '.join(result.active)} has not "
                "ended and the concurrency policy is Forbid",
            )
        )
        return result
    if active and spec.concurrency_policy == REPLACE:
        result.delete = [*result.active, *result.delete]
        result.events.append(
            ("Normal", "Replacing", f"deleting {', '.join(result.active)} (policy Replace)")
        )
        result.active = []
    result.create_for = due
    result.last_schedule_time = due
    return result


def run_object(
    schedule: dict[str, Any], spec: PipelineScheduleSpec, due: datetime
) -> dict[str, Any]:
    """The PipelineRun for ``due``: the template's spec as written, owned by the schedule
    (deleting the schedule deletes its runs), labelled with it and the due time."""
    meta = schedule["metadata"]
    raw_template = (schedule.get("spec") or {}).get("template") or {}
    template_meta = spec.template.metadata
    labels = {**((template_meta and template_meta.labels) or {}), SCHEDULE_LABEL: meta["name"]}
    annotations = {
        **((template_meta and template_meta.annotations) or {}),
        SCHEDULED_TIME_ANNOTATION: format_time(due),
    }
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {
            "name": run_name(meta["name"], due),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": api.API_VERSION,
                    "kind": KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": dict(raw_template.get("spec") or {}),
    }


def owned_by(run: Mapping[str, Any], uid: str) -> bool:
    """Whether the schedule of UID ``uid`` made ``run`` (another of the same name, deleted
    and made again, did not)."""
    return any(ref.get("uid") == uid for ref in _schedule_owners(run))


def schedule_of(run: Mapping[str, Any]) -> str | None:
    """The name of the PipelineSchedule that made ``run``, if one did."""
    return next((str(ref.get("name")) for ref in _schedule_owners(run)), None)


def _schedule_owners(run: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [
        ref
        for ref in run["metadata"].get("ownerReferences") or ()
        if ref.get("kind") == KIND and ref.get("controller")
    ]


def _beyond_history(runs: Sequence[OwnedRun], spec: PipelineScheduleSpec) -> list[str]:
    ended = sorted((r for r in runs if r.finished), key=_age_key, reverse=True)
    completed = [r.name for r in ended if r.phase == api.Phase.COMPLETED]
    other = [r.name for r in ended if r.phase != api.Phase.COMPLETED]
    return [
        *completed[spec.successful_runs_history_limit :],
        *other[spec.failed_runs_history_limit :],
    ]


def _latest_success(runs: Sequence[OwnedRun], known: datetime | None) -> datetime | None:
    times = [
        r.completion_time for r in runs if r.phase == api.Phase.COMPLETED and r.completion_time
    ]
    if known is not None:
        times.append(known)
    return max(times, default=None)


def _age_key(run: OwnedRun) -> tuple[datetime, str]:
    return (run.created or datetime.min.replace(tzinfo=UTC), run.name)


def format_time(value: datetime) -> str:
    """A Kubernetes timestamp: RFC 3339 in UTC, to the second."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
