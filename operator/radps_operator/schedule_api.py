"""The PipelineSchedule API (radps.io/v1alpha1): a PipelineRun made on a cron schedule, as a
CronJob makes Jobs. The models generate its CRD (:mod:`radps_operator.crd`) as api.py's
generate PipelineRun's; :mod:`radps_operator.schedules` decides when a run is due.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from radps_operator.api import (
    DNS_LABEL_PATTERN,
    Condition,
    PipelineRunSpec,
    SpecModel,
    WireModel,
)

KIND = "PipelineSchedule"
PLURAL = "pipelineschedules"
SINGULAR = "pipelineschedule"
SHORT_NAMES = ("psched",)

MAX_NAME_LENGTH = 52
"""A schedule's runs are named ``<schedule>-<minutes since 1970>`` (11 characters after the
name until the year 5000), which must stay a 63-character DNS label: CronJob's limit too."""
MAX_HISTORY = 100

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""The macros a CronJob's schedule accepts, as the five fields they stand for."""


def cron_fields(schedule: str) -> str:
    """The five cron fields of ``schedule`` (a macro expanded), or ValueError saying why it
    is no schedule."""
    from cronsim import CronSim, CronSimError

    text = " ".join(schedule.split())
    if text.upper().startswith(("TZ=", "CRON_TZ=")):
        raise ValueError("a time zone goes in spec.timeZone, not in the schedule")
    text = MACROS.get(text.lower(), text)
    if len(text.split()) != 5:
        raise ValueError(
            "must be five cron fields (minute hour day-of-month month day-of-week, e.g. "
            f"'0 3 * * *') or one of {', '.join(MACROS)}"
        )
    try:
        CronSim(text, datetime(2026, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"not a cron schedule: {exc}") from None
    return text


def _check_schedule(value: str) -> str:
    cron_fields(value)
    return value


def _check_time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            "not a time zone of the IANA database, e.g. UTC or Europe/Amsterdam"
        ) from None
    return value


ConcurrencyPolicy = Literal["Allow", "Forbid", "Replace"]
ALLOW, FORBID, REPLACE = "Allow", "Forbid", "Replace"


class RunTemplateMeta(SpecModel):
    """What of a run's metadata the schedule sets (its name it makes itself)."""

    labels: dict[str, str] | None = Field(default=None, description="Labels of each run.")
    annotations: dict[str, str] | None = Field(default=None, description="Annotations of each run.")


class PipelineRunTemplate(SpecModel):
    """The PipelineRun each due time makes."""

    metadata: RunTemplateMeta | None = Field(default=None, description="Its labels, annotations.")
    spec: PipelineRunSpec = Field(description="Its spec, checked as a PipelineRun's.")


class PipelineScheduleSpec(SpecModel):
    """When to run, and what. Every field may change; a change applies from the next time."""

    schedule: Annotated[str, AfterValidator(_check_schedule)] = Field(
        description="Cron schedule: five fields (minute hour day-of-month month day-of-week) "
        "or @hourly, @daily, @weekly, @monthly, @yearly.",
        min_length=1,
        max_length=200,
    )
    time_zone: Annotated[str, AfterValidator(_check_time_zone)] | None = Field(
        default=None,
        max_length=64,
        description="IANA time zone the schedule is read in (default: UTC).",
    )
    suspend: bool = Field(default=False, description="True: make no runs until set false.")
    concurrency_policy: ConcurrencyPolicy = Field(
        default=ALLOW,
        description="When a run is due while an earlier one has not ended: Allow (run both), "
        "Forbid (skip the new one), Replace (delete the earlier one, then run), as CronJob.",
    )
    starting_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="A due time later than this many seconds (the operator was down, or "
        "Forbid held it) is skipped; default: no deadline, and only the latest missed time "
        "runs.",
    )
    successful_runs_history_limit: int = Field(
        default=3, ge=0, le=MAX_HISTORY, description="Completed runs kept (default 3)."
    )
    failed_runs_history_limit: int = Field(
        default=1,
        ge=0,
        le=MAX_HISTORY,
        description="Ended runs kept that did not complete (default 1).",
    )
    template: PipelineRunTemplate = Field(description="The PipelineRun each due time makes.")


class PipelineScheduleStatus(WireModel):
    """What the operator observed and did."""

    model_config = ConfigDict(extra="ignore")

    last_schedule_time: datetime | None = Field(
        default=None, description="The latest due time a run was made (or skipped) for."
    )
    next_schedule_time: datetime | None = Field(default=None, description="The next due time.")
    last_successful_time: datetime | None = Field(
        default=None, description="When the latest of its runs completed."
    )
    active: list[str] = Field(default_factory=list, description="Its runs not yet ended.")
    active_count: int | None = Field(default=None, description="How many runs are active.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Valid (the template is a valid PipelineRun) and Scheduling.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    message: str | None = Field(default=None, description="Latest human-readable message.")
    prefect_deployment_id: str | None = Field(
        default=None,
        description="The Prefect deployment that shows the schedule (paused) and holds its "
        "runs' flow runs.",
    )
    observed_generation: int | None = Field(
        default=None, description="The spec generation this status is about."
    )
    kopf: dict[str, Any] | None = Field(
        default=None,
        description="The operator's own bookkeeping (handler progress); not for users.",
    )


class ScheduleMeta(BaseModel):
    """The part of metadata radps reads; everything else passes through untouched."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[
        str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH, pattern=DNS_LABEL_PATTERN)
    ] = Field(description="Schedule name: a DNS label of at most 52 characters.")
    namespace: str | None = None
    uid: str | None = None


class PipelineSchedule(WireModel):
    """PipelineRuns made on a cron schedule, as a CronJob makes Jobs."""

    api_version: Literal["radps.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["PipelineSchedule"]
    metadata: ScheduleMeta
    spec: PipelineScheduleSpec
    status: PipelineScheduleStatus | None = None


def parse_status(raw: dict[str, Any] | None) -> PipelineScheduleStatus:
    """The status as written, an unreadable one as empty (it is rebuilt from the runs)."""
    try:
        return PipelineScheduleStatus.model_validate(raw or {})
    except ValueError:
        return PipelineScheduleStatus()
