"""When a PipelineSchedule makes a run (radps_operator.schedules): CronJob's rules, checked
on hand-worked times; and what `radps validate` says of a schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from radps_operator.schedule_api import PipelineScheduleSpec, cron_fields
from radps_operator.schedules import (
    SCHEDULE_LABEL,
    SCHEDULED_TIME_ANNOTATION,
    TOO_MANY_MISSED,
    OwnedRun,
    due_times,
    owned_by,
    plan,
    run_name,
    run_object,
)
from radps_operator.validation import InvalidPipelineRun, validate_schedule_manifest

T0 = datetime(2026, 12, 1, 10, 0, 30, tzinfo=UTC)  # created half a minute past 10:00
TEMPLATE = {
    "metadata": {"labels": {"team": "imaging"}},
    "spec": {
        "pipeline": "synthesize",
        "parameters": {"output": "/data/nightly.ps.zarr", "n_antennas": 4},
    },
}


def spec(**fields) -> PipelineScheduleSpec:
    return PipelineScheduleSpec.model_validate(
        {"schedule": "* * * * *", "template": TEMPLATE, **fields}
    )


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def run(name: str, phase: str | None, minute: float, done: float | None = None) -> OwnedRun:
    return OwnedRun(name, phase, at(minute), at(done) if done is not None else None)


def test_the_first_run_is_due_at_the_first_minute_after_creation():
    assert plan(spec(), "s", T0, None, None, [], at(0.4)).create_for is None
    decided = plan(spec(), "s", T0, None, None, [], at(0.6))
    assert decided.create_for == datetime(2026, 12, 1, 10, 1, tzinfo=UTC)
    assert decided.last_schedule_time == decided.create_for
    assert decided.next_schedule_time == datetime(2026, 12, 1, 10, 2, tzinfo=UTC)
    assert decided.sleep_seconds(at(0.6)) == 30  # looks at its runs at least every 30 s
    assert decided.sleep_seconds(at(1.45)) == pytest.approx(3)  # then wakes at 10:02


def test_a_name_per_due_time_so_a_second_look_makes_nothing_new():
    due = datetime(2026, 12, 1, 10, 1, tzinfo=UTC)
    assert run_name("s", due) == f"s-{int(due.timestamp()) // 60}"
    assert len(run_name("n" * 52, datetime(4999, 12, 31, 23, 59, tzinfo=UTC))) <= 63
    # the run exists but the status write was lost: the time counts as met, no second run
    again = plan(spec(), "s", T0, None, None, [run(run_name("s", due), None, 0.6)], at(0.7))
    assert again.create_for is None and again.last_schedule_time == due
    assert again.active == [run_name("s", due)]


def test_after_an_outage_only_the_latest_missed_time_runs():
    hourly = spec(schedule="@hourly")
    decided = plan(hourly, "s", T0, None, None, [], T0 + timedelta(hours=5, minutes=10))
    assert decided.create_for == datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
    assert not decided.events
    flood = plan(spec(), "s", T0, None, None, [], T0 + timedelta(days=3))
    assert flood.create_for == (T0 + timedelta(days=3)).replace(second=0)
    assert [e[1] for e in flood.events] == ["TooManyMissedTimes"]
    latest, count = due_times("* * * * *", None, T0, T0 + timedelta(days=3))
    assert count == TOO_MANY_MISSED + 1 and latest == flood.create_for


def test_a_deadline_skips_a_time_that_is_too_late():
    late = spec(schedule="@hourly", startingDeadlineSeconds=300)
    assert plan(late, "s", T0, None, None, [], at(60 + 6)).create_for is None
    on_time = plan(late, "s", T0, None, None, [], at(60 + 4))
    assert on_time.create_for == datetime(2026, 12, 1, 11, 0, tzinfo=UTC)


def test_forbid_waits_for_the_active_run_and_replace_deletes_it():
    active = [run("s-1", "Running", 0.6)]
    last = datetime(2026, 12, 1, 10, 1, tzinfo=UTC)
    forbid = plan(spec(concurrencyPolicy="Forbid"), "s", T0, last, None, active, at(1.6))
    assert forbid.create_for is None and forbid.last_schedule_time == last
    assert forbid.events[0][1] == "RunAlreadyActive" and "s-1" in forbid.events[0][2]
    # as CronJob: the unmet time runs once the active run has ended, if no deadline says no
    ended = [run("s-1", "Completed", 0.6, done=1.8)]
    after = plan(spec(concurrencyPolicy="Forbid"), "s", T0, last, None, ended, at(1.9))
    assert after.create_for == datetime(2026, 12, 1, 10, 2, tzinfo=UTC)
    strict = spec(concurrencyPolicy="Forbid", startingDeadlineSeconds=30)
    assert (
        plan(strict, "s", T0, last, None, ended, at(2.4)).create_for is None
    )  # 10:02 is 54 s late

    replace = plan(spec(concurrencyPolicy="Replace"), "s", T0, last, None, active, at(1.6))
    assert replace.delete == ["s-1"] and replace.active == []
    assert replace.create_for == datetime(2026, 12, 1, 10, 2, tzinfo=UTC)
    allow = plan(spec(), "s", T0, last, None, active, at(1.6))
    assert allow.create_for is not None and allow.delete == [] and allow.active == ["s-1"]


def test_suspend_makes_nothing_and_history_limits_keep_the_newest():
    runs = [run(f"ok-{i}", "Completed", i, done=i + 0.5) for i in range(5)]
    runs += [run(f"bad-{i}", phase, 10 + i) for i, phase in enumerate(["Failed", "TimedOut"])]
    runs += [run("cancelled", "Cancelled", 20), run("going", "Running", 21)]
    decided = plan(spec(suspend=True), "s", T0, None, None, runs, at(30))
    assert decided.create_for is None and decided.next_schedule_time is None
    assert sorted(decided.delete) == ["bad-0", "bad-1", "ok-0", "ok-1"]  # 3 ok, 1 failed kept
    assert decided.active == ["going"]
    assert decided.last_successful_time == at(4.5)
    none_kept = spec(successfulRunsHistoryLimit=0, failedRunsHistoryLimit=0)
    assert len(plan(none_kept, "s", T0, None, None, runs, at(30)).delete) == 8


def test_a_time_zone_moves_the_due_times_with_summer_time():
    nightly = spec(schedule="0 3 * * *", timeZone="Europe/Amsterdam")
    winter = plan(nightly, "s", T0, None, None, [], datetime(2026, 12, 2, 2, 30, tzinfo=UTC))
    assert winter.create_for == datetime(2026, 12, 2, 2, 0, tzinfo=UTC)  # 03:00 CET
    july = datetime(2027, 7, 1, 0, 0, tzinfo=UTC)
    summer = plan(nightly, "s", july, None, None, [], july + timedelta(hours=1, minutes=30))
    assert summer.create_for == datetime(2027, 7, 1, 1, 0, tzinfo=UTC)  # 03:00 CEST


def test_the_run_is_the_template_owned_by_the_schedule():
    schedule = {
        "metadata": {"name": "nightly", "namespace": "science", "uid": "u-1"},
        "spec": {"schedule": "* * * * *", "template": TEMPLATE},
    }
    due = datetime(2026, 12, 1, 10, 1, tzinfo=UTC)
    made = run_object(schedule, spec(), due)
    assert made["metadata"]["name"] == run_name("nightly", due)
    assert made["metadata"]["labels"] == {"team": "imaging", SCHEDULE_LABEL: "nightly"}
    assert made["metadata"]["annotations"] == {SCHEDULED_TIME_ANNOTATION: "2026-12-01T10:01:00Z"}
    assert made["spec"] == TEMPLATE["spec"]  # as written: no defaults filled in
    assert owned_by(made, "u-1") and not owned_by(made, "u-2")


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ("*/5 * * * *", "*/5 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("  0   3 * * 1-5 ", "0 3 * * 1-5"),
    ],
)
def test_cron_schedules_as_a_cronjob_reads_them(schedule, expected):
    assert cron_fields(schedule) == expected


@pytest.mark.parametrize(
    ("schedule", "why"),
    [
        ("0 0 * * * *", "five cron fields"),
        ("@reboot", "five cron fields"),
        ("61 * * * *", "not a cron schedule"),
        ("TZ=UTC 0 3 * * *", "spec.timeZone"),
    ],
)
def test_what_is_no_schedule_says_why(schedule, why):
    with pytest.raises(ValueError, match=why):
        cron_fields(schedule)


def test_radps_validate_checks_the_template_as_a_pipelinerun():
    document = {
        "apiVersion": "radps.io/v1alpha1",
        "kind": "PipelineSchedule",
        "metadata": {"name": "n" * 53},
        "spec": {
            "schedule": "0 25 * * *",
            "timeZone": "Mars/Olympus",
            "concurrencyPolicy": "Sometimes",
            "template": {
                "spec": {"pipeline": "synthesize", "parameters": {"n_antennas": -1, "x": 1}}
            },
        },
    }
    with pytest.raises(InvalidPipelineRun) as invalid:
        validate_schedule_manifest(document)
    fields = {e.field for e in invalid.value.errors}
    assert {
        "metadata.name",
        "spec.schedule",
        "spec.timeZone",
        "spec.concurrencyPolicy",
        "spec.template.spec.parameters.n_antennas",
        "spec.template.spec.parameters.x",
    } <= fields, invalid.value.errors
    good = {**document, "metadata": {"name": "nightly"}}
    good["spec"] = {"schedule": "@daily", "template": TEMPLATE}
    assert validate_schedule_manifest(good).spec.concurrency_policy == "Allow"


def test_the_shipped_schedule_example_is_valid(capsys):
    from radps_operator.cli import main

    examples = sorted((Path(__file__).parents[2] / "manifests/examples/schedules").glob("*.yaml"))
    assert examples
    for example in examples:
        assert main(["validate", str(example)]) == 0, capsys.readouterr().err
        assert "valid PipelineSchedule" in " ".join(capsys.readouterr().out.split())
    # -p sets the template's parameters, as it sets a run's
    assert main(["validate", str(examples[0]), "-p", "imsize=-3"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "spec.template.spec.parameters.imsize" in err


def test_prefect_shows_a_schedule_as_a_paused_deployment_with_its_cron():
    from radps_operator.reconcile import desired_flow_run, desired_schedule_deployment
    from radps_operator.settings import OperatorSettings

    settings = OperatorSettings(default_image="radps:9", work_pool="k8s")
    nightly = spec(schedule="@daily", timeZone="Europe/Amsterdam")
    shown = desired_schedule_deployment(
        "science", "nightly", nightly, settings, "flows:synth", "synthesize", {}
    )
    assert shown.name == "schedule-science-nightly" and shown.paused
    assert (shown.cron, shown.time_zone) == ("0 0 * * *", "Europe/Amsterdam")
    assert (shown.image, shown.work_pool) == ("radps:9", "k8s")
    assert shown.parameters == TEMPLATE["spec"]["parameters"]
    assert {"schedule:nightly", "namespace:science", "radps"} <= set(shown.tags)
    hourly = desired_schedule_deployment(
        "science", "nightly", spec(schedule="@hourly"), settings, "flows:synth", "synthesize", {}
    )
    assert hourly.key != shown.key  # a changed cron is upserted again, not cached
    run = desired_flow_run(
        "science", "nightly-1", "uid", nightly.template.spec, settings, "nightly"
    )
    assert "schedule:nightly" in run.tags


def test_radps_run_says_where_a_schedule_runs(capsys):
    from radps_operator.cli import main

    example = Path(__file__).parents[2] / "manifests/examples/schedules/nightly-vla-imaging.yaml"
    assert main(["run", str(example)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "a PipelineSchedule makes its runs on a cluster" in err


class BusyTwiceGatewayFake:
    """Injects what a real Prefect server on SQLite answers only under load: two 503s (its
    database locked), then the delete goes through."""

    def __init__(self) -> None:
        self.calls = 0

    async def delete_deployment(self, deployment_id: str) -> None:
        from radps_operator.prefect_gateway import PrefectBusy

        self.calls += 1
        if self.calls <= 2:
            raise PrefectBusy("503 Service Unavailable: database is locked")


def test_a_deleted_schedules_deployment_is_deleted_through_busy_answers():
    import asyncio

    from radps_operator.schedule_service import ScheduleService
    from radps_operator.settings import OperatorSettings

    gateway = BusyTwiceGatewayFake()
    settings = OperatorSettings(prefect_ui_url="http://ui:4200", default_image="radps:9")
    service = ScheduleService(None, gateway, settings, {})  # type: ignore[arg-type]
    asyncio.run(service.forget_in_prefect("6d125af9-6f6a-4b06-949f-9f3af1d7217f", "nightly"))
    assert gateway.calls == 3
