"""The pure parts of the cluster CLI (radps_operator.kube_runs); its calls are
tests/integration/test_cli_cluster.py's and tests/e2e/test_mission.py's."""

from __future__ import annotations

from datetime import UTC, datetime

from radps_operator.kube_runs import age, log_time_key, rerun_manifest, summary_row

RUN = {
    "apiVersion": "radps.io/v1alpha1",
    "kind": "PipelineRun",
    "metadata": {
        "name": "n" * 63,
        "namespace": "science",
        "uid": "1234",
        "labels": {"team": "imaging", "kopf.zalando.org/state": "x"},
        "annotations": {"kopf.zalando.org/last-handled-configuration": "{}"},
        "creationTimestamp": "2026-12-01T10:00:00Z",
    },
    "spec": {"pipeline": "imaging", "parameters": {"niter": 100, "imsize": 512}, "cancel": True},
    "status": {"phase": "Cancelled"},
}


def test_a_rerun_keeps_the_spec_and_labels_and_drops_what_the_run_became():
    document = rerun_manifest(RUN, {"niter": 2000, "gain": 0.05})
    assert document["metadata"] == {"generateName": "n" * 57 + "-", "labels": {"team": "imaging"}}
    assert document["spec"] == {
        "pipeline": "imaging",
        "parameters": {"niter": 2000, "imsize": 512, "gain": 0.05},
        "rerunOf": "n" * 63,
    }
    assert "status" not in document
    assert RUN["spec"]["cancel"] is True and RUN["spec"]["parameters"]["niter"] == 100  # a copy
    assert len(document["metadata"]["generateName"]) + 5 <= 63  # a DNS label with its suffix


def test_a_rerun_from_a_stage_names_it_and_drops_the_earlier_runs_own():
    earlier = {**RUN, "spec": {**RUN["spec"], "fromStage": "calibration", "cache": "Refresh"}}
    document = rerun_manifest(earlier, None, "imaging")
    assert document["spec"]["fromStage"] == "imaging" and document["spec"]["cache"] == "Refresh"
    assert rerun_manifest(earlier)["spec"].get("fromStage") is None


def test_kubelet_timestamps_sort_as_time_whatever_their_fraction():
    stamps = [
        "2026-12-01T10:00:00Z",
        "2026-12-01T10:00:00.05Z",
        "2026-12-01T10:00:00.1Z",
        "2026-12-01T10:00:00.123456789Z",
        "2026-12-01T10:00:01.000000001Z",
    ]
    assert sorted(stamps, key=log_time_key) == stamps
    assert sorted(stamps[::-1], key=log_time_key) == stamps


def test_age_and_a_list_line_read_as_kubectl_s():
    now = datetime(2026, 12, 1, 12, 30, tzinfo=UTC)
    assert [age(t, now) for t in ("2026-12-01T12:29:18Z", "2026-12-01T12:00:00Z")] == ["42s", "30m"]
    assert age("2026-11-28T12:30:00Z", now) == "3d" and age(None, now) == "-"
    row = summary_row(
        {
            **RUN,
            "status": {
                "phase": "Completed",
                "startTime": "2026-12-01T10:00:05Z",
                "completionTime": "2026-12-01T10:02:05.5Z",
                "progress": {"completed": 2, "total": 3},
            },
        }
    )
    assert row["state"] == "Completed" and row["progress"] == "2/3"
    assert row["duration_s"] == 120.5 and row["namespace"] == "science"
    assert summary_row({"metadata": {"name": "new"}})["state"] == "Pending"
