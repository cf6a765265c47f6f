"""The operator's observability: JSON log lines carry the run, metrics are exposed by name."""

from __future__ import annotations

import json
import logging

from prometheus_client import generate_latest

from radps_operator import metrics


def test_json_log_line_names_the_object():
    record = logging.LogRecord(
        "kopf.objects", logging.INFO, __file__, 1, "Handler %s", ("x",), None
    )
    record.k8s_ref = {"namespace": "radps", "name": "j1008"}
    line = json.loads(metrics.JsonFormatter().format(record))
    assert line["message"] == "Handler x" and line["level"] == "INFO"
    assert (line["namespace"], line["name"]) == ("radps", "j1008")


def test_metrics_are_exposed():
    metrics.set_phase_counts({"Running": 3})
    metrics.PREFECT_API_ERRORS.labels("read_flow_runs").inc()
    text = generate_latest().decode()
    assert 'radps_pipelineruns{phase="Running"} 3.0' in text
    assert 'radps_pipelineruns{phase="Completed"} 0.0' in text
    for name in (
        "radps_reconcile_seconds",
        "radps_status_lag_seconds",
        "radps_prefect_api_errors_total",
    ):
        assert name in text
