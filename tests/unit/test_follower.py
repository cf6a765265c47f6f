"""The follower's decisions, without Kubernetes or Prefect: which flow runs to read after
which events, what status patch a read gives, and which deadline has passed. The loop that
carries them out against the real servers is tested in tests/integration/test_operator*.py
and tests/e2e/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from radps_operator import api
from radps_operator import reconcile as r
from radps_operator.follower import Deadline, Follower, Tracked
from radps_operator.kube import Kube
from radps_operator.prefect_gateway import PrefectGateway
from radps_operator.settings import OperatorSettings

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def follower() -> Follower:
    """Never started: its gateway and Kubernetes client are made but never connected."""
    settings = OperatorSettings(cancel_grace_seconds=60, start_deadline_seconds=900)
    return Follower(settings, PrefectGateway("http://prefect.invalid/api"), Kube())


def _run(uid: str, flow_run_id: str | None = None, **spec: object) -> Tracked:
    return Tracked(
        namespace="astro",
        name=f"run-{uid}",
        uid=uid,
        spec=api.PipelineRunSpec(pipeline="imaging", parameters={}, **spec),
        status=api.PipelineRunStatus(),
        created=NOW - timedelta(seconds=30),
        generation=1,
        work_pool="radps",
        flow_run_id=flow_run_id,
    )


def _snapshot(flow_run_id: str, state: str, name: str, **labels: str) -> r.FlowRunSnapshot:
    return r.FlowRunSnapshot(
        id=flow_run_id,
        name="fr",
        state_type=state,
        state_name=name,
        start_time=NOW - timedelta(seconds=5) if state != "SCHEDULED" else None,
        labels=dict(labels),
    )


def test_events_name_the_flow_runs_to_read_and_a_resync_reads_the_unfinished(follower):
    a, b, c = _run("a", "fr-a"), _run("b", "fr-b"), _run("c")
    for run in (a, b, c):
        follower.track(run)
    follower.flow_run_changed("fr-a", "Running")
    follower.flow_run_changed("fr-unknown", "Running")  # not ours
    assert follower.reads_due(everything=False) == ["fr-a"]
    assert follower.reads_due(everything=False) == []  # read once
    b.status = b.status.model_copy(update={"phase": api.Phase.COMPLETED, "completion_time": NOW})
    assert follower.reads_due(everything=True) == ["fr-a"]  # b finished, c has no flow run
    follower.record_flow_run(c, "fr-c")
    follower.flow_run_changed("fr-c")
    assert follower.reads_due(everything=False) == ["fr-c"]


def test_a_resync_reads_a_bounded_batch_longest_unread_first(follower, monkeypatch):
    """Many live runs are resynced a batch per pass, in turn, so each is read again within
    a bounded number of passes; what events named is read at once on top of the batch."""
    from radps_operator import follower as follower_module

    monkeypatch.setattr(follower_module, "RESYNC_BATCH", 2)
    for name in "abcde":
        follower.track(_run(name, f"fr-{name}"))
    passes = [sorted(follower.reads_due(everything=True, clock=t)) for t in (1.0, 2.0, 3.0)]
    assert passes[0] == ["fr-a", "fr-b"] and passes[1] == ["fr-c", "fr-d"]
    assert passes[2] == ["fr-a", "fr-e"]  # the last unread, then the longest unread again
    follower.flow_run_changed("fr-a", "Running")  # just read, but an event names it
    fourth = follower.reads_due(everything=True, clock=4.0)
    assert fourth[0] == "fr-a" and sorted(fourth[1:]) in (["fr-b", "fr-c"], ["fr-b", "fr-d"])
    assert {i for p in passes for i in p} == {f"fr-{n}" for n in "abcde"}


def test_an_event_repeating_what_the_status_shows_is_not_read_again(follower):
    run = follower.track(_run("a", "fr-a"))
    run.status = follower.next_status(run, _snapshot("fr-a", "SCHEDULED", "Scheduled"), now=NOW)
    follower.flow_run_changed("fr-a", "Scheduled")
    assert follower.reads_due(everything=False) == []
    follower.flow_run_changed("fr-a", "Pending")
    assert follower.reads_due(everything=False) == ["fr-a"]


def test_a_read_becomes_a_status_patch(follower):
    run = follower.track(_run("a", "fr-a"))
    snapshot = _snapshot(
        "fr-a",
        "RUNNING",
        "Running",
        **{"radps.io/progress-completed": "1", "radps.io/progress-total": "3"},
    )
    new = follower.next_status(run, snapshot, now=NOW)
    patch = r.status_patch(run.status, new)
    assert patch is not None
    assert patch["phase"] == "Running"
    assert patch["progress"]["summary"] == "1/3"
    assert patch["prefect"]["flowRunId"] == "fr-a"
    assert patch["prefect"]["url"].endswith("/runs/flow-run/fr-a")
    run.status = new
    assert r.status_patch(run.status, follower.next_status(run, snapshot, now=NOW)) is None


def test_after_prefect_was_unreachable_the_next_read_says_reachable_again(follower):
    run = follower.track(_run("a", "fr-a"))
    run.status = r.reachability_status(run.status, False, "connection refused", NOW)
    new = follower.next_status(run, _snapshot("fr-a", "RUNNING", "Running"), now=NOW)
    condition = r.get_condition(new, r.PREFECT_REACHABLE)
    assert condition is not None and condition.status == "True"


def test_deadlines(follower):
    never_started = _run("a", "fr-a")
    never_started.created = NOW - timedelta(seconds=901)
    assert follower.deadline_due(never_started, NOW, clock=0) is Deadline.START

    timed = _run("b", "fr-b", timeout_seconds=60)
    timed.status = timed.status.model_copy(
        update={"phase": api.Phase.RUNNING, "start_time": NOW - timedelta(seconds=61)}
    )
    assert follower.deadline_due(timed, NOW, clock=0) is Deadline.TIMEOUT

    finished = _run("c", "fr-c", ttl_seconds_after_finished=10)
    finished.status = finished.status.model_copy(
        update={"phase": api.Phase.COMPLETED, "start_time": NOW, "completion_time": NOW}
    )
    assert follower.deadline_due(finished, NOW, clock=0) is None
    assert follower.deadline_due(finished, NOW + timedelta(seconds=10), clock=0) is Deadline.TTL


def test_a_cancellation_gets_its_grace_counted_from_when_it_was_seen(follower):
    run = _run("a", "fr-a")
    run.status = run.status.model_copy(
        update={"phase": api.Phase.CANCELLING, "start_time": NOW - timedelta(hours=1)}
    )
    assert follower.deadline_due(run, NOW, clock=1000.0) is None  # first seen now
    assert follower.deadline_due(run, NOW, clock=1059.0) is None
    assert follower.deadline_due(run, NOW, clock=1060.0) is Deadline.CANCEL_GRACE
    run.status = run.status.model_copy(update={"phase": api.Phase.RUNNING})
    assert follower.deadline_due(run, NOW, clock=2000.0) is None
    assert run.cancelling_since is None  # a new cancellation starts its own grace
