"""The operator's pure decisions: spec -> Prefect requests, Prefect flow run -> status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from radps_operator import api
from radps_operator import reconcile as r
from radps_operator.settings import OperatorSettings, SettingsError

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SETTINGS = OperatorSettings(prefect_ui_url="http://ui:4200", default_image="radps:9")


def spec(**fields) -> api.PipelineRunSpec:
    return api.PipelineRunSpec.model_validate({"pipeline": "synthesize", **fields})


def snap(state_type, name=None, message=None, **kw) -> r.FlowRunSnapshot:
    return r.FlowRunSnapshot(
        id="fr-1", name="run-a", state_type=state_type, state_name=name, state_message=message, **kw
    )


def to_status(previous=None, *snapshots, outputs=None) -> api.PipelineRunStatus:
    status = previous or api.PipelineRunStatus()
    for s in snapshots:
        status = r.status_from_flow_run(
            status, s, now=NOW, settings=SETTINGS, work_pool="radps", outputs=outputs
        )
    return status


def test_flow_run_request_carries_identity_image_resources_and_dask_env():
    s = spec(
        parameters={"output": "/x"},
        image="radps:1.2",
        dask={"workers": 3, "threadsPerWorker": 2},
        resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    )
    req = r.desired_flow_run("ns", "run-a", "uid-1", s, SETTINGS)
    assert (req.name, req.idempotency_key, req.parameters) == ("run-a", "uid-1", {"output": "/x"})
    jv = req.job_variables
    assert jv["image"] == "radps:1.2" and jv["namespace"] == "ns"
    assert jv["service_account_name"] == "radps-flow"
    assert (jv["cpu_request"], jv["memory_request"], jv["memory_limit"]) == ("500m", "1Gi", "2Gi")
    assert "cpu_limit" not in jv
    assert jv["env"]["RADPS_RUN_UID"] == "uid-1" and jv["env"]["RADPS_RUN_NAME"] == "run-a"
    assert jv["env"]["MALLOC_ARENA_MAX"] == "1"  # blocks reuse freed memory from the start
    assert jv["env"]["RADPS_DASK_WORKERS"] == "3"
    assert jv["env"]["RADPS_DASK_THREADS_PER_WORKER"] == "2"
    assert jv["labels"][r.RUN_UID_LABEL] == "uid-1"
    assert req.retries == 0
    assert r.desired_flow_run("ns", "run-a", "uid-1", spec(retries=2), SETTINGS).retries == 2
    rerun = spec(parameters={"output": "/x"}, cache="Refresh", fromStage="calibration")
    assert r.desired_flow_run("ns", "b", "uid-2", rerun, SETTINGS).parameters == {
        "output": "/x",
        "cache": "Refresh",
        "from_stage": "calibration",
    }


def test_one_deployment_per_pipeline_image_and_pool():
    a = r.desired_deployment(spec(), SETTINGS, "m:f", "synthesize", {})
    b = r.desired_deployment(spec(image="radps:9"), SETTINGS, "m:f", "synthesize", {})
    c = r.desired_deployment(spec(image="reg.io/radps:10"), SETTINGS, "m:f", "synthesize", {})
    # Prefect keys deployments by (flow, name): another pool must get another name, or the
    # shared deployment moves to whichever pool upserted last (runs started on the wrong pool).
    d = r.desired_deployment(spec(workPool="gpu"), SETTINGS, "m:f", "synthesize", {})
    assert a.name == b.name != c.name
    assert d.name != a.name and d.work_pool == "gpu"
    assert a.image == "radps:9" and a.work_pool == "radps"
    name = r.deployment_name("imaging", "reg.io/x/radps:0.1.0", "radps")
    assert name.startswith("imaging-radps-0-1-0-radps-")


def test_happy_path_statuses():
    started = NOW - timedelta(seconds=133)
    s = to_status(None, snap("SCHEDULED", "Scheduled"))
    assert s.phase == "Scheduled" and s.conditions[0].status == "Unknown"
    assert s.prefect.url == "http://ui:4200/runs/flow-run/fr-1"
    s = to_status(
        s,
        snap(
            "RUNNING",
            "Running",
            start_time=started,
            labels={"radps.io/progress-completed": "1", "radps.io/progress-total": "3"},
        ),
    )
    assert (s.phase, s.progress.summary, s.duration, s.completion_time) == (
        "Running",
        "1/3",
        "2m13s",
        None,
    )
    rows = [{"name": "image", "uri": "/o/image.fits", "kind": "fits"}]
    s = to_status(s, snap("COMPLETED", "Completed", start_time=started, end_time=NOW), outputs=rows)
    cond = r.get_condition(s, r.SUCCEEDED)
    assert (s.phase, cond.status, cond.reason) == ("Completed", "True", "Completed")
    assert s.completion_time == NOW and s.outputs[0].uri == "/o/image.fits"
    assert s.cache is None
    done = snap("COMPLETED", "Completed", labels={"radps.io/cache": "conversion=hit,flagging=miss"})
    assert to_status(s, done).cache == {"conversion": "hit", "flagging": "miss"}
    # the flow's last progress label may land after Completed: a Completed run is all done
    assert s.progress.summary == "3/3"
    # a stale, out-of-order Running read never undoes a finished status
    assert to_status(s, snap("RUNNING", "Running")) == s


@pytest.mark.parametrize(
    ("state_type", "name", "message", "phase", "status", "reason"),
    [
        ("SCHEDULED", "Late", None, "Scheduled", "Unknown", "Late"),
        ("SCHEDULED", "AwaitingRetry", None, "Scheduled", "Unknown", "AwaitingRetry"),
        ("PENDING", "Pending", None, "Pending", "Unknown", "Pending"),
        ("FAILED", "Failed", "InputDataError: no such MS", "Failed", "False", "Failed"),
        ("CRASHED", "Crashed", "exit code 137", "Crashed", "False", "Crashed"),
        ("FAILED", "TimedOut", "Flow run exceeded timeout", "TimedOut", "False", "TimedOut"),
        ("CANCELLING", "Cancelling", None, "Cancelling", "Unknown", "Cancelling"),
        ("CANCELLED", "Cancelled", "by user", "Cancelled", "False", "Cancelled"),
        ("PAUSED", "Paused", None, "Paused", "Unknown", "Paused"),
        ("PAUSED", "Suspended", None, "Paused", "Unknown", "Suspended"),
    ],
)
def test_phase_mapping(state_type, name, message, phase, status, reason):
    s = to_status(None, snap(state_type, name, message))
    cond = r.get_condition(s, r.SUCCEEDED)
    assert (s.phase, cond.status, cond.reason) == (phase, status, reason)
    if name == "Late":
        assert "no worker" in s.message and "radps" in s.message
    elif message:
        assert s.message == message == cond.message
    assert (s.completion_time is not None) == (status != "Unknown")


def test_scheduled_past_its_start_is_late_without_prefects_late_service():
    on_time = snap("SCHEDULED", "Scheduled", expected_start_time=NOW - timedelta(seconds=5))
    overdue = snap("SCHEDULED", "Scheduled", expected_start_time=NOW - timedelta(seconds=16))
    assert r.get_condition(to_status(None, on_time), r.SUCCEEDED).reason == "Scheduled"
    late = to_status(None, overdue)
    assert r.get_condition(late, r.SUCCEEDED).reason == "Late" and "no worker" in late.message
    running = snap("RUNNING", "Running", expected_start_time=NOW - timedelta(hours=1))
    assert r.get_condition(to_status(None, running), r.SUCCEEDED).reason == "Running"


def test_crashed_without_message_says_infrastructure():
    assert "infrastructure" in to_status(None, snap("CRASHED", "Crashed")).message


def test_operator_timeout_stays_timed_out_through_cancellation():
    s = to_status(None, snap("RUNNING", "Running", start_time=NOW))
    s = r.timed_out_status(s, 10, NOW)
    assert s.phase == "TimedOut" and not r.is_finished(s)
    s = to_status(s, snap("CANCELLING", "Cancelling"))
    assert s.phase == "TimedOut" and s.completion_time is None
    # a stale read from before the cancel (the create handler's snapshot) does not undo it
    s = to_status(s, snap("SCHEDULED", "Scheduled"))
    assert s.phase == "TimedOut" and s.completion_time is None
    s = to_status(s, snap("CANCELLED", "Cancelled", end_time=NOW))
    cond = r.get_condition(s, r.SUCCEEDED)
    assert (s.phase, cond.status, cond.reason) == ("TimedOut", "False", "TimedOut")
    assert r.is_finished(s) and "timeoutSeconds" in s.message


def test_condition_transition_time_moves_only_on_status_change():
    later = NOW + timedelta(seconds=5)
    conds = r.set_condition([], "X", "Unknown", "A", None, NOW)
    conds = r.set_condition(conds, "X", "Unknown", "B", "m", later)
    assert conds[0].last_transition_time == NOW and conds[0].reason == "B"
    conds = r.set_condition(conds, "X", "True", "C", None, later)
    assert conds[0].last_transition_time == later and len(conds) == 1


def test_invalid_reachability_patch_and_events():
    s = r.invalid_spec_status(api.PipelineRunStatus(), "spec.parameters.x: unknown", NOW, 1)
    cond = r.get_condition(s, r.SUCCEEDED)
    assert (s.phase, cond.reason, r.is_finished(s)) == ("Failed", "InvalidSpec", True)
    assert r.phase_event(None, s)[0:2] == ("Warning", "Failed")
    down = r.reachability_status(s, False, "connection refused", NOW)
    assert r.get_condition(down, r.PREFECT_REACHABLE).status == "False"
    patch = r.status_patch(s, down)
    assert list(patch) == ["conditions"] and len(patch["conditions"]) == 2
    assert r.status_patch(down, down) is None
    assert r.phase_event(s, down) is None


def test_deadlines():
    s = to_status(None, snap("RUNNING", "Running", start_time=NOW))
    assert r.timeout_deadline(spec(timeoutSeconds=30), s, None) == NOW + timedelta(seconds=30)
    assert r.timeout_deadline(spec(), s, NOW) is None
    assert r.ttl_deadline(spec(ttlSecondsAfterFinished=5), s) is None
    done = to_status(s, snap("COMPLETED", "Completed", end_time=NOW))
    assert r.ttl_deadline(spec(ttlSecondsAfterFinished=5), done) == NOW + timedelta(seconds=5)
    assert r.timeout_deadline(spec(timeoutSeconds=30), done, None) is None


def test_parse_status_ignores_kopf_bookkeeping():
    raw = {"phase": "Running", "kopf": {"progress": {}}}
    assert r.parse_status(raw).phase == "Running"


def test_durations():
    assert [r.format_duration(x) for x in (5, 133, 3840, 90000)] == ["5s", "2m13s", "1h4m", "1d1h"]


def test_settings_from_env(tmp_path):
    auth = tmp_path / "auth"
    auth.write_text("admin:pw\n")
    s = OperatorSettings.from_env(
        {
            "RADPS_PREFECT_API_URL": "http://p:4200/api/",
            "RADPS_PREFECT_AUTH_STRING_FILE": str(auth),
            "RADPS_WATCH_NAMESPACES": "a, b",
            "RADPS_FLOW_SERVICE_ACCOUNT": "",
            "RADPS_PREFECT_MAX_CONCURRENT_CALLS": "3",
        }
    )
    assert s.prefect_max_concurrent_calls == 3
    assert OperatorSettings.from_env({}).prefect_max_concurrent_calls == 8
    assert (s.prefect_api_url, s.prefect_ui_url, s.prefect_auth_string) == (
        "http://p:4200/api",
        "http://p:4200",
        "admin:pw",
    )
    assert s.namespaces == ("a", "b") and not s.clusterwide and s.flow_service_account is None
    assert OperatorSettings.from_env({}).clusterwide
    with pytest.raises(SettingsError, match="RADPS_RESYNC_SECONDS"):
        OperatorSettings.from_env({"RADPS_RESYNC_SECONDS": "soon"})


@pytest.mark.parametrize(
    ("code", "kind"), [(503, "PrefectBusy"), (429, "PrefectBusy"), (500, "PrefectUnavailable")]
)
def test_overloaded_prefect_is_busy_not_down(code, kind):
    import httpx

    from radps_operator.prefect_gateway import _unavailable

    request = httpx.Request("POST", "http://prefect/api/flow_runs/")
    error = httpx.HTTPStatusError("x", request=request, response=httpx.Response(code))
    assert _unavailable(error).__name__ == kind
    refused = httpx.HTTPStatusError("x", request=request, response=httpx.Response(409))
    assert _unavailable(refused) is None
    assert _unavailable(httpx.ConnectError("refused")).__name__ == "PrefectUnavailable"


@pytest.mark.parametrize(
    ("code", "rejected"),
    [(404, True), (422, True), (400, True), (409, False), (401, False), (403, False)],
)
def test_a_terminal_prefect_answer_is_a_rejection_with_its_words(code, rejected):
    import httpx

    from radps_operator.prefect_gateway import _rejection, _unavailable

    request = httpx.Request("POST", "http://prefect/api/deployments/")
    response = httpx.Response(code, json={"detail": "Work pool 'nope' not found."})
    error = httpx.HTTPStatusError("x", request=request, response=response)
    words = _rejection(error) if _unavailable(error) is None else None
    assert (words == f"{code}: Work pool 'nope' not found.") is rejected


def test_dask_status_from_the_daskcluster():
    cluster = {
        "metadata": {"name": "radps-abc", "namespace": "ns", "labels": {r.RUN_UID_LABEL: "u"}},
        "spec": {"worker": {"replicas": 3}},
    }
    d = r.dask_status(cluster)
    assert (d.cluster, d.workers) == ("radps-abc", 3)
    assert d.dashboard_url == "http://radps-abc-scheduler.ns.svc:8787/status"


# --- bounded lifecycle (issue 12) --------------------------------------------------------------


def _pod(name="run-a-xyz", *, waiting=None, terminated=None, last=None, unschedulable=False, **st):
    container = {"name": "prefect-job", "state": {}}
    if waiting:
        container["state"]["waiting"] = {"reason": waiting, "message": f"{waiting} details"}
    if terminated:
        container["state"]["terminated"] = {"reason": terminated, "exitCode": 137}
    if last:
        container["lastState"] = {"terminated": {"reason": last, "exitCode": 137}}
    conditions = []
    if unschedulable:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available: 1 Insufficient memory."}
        )  # fmt: skip
    return {
        "metadata": {"name": name},
        "status": {"containerStatuses": [container], "conditions": conditions, **st},
    }


def test_start_deadline_fails_a_run_that_never_runs_and_stays_failed():
    created = NOW - timedelta(seconds=100)
    pending = to_status(None, snap("SCHEDULED", "Late"))
    assert r.start_deadline(spec(), pending, created, 900) == created + timedelta(seconds=900)
    assert r.start_deadline(spec(startDeadlineSeconds=60), pending, created, 900) == (
        created + timedelta(seconds=60)
    )
    running = to_status(pending, snap("RUNNING", "Running", start_time=NOW))
    assert r.start_deadline(spec(startDeadlineSeconds=60), running, created, 900) is None
    failed = r.start_deadline_status(pending, 60, NOW)
    cond = r.get_condition(failed, r.SUCCEEDED)
    assert (failed.phase, cond.status, cond.reason) == ("Failed", "False", "StartDeadlineExceeded")
    assert "no worker has started the flow run yet" in failed.message  # the last known reason
    # the Cancelled that follows the operator's own cancel does not turn it into Cancelled
    after = to_status(failed, snap("CANCELLED", "Cancelled", end_time=NOW))
    assert after.phase == "Failed" and r.has_operator_verdict(after)


def test_a_pod_that_can_never_start_fails_the_run_with_its_reason():
    running = to_status(None, snap("PENDING", "Pending"))
    problems = r.pod_problems([_pod(waiting="ImagePullBackOff")])
    assert [(p.reason, p.fatal) for p in problems] == [("ImagePullBackOff", True)]
    failed = r.pods_status(running, problems, NOW)
    assert (failed.phase, r.get_condition(failed, r.SUCCEEDED).reason) == (
        "Failed",
        "ImagePullBackOff",
    )
    pods = r.get_condition(failed, r.PODS_HEALTHY)
    assert (pods.status, pods.reason) == ("False", "ImagePullBackOff")
    assert "pod run-a-xyz container prefect-job: ImagePullBackOff details" in pods.message


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (_pod(waiting="ErrImagePull"), "ErrImagePull"),
        (_pod(waiting="CreateContainerConfigError"), "CreateContainerConfigError"),
        (_pod(unschedulable=True), "Unschedulable"),
        (_pod(terminated="OOMKilled"), "OOMKilled"),
        (_pod(last="OOMKilled"), "OOMKilled"),
        (_pod(reason="Evicted", message="The node was low on memory."), "Evicted"),
    ],
)
def test_pod_reasons_are_surfaced_without_failing_a_run_that_may_recover(pod, reason):
    running = to_status(None, snap("RUNNING", "Running", start_time=NOW))
    status = r.pods_status(running, r.pod_problems([pod]), NOW)
    assert status.phase == "Running"
    assert r.get_condition(status, r.PODS_HEALTHY).reason == reason
    # when Prefect then reports the crash, the status says why
    crashed = to_status(status, snap("CRASHED", "Crashed", message="Job failed"))
    assert crashed.phase == "Crashed" and f"{reason}:" in crashed.message
    healthy = r.pods_status(status, [], NOW)
    assert r.get_condition(healthy, r.PODS_HEALTHY).status == "True"


def test_a_seen_flow_pod_is_remembered_in_the_status():
    """An operator restarted later still knows the run's pod existed, so a Running run whose
    pod has since gone is lost rather than Running for ever."""
    running = to_status(None, snap("RUNNING", "Running", start_time=NOW))
    assert r.pods_status(running, [], NOW) is running and not r.pods_seen(running)
    seen = r.pods_status(running, [], NOW, flow_pod="run-abcde-x1")
    condition = r.get_condition(seen, r.PODS_HEALTHY)
    assert (condition.status, condition.message) == ("True", "flow-run pod run-abcde-x1")
    assert r.pods_seen(seen)
    later = r.pods_status(seen, [], NOW)  # the pod listing is empty now: the name stays
    assert r.get_condition(later, r.PODS_HEALTHY).message == "flow-run pod run-abcde-x1"
    assert r.status_patch(seen, later) is None


def test_a_lost_flow_run_crashes_the_run_for_good():
    running = to_status(None, snap("RUNNING", "Running", start_time=NOW))
    lost = r.lost_status(running, "flow run fr-1 no longer exists in Prefect", NOW)
    cond = r.get_condition(lost, r.SUCCEEDED)
    assert (lost.phase, cond.reason, r.is_finished(lost)) == ("Crashed", "FlowRunLost", True)
    assert to_status(lost, snap("CANCELLED", "Cancelled")).phase == "Crashed"


def test_the_job_deadline_backs_up_the_timeout():
    assert r.active_deadline_seconds(spec(), 900) is None
    assert r.active_deadline_seconds(spec(timeoutSeconds=60), 900) == 960
    assert r.active_deadline_seconds(spec(timeoutSeconds=60, startDeadlineSeconds=30), 900) == 90
    variables = r.job_variables("ns", "run-a", "uid-1", spec(timeoutSeconds=60), SETTINGS)
    assert variables["active_deadline_seconds"] == 60 + SETTINGS.start_deadline_seconds


def test_the_flow_account_the_operator_makes_carries_the_charts_annotations():
    from radps_operator.flow_identity import identity_objects

    settings = OperatorSettings.from_env(
        {"RADPS_FLOW_SERVICE_ACCOUNT_ANNOTATIONS": '{"eks.amazonaws.com/role-arn": "arn:x"}'}
    )
    annotations = dict(settings.flow_service_account_annotations)
    account, binding = identity_objects("astro", "radps-flow", "radps-flow-run", annotations)
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:x"}
    assert "annotations" not in binding["metadata"]
    assert "annotations" not in identity_objects("astro", "radps-flow", "r")[0]["metadata"]
    with pytest.raises(SettingsError, match="RADPS_FLOW_SERVICE_ACCOUNT_ANNOTATIONS"):
        OperatorSettings.from_env({"RADPS_FLOW_SERVICE_ACCOUNT_ANNOTATIONS": "[1]"})
