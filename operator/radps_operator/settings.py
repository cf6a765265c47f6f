"""Operator configuration, all from the environment (the Helm chart sets these).

| variable | default | meaning |
|---|---|---|
| `RADPS_PREFECT_API_URL` | `$PREFECT_API_URL` or `http://radps-prefect-server:4200/api` | API |
| `RADPS_PREFECT_UI_URL` | the API URL without `/api` | base of `.status.prefect.url` |
| `RADPS_PREFECT_AUTH_STRING` | unset | `user:password` for a server behind basic auth |
| `RADPS_PREFECT_AUTH_STRING_FILE` | unset | file holding that string (a mounted Secret key) |
| `RADPS_DEFAULT_IMAGE` | `radps:<version>` | image of runs whose spec names none |
| `RADPS_ALLOWED_IMAGES` | `radps` | images a spec may name (see `image_policy`), a comma list |
| `RADPS_WORK_POOL` | `radps` | work pool of runs whose spec names none |
| `RADPS_FLOW_SERVICE_ACCOUNT` | `radps-flow` | service account of the flow-run pod ("" for none) |
| `RADPS_FLOW_CLUSTER_ROLE` | unset | made per namespace: that account, bound to this role |
| `RADPS_AUTH_SECRET` | unset | with that role: this Secret, holding the auth string, too |
| `RADPS_AUTH_SECRET_KEY` | `auth-string` | the key of that Secret |
| `RADPS_RUN_NETWORK_POLICY` | `false` | `true`: each run gets its NetworkPolicy (`run_network`) |
| `RADPS_WATCH_NAMESPACES` | `*` (all) | namespaces watched: `*`, one name, or a comma list |
| `RADPS_RESYNC_SECONDS` | `5` | period of the full re-read of every unfinished run |
| `RADPS_PREFECT_MAX_CONCURRENT_CALLS` | `8` | Prefect API calls in flight at once |
| `RADPS_METRICS_PORT` | `9090` | Prometheus `/metrics` (0: off) |
| `RADPS_HEALTH_PORT` | `8080` | liveness `/healthz` (0: off) |
| `RADPS_LOG_FORMAT` | `json` | `json` or `text` |
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from radps_flows import contract
from radps_operator import __version__, image_policy

DEFAULT_API_URL = "http://radps-prefect-server:4200/api"
ALL_NAMESPACES = "*"


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class OperatorSettings:
    prefect_api_url: str = DEFAULT_API_URL
    prefect_ui_url: str = "http://radps-prefect-server:4200"
    prefect_auth_string: str | None = None
    default_image: str = f"radps:{__version__}"
    allowed_images: tuple[str, ...] = image_policy.DEFAULT
    work_pool: str = "radps"
    flow_service_account: str | None = "radps-flow"
    flow_cluster_role: str | None = None
    """Set: the operator creates the flow service account, bound to this, per namespace."""
    flow_service_account_annotations: tuple[tuple[str, str], ...] = ()
    """Annotations of the flow service account it creates (a cloud identity, for one)."""
    auth_secret: str | None = None
    """Set (with flow_cluster_role and an auth string): the Secret of the Prefect credential
    the operator copies into each namespace, where flow-run pods read it."""
    auth_secret_key: str = "auth-string"
    run_network_policy: bool = False
    """Make each run's NetworkPolicy (the chart's default-deny policies need it)."""
    namespaces: tuple[str, ...] = ()
    """Empty: every namespace (cluster-wide)."""
    resync_seconds: float = 5.0
    start_deadline_seconds: int = 900
    """Default of spec.startDeadlineSeconds: a run not running by then fails with the reason."""
    cancel_grace_seconds: float = 60.0
    """How long a flow run may stay Cancelling (its worker stopping the Job) before the
    operator ends it as Cancelled and removes the Job itself: a worker that is gone, or that
    never recorded the Job, never completes the cancellation."""
    prefect_max_concurrent_calls: int = 8
    metrics_port: int = 9090
    health_port: int = 8080
    log_format: str = "json"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def flow_run_url(self, flow_run_id: object) -> str:
        return contract.flow_run_url(self.prefect_ui_url, flow_run_id)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> OperatorSettings:
        def get(name: str, default: str) -> str:
            value = environ.get(name)
            return default if value is None else value.strip()

        def number(name: str, default: float, kind: type = float) -> float:
            raw = get(name, str(default))
            try:
                return kind(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a number") from None

        api_url = get("RADPS_PREFECT_API_URL", "") or get("PREFECT_API_URL", "") or DEFAULT_API_URL
        api_url = api_url.rstrip("/")
        ui_url = get("RADPS_PREFECT_UI_URL", "") or api_url.removesuffix("/api")
        auth = get("RADPS_PREFECT_AUTH_STRING", "") or None
        auth_file = get("RADPS_PREFECT_AUTH_STRING_FILE", "")
        if auth_file:
            try:
                auth = Path(auth_file).read_text().strip() or None
            except OSError as exc:
                raise SettingsError(f"RADPS_PREFECT_AUTH_STRING_FILE: {exc}") from None
        namespaces_raw = get("RADPS_WATCH_NAMESPACES", ALL_NAMESPACES)
        namespaces = tuple(
            n.strip() for n in namespaces_raw.split(",") if n.strip() and n.strip() != "*"
        )
        if ALL_NAMESPACES in [n.strip() for n in namespaces_raw.split(",")]:
            namespaces = ()
        log_format = get("RADPS_LOG_FORMAT", "json")
        if log_format not in ("json", "text"):
            raise SettingsError(f"RADPS_LOG_FORMAT={log_format!r}: use json or text")
        return cls(
            prefect_api_url=api_url,
            prefect_ui_url=ui_url,
            prefect_auth_string=auth,
            default_image=get("RADPS_DEFAULT_IMAGE", "") or cls.default_image,
            allowed_images=image_policy.from_env(environ),
            work_pool=get("RADPS_WORK_POOL", "") or cls.work_pool,
            flow_service_account=get("RADPS_FLOW_SERVICE_ACCOUNT", "radps-flow") or None,
            flow_cluster_role=get("RADPS_FLOW_CLUSTER_ROLE", "") or None,
            flow_service_account_annotations=_annotations(
                get("RADPS_FLOW_SERVICE_ACCOUNT_ANNOTATIONS", "")
            ),
            auth_secret=get("RADPS_AUTH_SECRET", "") or None,
            auth_secret_key=get("RADPS_AUTH_SECRET_KEY", "") or cls.auth_secret_key,
            run_network_policy=get("RADPS_RUN_NETWORK_POLICY", "false").lower() == "true",
            namespaces=namespaces,
            resync_seconds=max(0.5, number("RADPS_RESYNC_SECONDS", 5.0)),
            start_deadline_seconds=max(
                1, int(number("RADPS_START_DEADLINE_SECONDS", cls.start_deadline_seconds, int))
            ),
            cancel_grace_seconds=max(1.0, number("RADPS_CANCEL_GRACE_SECONDS", 60.0)),
            prefect_max_concurrent_calls=max(
                1, int(number("RADPS_PREFECT_MAX_CONCURRENT_CALLS", 8, int))
            ),
            metrics_port=int(number("RADPS_METRICS_PORT", 9090, int)),
            health_port=int(number("RADPS_HEALTH_PORT", 8080, int)),
            log_format=log_format,
        )


def _annotations(text: str) -> tuple[tuple[str, str], ...]:
    """A JSON object of string values (the chart's flowRuns.serviceAccount.annotations)."""
    if not text.strip():
        return ()
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"RADPS_FLOW_SERVICE_ACCOUNT_ANNOTATIONS is not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise SettingsError("RADPS_FLOW_SERVICE_ACCOUNT_ANNOTATIONS: a JSON object of strings")
    return tuple(sorted((str(k), v) for k, v in value.items()))
