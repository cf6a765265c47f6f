"""PipelineSchedules on real parts: a real kube-apiserver (with its garbage collector), a real
Prefect server and process worker running the real flows, and the operator as a real
`radps operator` process, SIGKILLed across a due time.

One test walks three minute boundaries (B1..B3) with two every-minute schedules: `allow`
(its runs complete on the process worker) and `forbid` (its runs stay Scheduled on a pool
without a worker, so one is always active)."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from radps_operator.schedules import SCHEDULE_LABEL, SCHEDULED_TIME_ANNOTATION, run_name
from tests.integration.operator_helpers import (
    GROUP,
    VERSION,
    Runs,
    install_crd,
    operator_env,
    start_operator_process,
)
from tests.integration.prefect_helpers import (  # noqa: F401
    TINY_SYNTH,
    create_process_pool,
    process_worker,
)
from tests.k8s import KubeCluster, wait_until

pytest_plugins = ["tests.k8s"]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def schedules_of(runs: Runs) -> Runs:
    return Runs(runs.custom.api_client, runs.namespace, "PipelineSchedule", "pipelineschedules")


def runs_of(runs: Runs, schedule: str) -> list[dict[str, Any]]:
    found = runs.custom.list_namespaced_custom_object(
        GROUP,
        VERSION,
        runs.namespace,
        "pipelineruns",
        label_selector=f"{SCHEDULE_LABEL}={schedule}",
    )
    return sorted(found["items"], key=lambda r: r["metadata"]["name"])


def prefect_deployment(api_url: str, namespace: str, schedule: str) -> Any:
    """The Prefect deployment that shows a schedule, or None."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import ObjectNotFound

    from radps_flows.catalog import pipelines

    flow = pipelines()["synthesize"].flow_name
    with SyncPrefectClient(api_url) as client:
        try:
            return client.read_deployment_by_name(f"{flow}/schedule-{namespace}-{schedule}")
        except ObjectNotFound:
            return None


def prefect_flow_run(api_url: str, flow_run_id: str) -> Any:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api_url) as client:
        return client.read_flow_run(flow_run_id)


def names(items: list[dict[str, Any]]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


def next_minute(after: datetime) -> datetime:
    return after.replace(second=0, microsecond=0) + timedelta(minutes=1)


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def template(tmp_path: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"team": "imaging"}},
        "spec": {
            "pipeline": "synthesize",
            "parameters": {
                "output": str(tmp_path / f"{name}.ps.zarr"),
                "overwrite": True,
                **TINY_SYNTH,
            },
            "dask": {"workers": 1},
            **extra,
        },
    }


def start_operator(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return start_operator_process(env, log)


def test_schedules_make_one_run_per_due_time_through_a_sigkill(
    kube_cluster: KubeCluster,
    kube_api,
    kube_namespace,
    radps_server,
    process_worker,  # noqa: F811
    tmp_path,
):
    install_crd(kube_cluster)
    runs = Runs(kube_api, kube_namespace)
    schedules = schedules_of(runs)
    idle_pool = f"idle-{uuid.uuid4().hex[:6]}"
    create_process_pool(radps_server.api_url, idle_pool)
    env = operator_env(
        kube_cluster,
        radps_server.api_url,
        process_worker.pool,
        RADPS_WATCH_NAMESPACES=kube_namespace,
    )
    log = tmp_path / "operator.log"
    if datetime.now(UTC).second > 40:  # room before B1 for both schedules to be made
        sleep_until(next_minute(datetime.now(UTC)))
    operator = start_operator(env, log)
    try:
        every_minute = {"schedule": "* * * * *", "successfulRunsHistoryLimit": 1}
        schedules.create("allow", **every_minute, template=template(tmp_path, "allow"))
        forbid_template = template(tmp_path, "forbid", workPool=idle_pool)
        schedules.create(
            "forbid", **every_minute, concurrencyPolicy="Forbid", template=forbid_template
        )
        uid = schedules.get("allow")["metadata"]["uid"]
        b1 = next_minute(datetime.now(UTC))
        a1, f1 = run_name("allow", b1), run_name("forbid", b1)

        # B1: each schedule makes its run, named after the due time and owned by it
        wait_until(
            lambda: names(runs_of(runs, "allow")) == [a1] and names(runs_of(runs, "forbid")),
            timeout=(b1 - datetime.now(UTC)).total_seconds() + 30,
            interval=1,
            what="the runs due at B1",
            describe=lambda: log.read_text()[-3000:],
        )
        made = runs.get(a1)
        assert made["metadata"]["labels"] == {"team": "imaging", SCHEDULE_LABEL: "allow"}
        assert made["metadata"]["annotations"][SCHEDULED_TIME_ANNOTATION] == _iso(b1)
        owner = made["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("PipelineSchedule", uid, True)
        assert names(runs_of(runs, "forbid")) == [f1]
        runs.wait_phase(a1, "Completed", timeout=90)
        shown = prefect_deployment(radps_server.api_url, kube_namespace, "allow")
        assert shown is not None and shown.paused
        assert [(x.active, x.schedule.cron) for x in shown.schedules] == [(False, "* * * * *")]
        assert shown.parameters["output"] == str(tmp_path / "allow.ps.zarr")
        flow_run = prefect_flow_run(radps_server.api_url, runs.status(a1)["prefect"]["flowRunId"])
        assert flow_run.deployment_id == shown.id and "schedule:allow" in flow_run.tags
        status = wait_until(
            lambda: (
                (s := schedules.get("allow").get("status") or {}).get("lastSuccessfulTime") and s
            ),
            timeout=40,
            interval=1,
            what="allow's status to show its completed run",
        )
        assert status["lastScheduleTime"] == _iso(b1)
        assert status["nextScheduleTime"] == _iso(b1 + timedelta(minutes=1))
        assert status["active"] == [] and status["activeCount"] == 0
        table = kube_cluster.kubectl("get", "psched", "-n", kube_namespace).stdout
        header, *lines = table.splitlines()
        assert header.split() == ["NAME", "SCHEDULE", "SUSPEND", "ACTIVE", "LAST", "NEXT", "AGE"]
        assert any(line.split()[:2] == ["forbid", "*"] for line in lines), table

        # SIGKILL before B2, back after it: exactly one run for B2, none for B1 again
        b2 = b1 + timedelta(minutes=1)
        sleep_until(b2 - timedelta(seconds=5))
        operator.send_signal(signal.SIGKILL)
        operator.wait(10)
        sleep_until(b2 + timedelta(seconds=10))
        assert names(runs_of(runs, "allow")) == [a1]  # nobody made it meanwhile
        operator = start_operator(env, log)
        a2 = run_name("allow", b2)
        wait_until(
            lambda: a2 in names(runs_of(runs, "allow")),
            timeout=45,
            interval=1,
            what="the run due at B2 after the restart",
            describe=lambda: log.read_text()[-3000:],
        )
        runs.wait_phase(a2, "Completed", timeout=90)
        # history: one completed run kept, so a1 goes
        wait_until(
            lambda: names(runs_of(runs, "allow")) == [a2],
            timeout=45,
            interval=1,
            what="a1 deleted by the history limit",
        )
        # Forbid: f1 is still active, so nothing for B2, and an Event says why
        assert names(runs_of(runs, "forbid")) == [f1]
        wait_until(
            lambda: any(e[1] == "RunAlreadyActive" for e in runs.events("forbid")),
            timeout=30,
            what="forbid's RunAlreadyActive event",
        )
        forbid_status = schedules.get("forbid")["status"]
        assert forbid_status["active"] == [f1] and forbid_status["lastScheduleTime"] == _iso(b1)

        # Replace (a change is looked at at once): f1 goes, and the unmet B2 runs now
        schedules.patch_spec("forbid", concurrencyPolicy="Replace")
        f2 = run_name("forbid", b2)
        wait_until(
            lambda: names(runs_of(runs, "forbid")) == [f2],
            timeout=60,
            interval=1,
            what="f1 replaced by the run due at B2",
        )

        # suspend: nothing at B3
        schedules.patch_spec("allow", suspend=True)
        wait_until(
            lambda: _condition(schedules.get("allow"), "Suspended") == "True",
            timeout=30,
            what="allow suspended",
        )
        b3 = b2 + timedelta(minutes=1)
        sleep_until(b3 + timedelta(seconds=15))
        assert names(runs_of(runs, "allow")) == [a2]
        assert "nextScheduleTime" not in schedules.get("allow")["status"]

        # a deleted schedule's runs are garbage collected (the operator deletes f2's flow run)
        schedules.delete("allow")
        schedules.delete("forbid")
        wait_until(
            lambda: not runs_of(runs, "allow") and not runs_of(runs, "forbid"),
            timeout=120,
            interval=1,
            what="the schedules' runs to be garbage collected",
        )
        wait_until(
            lambda: prefect_deployment(radps_server.api_url, kube_namespace, "allow") is None,
            timeout=30,
            what="the schedule's Prefect deployment deleted",
        )
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait(10)
    log_text = log.read_text()
    assert "Traceback" not in log_text, log_text[-4000:]


def test_an_invalid_template_is_reported_on_the_schedule(
    kube_cluster, kube_api, kube_namespace, radps_server, tmp_path
):
    install_crd(kube_cluster)
    runs = Runs(kube_api, kube_namespace)
    schedules = schedules_of(runs)
    env = operator_env(
        kube_cluster, radps_server.api_url, "unused", RADPS_WATCH_NAMESPACES=kube_namespace
    )
    bad = template(tmp_path, "bad")
    bad["spec"]["parameters"]["n_antennas"] = 1
    log = tmp_path / "operator.log"
    operator = start_operator(env, log)
    try:
        schedules.create("bad", schedule="* * * * *", template=bad)
        status = wait_until(
            lambda: (s := schedules.get("bad").get("status") or {}).get("message") and s,
            timeout=30,
            interval=1,
            what="the schedule's verdict",
            describe=lambda: log.read_text()[-3000:],
        )
        assert "spec.template.spec.parameters.n_antennas" in status["message"]
        assert _condition(schedules.get("bad"), "Valid") == "False"
        assert any(e[1] == "InvalidSpec" for e in runs.events("bad"))
        schedules.delete("bad")
        wait_until(lambda: not schedules.exists("bad"), timeout=30, what="bad deleted")
    finally:
        operator.send_signal(signal.SIGTERM)
        operator.wait(30)
    assert runs.names() == []


def _condition(schedule: dict[str, Any], type_: str) -> str | None:
    for condition in (schedule.get("status") or {}).get("conditions", []):
        if condition["type"] == type_:
            return condition["status"]
    return None


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
