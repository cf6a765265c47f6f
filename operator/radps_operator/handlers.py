"""Thin kopf registrations: each handler turns an object event into calls on the gateway and
the follower. Registered on radps's own registry, never kopf's default one (importing
prefect_kubernetes registers five handlers there; docs/architecture.md)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
import kopf
import uvloop

from radps_operator import api, metrics, pause_service, schedule_api
from radps_operator import reconcile as r
from radps_operator.flow_identity import AuthSecret, FlowIdentities
from radps_operator.follower import Follower, Tracked, utcnow
from radps_operator.kube import Kube, KubeApiError
from radps_operator.kube import login as kube_login
from radps_operator.prefect_gateway import (
    PrefectBusy,
    PrefectGateway,
    PrefectRejected,
    PrefectUnavailable,
    busy_retry_delay,
)
from radps_operator.run_network import ensure_run_network_policy
from radps_operator.schedule_service import ScheduleService
from radps_operator.schedules import schedule_of
from radps_operator.settings import OperatorSettings

registry = kopf.OperatorRegistry()
RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)
SCHEDULE_RESOURCE = (api.GROUP, api.VERSION, schedule_api.PLURAL)
SCHEDULE_RETRY_S = 5.0
FINALIZER = "radps.io/finalizer"

if TYPE_CHECKING:
    from radps_flows.catalog import Pipeline

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: OperatorSettings
    gateway: PrefectGateway
    kube: Kube
    follower: Follower
    schedules: ScheduleService
    identities: FlowIdentities | None = None
    """Set when the operator makes the flow-run service account per namespace (cluster-wide)."""


_runtime: Runtime | None = None


def runtime() -> Runtime:
    if _runtime is None:
        raise kopf.TemporaryError("operator still starting", delay=1)
    return _runtime


def configure(settings: kopf.OperatorSettings) -> None:
    """Status storages (one PATCH per object instead of two; docs/architecture.md), our
    finalizer, no Events for kopf's own handler logs (we post the meaningful ones)."""
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
    settings.persistence.finalizer = FINALIZER
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30


@kopf.on.login(registry=registry)
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    """:func:`radps_operator.kube.login`, the operator's own client's too (kopf's default
    login handlers live in the default registry, which radps does not use)."""
    return kube_login(settings)


DEEP_OBJECT_RECURSION_LIMIT = 25_000
"""The API server admits JSON nested up to 10,000 levels (free-form `spec.parameters` has no
other bound), and kopf decodes and copies each object recursively: with Python's default
limit (1,000) one deep PipelineRun crashed the watcher and stopped the operator serving every
run. Validation then rejects it (radps_operator.plain_json, iterative)."""


@kopf.on.startup(registry=registry)
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _runtime
    sys.setrecursionlimit(max(sys.getrecursionlimit(), DEEP_OBJECT_RECURSION_LIMIT))
    configure(settings)
    config = OperatorSettings.from_env()
    await asyncio.to_thread(_catalog)  # the parameter models' schemas, built once
    metrics.start_metrics_server(config.metrics_port)
    gateway = await PrefectGateway(
        config.prefect_api_url, config.prefect_auth_string, config.prefect_max_concurrent_calls
    ).__aenter__()
    kube = await Kube(settings).__aenter__()
    follower = Follower(config, gateway, kube)
    follower.start()
    identities = None
    if config.flow_cluster_role and config.flow_service_account:
        auth = None
        if config.auth_secret and config.prefect_auth_string:
            auth = AuthSecret(
                config.auth_secret, config.auth_secret_key, config.prefect_auth_string
            )
        identities = FlowIdentities(
            kube,
            config.flow_service_account,
            config.flow_cluster_role,
            auth,
            dict(config.flow_service_account_annotations),
        )
    schedule_service = ScheduleService(kube, gateway, config, _catalog())
    _runtime = Runtime(config, gateway, kube, follower, schedule_service, identities)
    log.info(
        "radps operator: Prefect %s, work pool %s, namespaces %s",
        config.prefect_api_url,
        config.work_pool,
        ",".join(config.namespaces) or "all",
    )


@kopf.on.cleanup(registry=registry)
async def cleanup(**_: Any) -> None:
    global _runtime
    if _runtime is not None:
        rt, _runtime = _runtime, None
        await rt.follower.stop()
        await rt.gateway.__aexit__(None, None, None)
        await rt.kube.__aexit__(None, None, None)


@kopf.on.probe(registry=registry, id="prefect")
async def prefect_probe(**_: Any) -> bool:
    """Shown on the liveness endpoint; Prefect being down does not make the operator dead."""
    return _runtime is not None and await _runtime.gateway.healthy()


def _tracked(body: kopf.Body, spec: api.PipelineRunSpec, status: api.PipelineRunStatus) -> Tracked:
    rt = runtime()
    meta = body["metadata"]
    created = meta.get("creationTimestamp")
    return Tracked(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta["uid"],
        spec=spec,
        status=status,
        created=datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None,
        generation=meta.get("generation"),
        work_pool=spec.work_pool or rt.settings.work_pool,
        flow_run_id=status.prefect.flow_run_id if status.prefect else None,
        flow_pod_seen=r.pods_seen(status),
    )


@functools.cache
def _catalog() -> dict[str, Pipeline]:
    from radps_flows.catalog import pipelines  # light: parameter models, no science stack

    return pipelines()


def _retry_delay(retry: int) -> float:
    return float(min(2 ** min(retry, 5), 30))


@kopf.on.resume(*RESOURCE, registry=registry)
@kopf.on.create(*RESOURCE, registry=registry)
async def ensure_run(body: kopf.Body, retry: int, **_: Any) -> None:
    """Validate, then make sure the run's one flow run exists and is followed. Idempotent:
    the flow run's idempotency key is the object's UID, so a retry or a restart finds the
    same flow run instead of creating another."""
    from radps_operator.validation import InvalidPipelineRun, validate_spec

    started = time.perf_counter()
    rt = runtime()
    status = r.parse_status(dict(body.get("status") or {}))
    raw_spec = dict(body["spec"])
    try:
        spec = validate_spec(raw_spec, _catalog(), rt.settings.allowed_images)
    except InvalidPipelineRun as invalid:
        if status.phase is not None:
            return  # already rejected
        meta = body["metadata"]
        ref = {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}
        message = f"invalid spec: {invalid}"
        new = r.invalid_spec_status(status, message, utcnow(), meta.get("generation"))
        await rt.follower.write_untracked(ref, status, new)
        rt.follower.post_event(ref, "Warning", "InvalidSpec", message)
        return
    run = rt.follower.track(_tracked(body, spec, status))
    if r.is_finished(run.status):
        if spec.ttl_seconds_after_finished is None:
            rt.follower.untrack(run.uid)
        return
    if run.flow_run_id is not None:  # created before (e.g. by a previous operator process)
        rt.follower.flow_run_changed(run.flow_run_id)
        if spec.cancel:
            await _cancel(run, "spec.cancel is true")
        return
    await rt.follower.update(run, lambda s: r.pending_status(s, utcnow(), run.generation))
    await _ensure_flow_identity(run, retry)
    await _ensure_run_network(run, retry)
    info = _catalog()[spec.pipeline]
    deployment = r.desired_deployment(
        spec, rt.settings, info.entrypoint, info.flow_name, info.parameter_schema, info.description
    )
    schedule = schedule_of(body)
    request = r.desired_flow_run(run.namespace, run.name, run.uid, spec, rt.settings, schedule)
    try:
        deployment_id = None
        if schedule is not None:  # its flow run under the schedule's deployment, if made
            name = r.schedule_deployment_name(run.namespace, schedule)
            deployment_id = await rt.gateway.deployment_id(info.flow_name, name)
        deployment_id = deployment_id or await rt.gateway.ensure_deployment(deployment)
        snapshot = await rt.gateway.create_flow_run(deployment_id, request, deployment.work_pool)
    except PrefectRejected as exc:
        message = f"{exc} (the run fails: asking again would get the same answer)"
        await rt.follower.update(
            run,
            lambda s: r.verdict_status(
                s, api.Phase.FAILED, r.PREFECT_REJECTED, message[:2000], utcnow()
            ),
        )
        rt.follower.post_event(run, "Warning", r.PREFECT_REJECTED, message)
        return
    except PrefectBusy as exc:
        raise kopf.TemporaryError(f"Prefect busy: {exc}", delay=busy_retry_delay(retry)) from exc
    except PrefectUnavailable as exc:
        why = str(exc)[:500]
        await rt.follower.update(run, lambda s: r.reachability_status(s, False, why, utcnow()))
        raise kopf.TemporaryError(f"Prefect unreachable: {exc}", delay=_retry_delay(retry)) from exc
    metrics.FLOW_RUNS_CREATED.inc()
    rt.follower.record_flow_run(run, snapshot.id)
    await rt.follower.apply(run, snapshot, None)
    if r.has_operator_verdict(run.status) and not snapshot.terminal:
        # the run failed (its start deadline) while this create was in flight
        await rt.gateway.cancel_flow_run(snapshot.id, f"radps: {run.status.message}")
    if spec.cancel:
        await _cancel(run, "spec.cancel is true")
    metrics.RECONCILE_SECONDS.labels("create").observe(time.perf_counter() - started)


async def _ensure_flow_identity(run: Tracked, retry: int) -> None:
    """The flow-run service account in the run's namespace, when the operator makes it; a
    refusal shows in the run's message and is retried (an admin may fix the RBAC)."""
    rt = runtime()
    if rt.identities is None:
        return
    try:
        await rt.identities.ensure(run.namespace)
    except KubeApiError as exc:
        message = (
            f"cannot create service account {rt.identities.service_account} (or the Prefect "
            f"credential's Secret) in {run.namespace} for the flow-run pod: "
            f"{exc.status} {exc.reason}"
        )
        await _show_and_retry(run, message, retry, exc)


async def _ensure_run_network(run: Tracked, retry: int) -> None:
    """The run's own NetworkPolicy (radps_operator.run_network), before its first pod; a
    refusal shows in the run's message and is retried."""
    rt = runtime()
    if not rt.settings.run_network_policy:
        return
    try:
        await ensure_run_network_policy(rt.kube, run.namespace, run.name, run.uid)
    except KubeApiError as exc:
        message = (
            f"cannot create the run's NetworkPolicy in {run.namespace}: {exc.status} {exc.reason}"
        )
        await _show_and_retry(run, message, retry, exc)


async def _show_and_retry(run: Tracked, message: str, retry: int, cause: Exception) -> NoReturn:
    """A refusal an admin may fix (RBAC, admission): it shows in the run's message, and kopf
    retries the handler with backoff."""
    await runtime().follower.update(run, lambda s: s.model_copy(update={"message": message}))
    raise kopf.TemporaryError(message, delay=_retry_delay(retry)) from cause


async def _cancel(run: Tracked, why: str) -> None:
    rt = runtime()
    if run.flow_run_id is None or r.is_finished(run.status):
        return
    try:
        await rt.gateway.cancel_flow_run(run.flow_run_id, f"cancelled: {why}")
    except PrefectUnavailable as exc:
        raise kopf.TemporaryError(f"Prefect unreachable: {exc}", delay=2) from exc
    rt.follower.post_event(run, "Normal", "Cancelling", f"cancelling the flow run: {why}")
    rt.follower.flow_run_changed(run.flow_run_id)


@kopf.on.update(*RESOURCE, registry=registry, field="spec.cancel")
async def cancel(body: kopf.Body, new: Any, **_: Any) -> None:
    if not new:
        return
    rt = runtime()
    run = rt.follower.find(body["metadata"]["uid"])
    if run is not None:
        await _cancel(run, "spec.cancel set to true")


@kopf.on.update(*RESOURCE, registry=registry, field="spec.resume")
async def resume(body: kopf.Body, new: Any, **_: Any) -> None:
    """An answer to the pause the run waits at (radps_operator.pause_service)."""
    rt = runtime()
    run = rt.follower.find(body["metadata"]["uid"])
    if run is not None:
        generation = body["metadata"].get("generation")
        await pause_service.answer(rt.follower, rt.gateway, run, new, generation)


@kopf.on.delete(*RESOURCE, registry=registry)
async def delete(body: kopf.Body, **_: Any) -> None:
    """Before the object goes: cancel an unfinished flow run and remove its DaskClusters;
    the follower removes its Jobs once the flow run has ended."""
    started = time.perf_counter()
    rt = runtime()
    meta = body["metadata"]
    uid, namespace = meta["uid"], meta["namespace"]
    run = rt.follower.find(uid)
    status = run.status if run else r.parse_status(dict(body.get("status") or {}))
    flow_run_id = status.prefect.flow_run_id if status.prefect else None
    try:
        if flow_run_id is None and not r.has_operator_verdict(status):
            # a create that timed out may still have made the flow run: its idempotency key
            # is this object's UID
            found = await rt.gateway.read_flow_run_by_key(uid)
            flow_run_id = found.id if found else None
        if flow_run_id and not r.is_finished(status):
            await rt.gateway.cancel_flow_run(flow_run_id, "cancelled: PipelineRun deleted")
    except PrefectUnavailable as exc:
        raise kopf.TemporaryError(f"Prefect unreachable: {exc}", delay=2) from exc
    except PrefectRejected as exc:  # never keep the object forever for Prefect's refusal
        log.warning("%s/%s: could not cancel its flow run: %s", namespace, meta["name"], exc)
    removed = await rt.kube.delete_dask_clusters(namespace, uid)
    if removed:
        log.info("deleted DaskClusters %s of %s/%s", removed, namespace, meta["name"])
    rt.follower.untrack(uid)
    rt.follower.watch_deleted(namespace, meta["name"], uid, flow_run_id)
    metrics.RECONCILE_SECONDS.labels("delete").observe(time.perf_counter() - started)


@kopf.daemon(*SCHEDULE_RESOURCE, registry=registry, cancellation_timeout=1.0)
async def follow_schedule(body: kopf.Body, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Each PipelineSchedule's loop: look (the service makes what is due), then sleep until
    its next due time, at most 30 s, or until its spec changes."""
    rt = runtime()
    uid = body["metadata"]["uid"]
    wake = rt.schedules.wake_event(uid)
    try:
        while not stopped:
            try:
                delay = await rt.schedules.look(body)
            except (KubeApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("schedule %s: %s; looking again soon", body["metadata"]["name"], exc)
                delay = SCHEDULE_RETRY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
            wake.clear()
    finally:
        rt.schedules.forget(uid)


@kopf.on.update(*SCHEDULE_RESOURCE, registry=registry, field="spec")
async def schedule_changed(body: kopf.Body, **_: Any) -> None:
    """A changed schedule (suspend, its cron, its template) is looked at now."""
    runtime().schedules.wake(body["metadata"]["uid"])


@kopf.on.delete(*SCHEDULE_RESOURCE, registry=registry)
async def schedule_deleted(body: kopf.Body, **_: Any) -> None:
    """Its runs go with it (the garbage collector: they are owned), its deployment here."""
    status = schedule_api.parse_status(dict(body.get("status") or {}))
    await runtime().schedules.forget_in_prefect(
        status.prefect_deployment_id, body["metadata"]["name"]
    )


def run_operator(settings: OperatorSettings | None = None) -> None:
    """`radps operator`: kopf with radps's registry, in this process, until SIGTERM/SIGINT."""
    settings = settings or OperatorSettings.from_env()
    metrics.configure_logging(settings.log_format)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    # uvloop: part of the measured kopf floor (docs/architecture.md: p50 0.47-0.53 s, 200 objects)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=settings.clusterwide,
            namespaces=list(settings.namespaces),
            liveness_endpoint=liveness,
        )
    )
