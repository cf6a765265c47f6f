"""Prometheus metrics, the liveness endpoint's server, and structured JSON logs."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

RUNS_BY_PHASE = Gauge(
    "radps_pipelineruns", "PipelineRuns followed by this operator, by phase", ["phase"]
)
RECONCILE_SECONDS = Histogram(
    "radps_reconcile_seconds",
    "Time to handle one PipelineRun event (create, cancel, delete)",
    ["handler"],
    buckets=_LATENCY_BUCKETS,
)
STATUS_LAG_SECONDS = Histogram(
    "radps_status_lag_seconds",
    "From a Prefect flow-run state change to the PipelineRun status showing it",
    buckets=_LATENCY_BUCKETS,
)
PREFECT_CALL_SECONDS = Histogram(
    "radps_prefect_api_seconds",
    "Prefect API calls by operation",
    ["operation"],
    buckets=_LATENCY_BUCKETS,
)
PREFECT_SLOT_WAIT_SECONDS = Histogram(
    "radps_prefect_api_wait_seconds",
    "Time a Prefect API call waited for one of the operator's concurrent-call slots",
    buckets=_LATENCY_BUCKETS,
)
PREFECT_API_ERRORS = Counter(
    "radps_prefect_api_errors_total",
    "Prefect API calls that failed to reach Prefect",
    ["operation"],
)
PREFECT_EVENTS = Counter("radps_prefect_events_total", "Flow-run events received from Prefect")
PREFECT_REACHABLE = Gauge("radps_prefect_reachable", "1 when the Prefect API answers")
STATUS_PATCHES = Counter("radps_status_patches_total", "PipelineRun status patches written")
FLOW_RUNS_CREATED = Counter("radps_flow_runs_created_total", "Flow runs created (or found)")

_server_started = False


def start_metrics_server(port: int) -> None:
    """Serve /metrics on `port` (0: no server); idempotent within a process."""
    global _server_started
    if port and not _server_started:
        start_http_server(port)
        _server_started = True


def set_phase_counts(counts: dict[str, int]) -> None:
    from radps_operator.api import Phase

    for phase in Phase:
        RUNS_BY_PHASE.labels(phase.value).set(counts.get(phase.value, 0))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `namespace`/`name` come from kopf's object loggers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        k8s = getattr(record, "k8s_ref", None)
        if isinstance(k8s, dict):
            entry["namespace"] = k8s.get("namespace")
            entry["name"] = k8s.get("name")
        for key in ("uid", "flow_run_id"):  # `name` would be the logger's: not an extra
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "websockets", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
