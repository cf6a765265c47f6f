"""A PipelineSchedule on the installed chart: `kubectl apply` of an every-minute schedule, its
runs made by the operator with the chart's RBAC and completed on the node, `kubectl get
psched` showing it, and its runs gone with it. The rules themselves (Forbid, Replace,
suspend, a SIGKILLed operator) are tests/integration/test_schedules.py's."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from radps_operator.schedules import SCHEDULE_LABEL, run_name
from tests.e2e.release import RUNS_NAMESPACE, get, why_not_completed
from tests.k8s import KubeCluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.k8s_full]


def test_an_every_minute_schedule_makes_a_run_per_minute(
    kube_cluster: KubeCluster, installed: Path
):
    schedule = {
        "apiVersion": "radps.io/v1alpha1",
        "kind": "PipelineSchedule",
        "metadata": {"name": "every-minute"},
        "spec": {
            "schedule": "* * * * *",  # Allow: a run that takes over a minute overlaps the next
            "successfulRunsHistoryLimit": 2,
            "template": {
                "spec": {
                    "pipeline": "synthesize",
                    "parameters": {
                        "output": "/data/products/every-minute.ps.zarr",
                        "overwrite": True,
                        "n_antennas": 4,
                        "n_times": 2,
                        "n_channels": 2,
                    },
                    "dask": {"workers": 1},
                }
            },
        },
    }
    now = datetime.now(UTC)
    if now.second > 45:  # the first due time must come after the schedule exists
        time.sleep(62 - now.second)
    kube_cluster.kubectl("apply", "-n", RUNS_NAMESPACE, "-f", "-", input=yaml.safe_dump(schedule))
    first = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    due = [first + timedelta(minutes=i) for i in range(3)]
    try:
        for moment in due:
            name = run_name("every-minute", moment)
            wait_until(
                lambda name=name: name in _runs(kube_cluster),
                timeout=(moment - datetime.now(UTC)).total_seconds() + 45,
                interval=2,
                what=f"the run due at {moment:%H:%M}",
                describe=lambda: get(kube_cluster, "psched", "every-minute").get("status"),
            )
            wait_until(
                lambda name=name: (
                    (get(kube_cluster, "prun", name).get("status") or {}).get("phase")
                    in ("Completed", "Failed", "Crashed", "TimedOut")
                ),
                timeout=120,
                interval=2,
                what=f"{name} to end",
            )
            phase = get(kube_cluster, "prun", name)["status"]["phase"]
            if phase != "Completed":
                pytest.fail(why_not_completed(kube_cluster, name))
        # one run per due time, none twice; the oldest gone with the history limit of 2
        wait_until(
            lambda: _runs(kube_cluster) == sorted(run_name("every-minute", m) for m in due[1:]),
            timeout=60,
            interval=2,
            what="the two newest runs kept",
            describe=lambda: _runs(kube_cluster),
        )
        table = kube_cluster.kubectl("get", "psched", "-n", RUNS_NAMESPACE).stdout
        assert table.split()[:7] == ["NAME", "SCHEDULE", "SUSPEND", "ACTIVE", "LAST", "NEXT", "AGE"]
    finally:
        kube_cluster.kubectl(
            "delete", "psched", "every-minute", "-n", RUNS_NAMESPACE, "--ignore-not-found"
        )
    wait_until(
        lambda: not _runs(kube_cluster),
        timeout=120,
        interval=2,
        what="the schedule's runs to be garbage collected",
    )


def _runs(cluster: KubeCluster) -> list[str]:
    found = get(cluster, "prun", "-l", f"{SCHEDULE_LABEL}=every-minute")["items"]
    return sorted(r["metadata"]["name"] for r in found)
