"""PipelineRuns on a cluster, for `radps list|get|logs|cancel|rerun --kubeconfig/-n`.

The same commands that read local runs from the local Prefect server read a cluster's
PipelineRuns through the kubeconfig, as kubectl does: the kubeconfig's current context (or
``--context``) and its namespace unless ``-n`` says another. Everything here is what a user
with `get`, `list`, `patch` and `create` on pipelineruns (and `get` on pods/log) may do: the
CLI acts as its user, never as the operator.

- ``cancel`` sets ``spec.cancel``, the one field of a run that may change; the operator does
  the rest (Cancelling, then Cancelled).
- ``rerun`` creates a new PipelineRun with the old one's spec and ``-p`` changes, named
  ``<name>-`` plus five characters by the API server (``metadata.generateName``).
- ``logs`` reads the log of the run's flow pod (the Prefect flow run's pod, which carries the
  run's UID label), the newest if retries made several.

This is a CLI's client, so it uses the generated ``kubernetes`` client; the operator keeps it
out of its own process (:mod:`radps_operator.kube`).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from radps_flows.contract import RUN_UID_LABEL
from radps_operator import api
from radps_operator.local.manifests import as_rerun, named, with_parameters
from radps_operator.validation import validate_manifest

GROUP, VERSION, PLURAL = api.GROUP, api.VERSION, api.PLURAL
FLOW_POD_LABEL = "prefect.io/flow-run-id"
"""Set by Prefect's Kubernetes worker on the flow run's pod; the Dask pods lack it."""
REQUEST_TIMEOUT_S = 30
FOLLOW_POLL_S = 2.0
FOLLOW_READ_TIMEOUT_S = 60
_INTERNAL_LABEL_PREFIXES = ("kopf.zalando.org/",)


class ClusterError(Exception):
    """The cluster cannot be reached or refused a call; the message says which, in words,
    and ``status`` the HTTP status of a refusal."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RunNotFound(ClusterError):
    """No PipelineRun of that name in that namespace."""


@dataclass
class Cluster:
    """A connection to the API server, and the namespace a command means."""

    client: Any  # kubernetes.client.ApiClient
    namespace: str
    server: str

    def close(self) -> None:
        self.client.close()


def connect(
    kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None
) -> Cluster:
    """The cluster of ``kubeconfig`` (default: $KUBECONFIG, else ~/.kube/config, else the
    pod's service account in a pod), in ``namespace`` or the context's (else ``default``)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c["name"] == context), active) if context else active
        default_namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
    except (ConfigException, OSError) as exc:
        if kubeconfig or context:
            raise ClusterError(f"cannot use the kubeconfig: {exc}") from None
        try:  # in a pod without a kubeconfig: its service account, as kubectl does
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            raise ClusterError(
                f"no kubeconfig to reach a cluster ({exc}); pass --kubeconfig or set KUBECONFIG"
            ) from None
        default_namespace = _pod_namespace()
    return Cluster(
        client.ApiClient(configuration), namespace or default_namespace, configuration.host
    )


def _pod_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def _call(cluster: Cluster, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)`` with a bounded wait, its failures as a ClusterError that
    says what was asked and why it failed."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT_S)
    try:
        return call(*args, **kwargs)
    except ApiException as exc:
        raise ClusterError(f"{what}: {_api_message(exc)}", exc.status) from None
    except HTTPError as exc:
        raise ClusterError(
            f"{what}: cannot reach the API server at {cluster.server} ({exc})"
        ) from None


def _api_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return f"{exc.status} {exc.reason}: {message}" if message else f"{exc.status} {exc.reason}"


def _custom(cluster: Cluster) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(cluster.client)


def runs(cluster: Cluster, all_namespaces: bool = False) -> list[dict[str, Any]]:
    """The PipelineRuns of the namespace (or of all), the newest first."""
    custom = _custom(cluster)
    if all_namespaces:
        found = _call(
            cluster, "list PipelineRuns", custom.list_cluster_custom_object, GROUP, VERSION, PLURAL
        )
    else:
        found = _call(
            cluster,
            f"list PipelineRuns in {cluster.namespace}",
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
        )
    items = found.get("items", [])
    return sorted(items, key=lambda r: r["metadata"].get("creationTimestamp") or "", reverse=True)


def get_run(cluster: Cluster, name: str) -> dict[str, Any]:
    """The PipelineRun ``name``; RunNotFound where the namespace has none of that name."""
    try:
        return _call(
            cluster,
            f"get PipelineRun {name}",
            _custom(cluster).get_namespaced_custom_object,
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
            name,
        )
    except ClusterError as exc:
        if exc.status == 404:
            raise RunNotFound(
                f"no PipelineRun named {name!r} in namespace {cluster.namespace!r} "
                f"(`radps list -n {cluster.namespace}` shows them)",
                404,
            ) from None
        raise


def phase_of(run: dict[str, Any]) -> str:
    return (run.get("status") or {}).get("phase") or "Pending"


def summary_row(run: dict[str, Any]) -> dict[str, Any]:
    """A line of `radps list`: the keys of a local run's line, with the namespace and
    progress."""
    status = run.get("status") or {}
    start = api.parse_time(status.get("startTime"))
    end = api.parse_time(status.get("completionTime"))
    progress = status.get("progress") or {}
    return {
        "namespace": run["metadata"].get("namespace"),
        "name": run["metadata"]["name"],
        "pipeline": (run.get("spec") or {}).get("pipeline", "?"),
        "state": phase_of(run),
        "progress": f"{progress.get('completed', 0)}/{progress['total']}"
        if progress.get("total")
        else None,
        "started": status.get("startTime"),
        "duration_s": round((end - start).total_seconds(), 1) if start and end else None,
        "created": run["metadata"].get("creationTimestamp"),
    }


def request_cancel(cluster: Cluster, name: str) -> str:
    """Set the run's ``spec.cancel``; a message saying what happened."""
    run = get_run(cluster, name)
    phase = phase_of(run)
    if phase in api.FINISHED_PHASES:
        return f"{name} has already ended ({phase}): nothing to cancel"
    if (run.get("spec") or {}).get("cancel"):
        return f"{name} is already being cancelled ({phase})"
    _call(
        cluster,
        f"cancel PipelineRun {name}",
        _custom(cluster).patch_namespaced_custom_object,
        GROUP,
        VERSION,
        cluster.namespace,
        PLURAL,
        name,
        {"spec": {"cancel": True}},
    )
    return f"cancelling {name} in {cluster.namespace} (spec.cancel set; it was {phase})"


def request_resume(cluster: Cluster, name: str, answer: dict[str, Any]) -> str:
    """Set the run's ``spec.resume`` to ``answer`` (for the pause it waits at), once it has
    passed the operator's own checks here; a message saying what happened, or
    InvalidPipelineRun with every reason."""
    from radps_operator import pauses
    from radps_operator.validation import InvalidPipelineRun

    run = get_run(cluster, name)
    status = run.get("status") or {}
    waiting = (status.get("input") or {}).get("pause") if phase_of(run) == "Paused" else None
    spec = api.PipelineRunSpec.model_validate(run.get("spec") or {})
    answer = {**answer, "pause": answer.get("pause", waiting)} if waiting else answer
    values, errors = pauses.check_answer(spec.pipeline, spec.flow_parameters(), answer, waiting)
    if errors:
        raise InvalidPipelineRun(errors)
    _call(
        cluster,
        f"resume PipelineRun {name}",
        _custom(cluster).patch_namespaced_custom_object,
        GROUP,
        VERSION,
        cluster.namespace,
        PLURAL,
        name,
        {"spec": {"resume": values}},
    )
    return f"answered pause {waiting} of {name} in {cluster.namespace}: spec.resume set"


def rerun_manifest(
    run: dict[str, Any],
    overrides: dict[str, Any] | None = None,
    from_stage: str | None = None,
) -> dict[str, Any]:
    """A new PipelineRun with ``run``'s spec (not cancelled) and ``overrides`` among its
    parameters, named by the API server from ``<name>-``; its labels kept, not its status or
    the annotations others wrote on it; spec.rerunOf naming ``run``, and spec.fromStage
    ``from_stage``."""
    spec = copy.deepcopy(run.get("spec") or {})
    spec.pop("cancel", None)
    labels = {
        key: value
        for key, value in (run["metadata"].get("labels") or {}).items()
        if not key.startswith(_INTERNAL_LABEL_PREFIXES)
    }
    metadata: dict[str, Any] = {"generateName": f"{run['metadata']['name'][:57]}-"}
    if labels:
        metadata["labels"] = labels
    document = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": metadata, "spec": spec}
    document = as_rerun(document, run["metadata"]["name"], from_stage)
    return with_parameters(document, overrides or {})


def create_rerun(
    cluster: Cluster,
    name: str,
    overrides: dict[str, Any] | None = None,
    from_stage: str | None = None,
) -> str:
    """Create the rerun of ``name`` (from ``from_stage``) after checking it as `radps
    validate` does (the operator checks the image against the cluster's own list); the new
    run's name."""
    document = rerun_manifest(get_run(cluster, name), overrides, from_stage)
    image = document["spec"].get("image")
    # checked with a name of generateName's making, as the API server will make one
    validate_manifest(named(document), allowed_images=(image,) if image else None)
    created = _call(
        cluster,
        f"create the rerun of {name}",
        _custom(cluster).create_namespaced_custom_object,
        GROUP,
        VERSION,
        cluster.namespace,
        PLURAL,
        document,
    )
    return created["metadata"]["name"]


def flow_pods(cluster: Cluster, run: dict[str, Any]) -> list[Any]:
    """The run's flow pods (one per flow-run attempt), the newest first."""
    from kubernetes import client

    selector = f"{RUN_UID_LABEL}={run['metadata']['uid']},{FLOW_POD_LABEL}"
    pods = _call(
        cluster,
        f"list the pods of {run['metadata']['name']}",
        client.CoreV1Api(cluster.client).list_namespaced_pod,
        cluster.namespace,
        label_selector=selector,
    ).items
    return sorted(pods, key=lambda p: p.metadata.creation_timestamp, reverse=True)


class NoLog(ClusterError):
    """The run has no flow pod to read a log from (not yet, or no more)."""


def logs(cluster: Cluster, name: str, *, follow: bool = False) -> Iterator[str]:
    """The lines of the run's flow-pod logs, attempt after attempt; with ``follow``, until
    the run ends (waiting for its pod to start, and moving on to a retry's pod)."""
    done: set[str] = set()  # pods whose log was read to its end
    while True:
        run = get_run(cluster, name)
        unread = [
            p
            for p in reversed(flow_pods(cluster, run))
            if p.metadata.name not in done and p.status.phase != "Pending"
        ]
        if unread:
            pod = unread[0].metadata.name
            yield from _pod_log(cluster, pod, follow)
            done.add(pod)
            continue
        if not follow or phase_of(run) in api.FINISHED_PHASES:
            if not done:
                raise NoLog(_no_log_reason(run))
            return
        time.sleep(FOLLOW_POLL_S)


def _pod_log(cluster: Cluster, pod: str, follow: bool) -> Iterator[str]:
    """The pod's log lines. A followed stream that is silent for FOLLOW_READ_TIMEOUT_S is
    opened again (no wait is unbounded), from a little before its last line, and the lines
    already shown are skipped by their timestamps."""
    from kubernetes import client
    from urllib3.exceptions import ReadTimeoutError

    core = client.CoreV1Api(cluster.client)
    last: tuple[str, set[str]] = ("", set())  # the latest timestamp, and its lines shown
    since: int | None = None
    while True:
        response = _call(
            cluster,
            f"read the log of pod {pod}",
            core.read_namespaced_pod_log,
            pod,
            cluster.namespace,
            follow=follow,
            timestamps=True,
            since_seconds=since,
            _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT_S, FOLLOW_READ_TIMEOUT_S),
        )
        try:
            for line in _lines(response):
                stamp, _, text = line.partition(" ")
                key = log_time_key(stamp)
                if key < last[0] or (key == last[0] and line in last[1]):
                    continue
                last = (key, {line}) if key > last[0] else (key, last[1] | {line})
                yield text
            return
        except ReadTimeoutError:
            since = FOLLOW_READ_TIMEOUT_S + 10


def log_time_key(stamp: str) -> str:
    """An RFC 3339 timestamp as the kubelet writes it (trailing zeros of its fraction
    dropped) as a string that sorts as time does."""
    seconds, _, fraction = stamp.removesuffix("Z").partition(".")
    return f"{seconds}.{fraction:0<9}"


def _lines(response: Any) -> Iterator[str]:
    pending = b""
    try:
        for chunk in response.stream(4096):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode("utf-8", "replace")
        if pending:
            yield pending.decode("utf-8", "replace")
    finally:
        response.release_conn()


def _no_log_reason(run: dict[str, Any]) -> str:
    name = run["metadata"]["name"]
    status = run.get("status") or {}
    phase = phase_of(run)
    url = (status.get("prefect") or {}).get("url")
    where = f"; the Prefect UI keeps its log: {url}" if url else ""
    if phase in api.FINISHED_PHASES:
        return f"{name} has ended ({phase}) and its flow pod is gone{where}"
    return f"{name} has no running flow pod yet ({phase}); `radps logs -f` waits for it"


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl's AGE: 42s, 7m, 3h, 2d."""
    start = api.parse_time(timestamp)
    if start is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - start).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
