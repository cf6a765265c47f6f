"""The only module that talks to Prefect: one async client for the operator's lifetime.

Every failure to reach Prefect (connection refused, timeouts, 5xx) surfaces as
:class:`PrefectUnavailable`, so callers can show `PrefectReachable=False` and retry; any other
error is the request's own fault and is raised as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import httpx

from radps_flows.contract import OUTPUTS_ARTIFACT_DESCRIPTION
from radps_operator import metrics
from radps_operator.reconcile import DeploymentRequest, FlowRunRequest, FlowRunSnapshot

log = logging.getLogger(__name__)

FLOW_RUN_EVENT_PREFIX = "prefect.flow-run."
READ_BATCH = 200


DEFAULT_MAX_CONCURRENT_CALLS = 8
CREATE_BUSY_RETRIES = 8
"""A create that Prefect answers busy is asked again at once (after `busy_retry_delay`) this
many times before the handler gives up and kopf retries it: a SQLite server answers a burst
of writes with some 503s (docs/architecture.md, "A burst of PipelineRuns")."""


class PrefectUnavailable(RuntimeError):
    """Prefect did not answer (or answered 5xx): retry later."""


class PrefectBusy(PrefectUnavailable):
    """Prefect answered 503 or 429: it is up but overloaded (a SQLite server answers 503 when
    its database is locked). Retry soon; it is not an outage."""


class PrefectRejected(RuntimeError):
    """Prefect refused the request itself (a 4xx other than 401/403/408/409/429, such as an
    unknown work pool): asking again gives the same answer, so the run fails with it."""


def _unavailable(exc: BaseException) -> type[PrefectUnavailable] | None:
    """Which retryable failure `exc` is, or None for an answer to act on (e.g. a 4xx)."""
    if isinstance(exc, httpx.TransportError | OSError | asyncio.TimeoutError):
        return PrefectUnavailable
    if isinstance(exc, httpx.HTTPStatusError):  # Prefect's own error type derives from it
        code = exc.response.status_code
        if code in (429, 503):
            return PrefectBusy
        if code >= 500 or code in (401, 403, 408):  # 401/403: the operator's credential,
            return PrefectUnavailable  # which an admin fixes; not the run's fault
    return None


def _rejection(exc: BaseException) -> str | None:
    """Prefect's own words for a terminal 4xx, or None."""
    if not isinstance(exc, httpx.HTTPStatusError) or not 400 <= exc.response.status_code < 500:
        return None
    if exc.response.status_code == 409:  # the idempotent create's "exists": not an error
        return None
    try:
        detail = exc.response.json().get("detail")
    except ValueError:
        detail = None
    return f"{exc.response.status_code}: {detail or exc.response.text[:300]}"


def snapshot_of(flow_run: Any) -> FlowRunSnapshot:
    state = flow_run.state
    return FlowRunSnapshot(
        id=str(flow_run.id),
        name=flow_run.name,
        state_type=state.type.value if state else None,
        state_name=state.name if state else None,
        state_message=(state.message or None) if state else None,
        start_time=flow_run.start_time,
        end_time=flow_run.end_time,
        labels=dict(flow_run.labels or {}),
        deployment_id=str(flow_run.deployment_id) if flow_run.deployment_id else None,
        work_pool=flow_run.work_pool_name,
        state_time=state.timestamp if state else None,
        expected_start_time=flow_run.expected_start_time,
    )


def _output_rows(artifact: Any) -> list[dict[str, str]] | None:
    """The rows of a "radps outputs" table artifact; None for any other artifact."""
    if artifact.description != OUTPUTS_ARTIFACT_DESCRIPTION:
        return None
    data = artifact.data
    if isinstance(data, str):
        with contextlib.suppress(ValueError):
            data = json.loads(data)
    if not isinstance(data, list):
        return None
    return [
        {k: str(row.get(k, "")) for k in ("name", "uri", "kind")}
        for row in data
        if isinstance(row, dict)
    ]


def busy_retry_delay(retry: int) -> float:
    """Seconds before the ``retry``-th attempt of a call Prefect refused as busy (503, 429):
    an overloaded server answers again within moments; jitter spreads the retries."""
    return min(0.2 * 2 ** min(retry, 5), 5.0) * random.uniform(0.5, 1.5)


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is Prefect saying it is busy (SQLite's "database is locked" is a 503)."""
    return _unavailable(exc) is PrefectBusy


class PrefectGateway:
    def __init__(
        self,
        api_url: str,
        auth_string: str | None = None,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
    ):
        self.api_url = api_url
        self.auth_string = auth_string
        self._slots = asyncio.Semaphore(max_concurrent_calls)
        """A burst of creates must not become a burst of concurrent writes: SQLite serialises
        them anyway and answers the surplus with "database is locked" (503)."""
        self._client: Any = None
        self._deployments: dict[tuple[str, str, str], asyncio.Future[str]] = {}
        self._pool_variables: dict[str, set[str] | None] = {}
        self._settings: Any = None

    def _settings_context(self) -> Any:
        """Prefect settings for the operator's calls: the configured server and auth, and no
        client-side retry: Prefect's client waits 2 s before retrying a 503, where a busy
        SQLite server answers again within a fraction of that (creates retry busy answers
        themselves, `busy_retry_delay`), and an outage surfaces at once (the operator retries
        with its own backoff and shows PrefectReachable=False meanwhile)."""
        from prefect.context import SettingsContext
        from prefect.settings import (
            PREFECT_API_AUTH_STRING,
            PREFECT_API_URL,
            PREFECT_CLIENT_MAX_RETRIES,
            get_current_settings,
        )

        if self._settings is None:
            updates: dict[Any, Any] = {PREFECT_CLIENT_MAX_RETRIES: 0, PREFECT_API_URL: self.api_url}
            if self.auth_string:
                updates[PREFECT_API_AUTH_STRING] = self.auth_string
            self._settings = get_current_settings().copy_with_update(updates=updates)
        return SettingsContext(profile=SettingsContext.get().profile, settings=self._settings)

    async def __aenter__(self) -> PrefectGateway:
        from prefect.client.orchestration import PrefectClient

        self._client = PrefectClient(
            self.api_url,
            auth_string=self.auth_string,
            httpx_settings={"timeout": httpx.Timeout(30.0, connect=5.0)},
        )
        await self._client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None

    async def _call(self, operation: str, coro: Awaitable[Any]) -> Any:
        with metrics.PREFECT_SLOT_WAIT_SECONDS.time():
            await self._slots.acquire()
        try:
            return await self._call_now(operation, coro)
        finally:
            self._slots.release()

    async def _call_now(self, operation: str, coro: Awaitable[Any]) -> Any:
        with metrics.PREFECT_CALL_SECONDS.labels(operation).time(), self._settings_context():
            try:
                return await coro
            except Exception as exc:
                kind = _unavailable(exc)
                if kind is None:
                    rejected = _rejection(exc)
                    if rejected is not None:
                        raise PrefectRejected(f"Prefect refused {operation}: {rejected}") from exc
                    raise
                metrics.PREFECT_API_ERRORS.labels(operation).inc()
                raise kind(f"Prefect API {self.api_url}: {exc!r}") from exc

    async def healthy(self) -> bool:
        try:
            error = await self._call("health", self._client.api_healthcheck())
        except PrefectUnavailable:
            return False
        return error is None

    # --- deployments and flow runs ------------------------------------------------------------

    async def ensure_deployment(self, request: DeploymentRequest) -> str:
        """The deployment's id, created or updated once per operator process; concurrent
        callers for the same deployment share one request."""
        future = self._deployments.get(request.key)
        if future is None or (future.done() and future.exception() is not None):
            future = asyncio.get_running_loop().create_future()
            self._deployments[request.key] = future
            try:
                future.set_result(await self._upsert_deployment(request))
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # retrieved: no "never retrieved" warning
                del self._deployments[request.key]
                raise
        return await asyncio.shield(future)

    async def _upsert_deployment(self, request: DeploymentRequest) -> str:
        flow_id = await self._call(
            "create_flow", self._client.create_flow_from_name(request.flow_name)
        )
        variables = await self._known_variables(request.work_pool, {"image": request.image})
        deployment_id = await self._call(
            "create_deployment",
            self._client.create_deployment(
                flow_id=flow_id,
                name=request.name,
                version=request.image,
                entrypoint=request.entrypoint,
                work_pool_name=request.work_pool,
                parameter_openapi_schema=request.parameter_schema,
                enforce_parameter_schema=True,
                job_variables=variables,
                tags=list(request.tags),
                description=request.description,
            ),
        )
        log.info("deployment %s/%s is %s", request.flow_name, request.name, deployment_id)
        return str(deployment_id)

    async def _known_variables(self, work_pool: str, variables: dict[str, Any]) -> dict[str, Any]:
        """Only the job variables the pool's template declares (a process pool has no image,
        namespace or resources; Prefect rejects variables a template does not know)."""
        if work_pool not in self._pool_variables:
            from prefect.exceptions import ObjectNotFound

            try:
                pool = await self._call("read_work_pool", self._client.read_work_pool(work_pool))
            except ObjectNotFound:
                return variables
            properties = (pool.base_job_template or {}).get("variables", {}).get("properties")
            self._pool_variables[work_pool] = set(properties) if properties else None
        known = self._pool_variables[work_pool]
        if known is None:
            return variables
        return {k: v for k, v in variables.items() if k in known}

    async def create_flow_run(
        self, deployment_id: str, request: FlowRunRequest, work_pool: str
    ) -> FlowRunSnapshot:
        """The flow run for `request.idempotency_key`: created, or the existing one (so asking
        again after a busy answer is safe)."""
        variables = await self._known_variables(work_pool, request.job_variables)

        async def create() -> FlowRunSnapshot:
            flow_run = await self._call(
                "create_flow_run", self._create_flow_run(deployment_id, request, variables)
            )
            return snapshot_of(flow_run)

        for retry in range(CREATE_BUSY_RETRIES):
            try:
                return await create()
            except PrefectBusy:
                await asyncio.sleep(busy_retry_delay(retry))  # with its call slot free
        return await create()  # the last try: a busy answer goes to the handler

    async def _create_flow_run(
        self, deployment_id: str, request: FlowRunRequest, job_variables: dict[str, Any]
    ) -> Any:
        """`create_flow_run_from_deployment` without its gaps: it cannot set the run's retry
        policy, which the server's RetryFailedFlows rule reads (the engine keeps a set one),
        nor skip the server's check of the parameters against the deployment's schema. The
        operator has just validated them against the pipeline's own model, which generated
        that schema (`validation.validate_spec`); the server's check cost ~20 ms of its CPU
        per run, half of a create on SQLite. Runs started from the UI are still checked."""
        from prefect.client.schemas.actions import DeploymentFlowRunCreate
        from prefect.client.schemas.objects import FlowRun, FlowRunPolicy
        from prefect.states import Scheduled, to_state_create

        body = DeploymentFlowRunCreate(
            parameters=request.parameters,
            state=to_state_create(Scheduled()),
            name=request.name,
            tags=list(request.tags),
            idempotency_key=request.idempotency_key,
            job_variables=job_variables,
            empirical_policy=FlowRunPolicy(retries=request.retries, retry_delay=0),
            enforce_parameter_schema=False,
        )
        response = await self._client.request(
            "POST",
            "/deployments/{id}/create_flow_run",
            path_params={"id": UUID(deployment_id)},
            json=body.model_dump(mode="json", exclude_unset=True),
        )
        return FlowRun.model_validate(response.json())

    async def read_flow_runs(self, flow_run_ids: list[str]) -> list[FlowRunSnapshot]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        out: list[FlowRunSnapshot] = []
        for i in range(0, len(flow_run_ids), READ_BATCH):
            batch = [UUID(x) for x in flow_run_ids[i : i + READ_BATCH]]
            runs = await self._call(
                "read_flow_runs",
                self._client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=batch)),
                    limit=len(batch),
                ),
            )
            out.extend(snapshot_of(run) for run in runs)
        return out

    async def read_flow_run_by_key(self, idempotency_key: str) -> FlowRunSnapshot | None:
        """The flow run created for a PipelineRun's UID: not for creation (the key makes that
        idempotent) but for a deleted run whose status never recorded its flow run."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey

        runs = await self._call(
            "read_flow_runs",
            self._client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    idempotency_key=FlowRunFilterIdempotencyKey(any_=[idempotency_key])
                )
            ),
        )
        return snapshot_of(runs[0]) if runs else None

    async def cancel_flow_run(self, flow_run_id: str, message: str) -> None:
        """Ask for cancellation: Cancelling (the worker stops the infrastructure, then
        Cancelled); a run that never started goes straight to Cancelled."""
        from prefect.states import Cancelled, Cancelling

        runs = await self.read_flow_runs([flow_run_id])
        if not runs or runs[0].terminal or runs[0].state_type == "CANCELLING":
            return
        state_type = runs[0].state_type
        new_state = Cancelled if state_type in ("SCHEDULED", None) else Cancelling
        result = await self._call(
            "set_flow_run_state",
            self._client.set_flow_run_state(UUID(flow_run_id), new_state(message=message)),
        )
        if getattr(result.status, "value", result.status) != "ACCEPT" and new_state is Cancelling:
            # e.g. "no infrastructure to terminate" for a run not yet picked up
            await self.force_cancelled(flow_run_id, message)

    async def force_cancelled(self, flow_run_id: str, message: str) -> None:
        """Set Cancelled whatever Prefect's rules say: a Cancelling that Prefect refused, or
        one no worker completes (it is gone, or lost the race with the Job's creation)."""
        from prefect.states import Cancelled

        await self._call(
            "set_flow_run_state",
            self._client.set_flow_run_state(
                UUID(flow_run_id), Cancelled(message=message), force=True
            ),
        )

    async def read_outputs(self, flow_run_id: str) -> list[dict[str, Any]]:
        """Rows {name, uri, kind} of the flow run's "radps outputs" table artifact."""
        return (await self.read_outputs_of([flow_run_id]))[flow_run_id]

    async def read_outputs_of(self, flow_run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """`read_outputs` of many flow runs, READ_BATCH per call (1000 runs finishing together
        would otherwise make 1000 calls, one after another)."""
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        out: dict[str, list[dict[str, Any]]] = {i: [] for i in flow_run_ids}
        for i in range(0, len(flow_run_ids), READ_BATCH):
            batch = [UUID(x) for x in flow_run_ids[i : i + READ_BATCH]]
            where = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=batch))
            offset = 0
            while True:  # a run may have several artifacts: page through them
                page = await self._call(
                    "read_artifacts",
                    self._client.read_artifacts(
                        artifact_filter=where, limit=READ_BATCH, offset=offset
                    ),
                )
                for artifact in page:
                    rows = _output_rows(artifact)
                    if rows is not None and str(artifact.flow_run_id) in out:
                        out[str(artifact.flow_run_id)] = rows
                if len(page) < READ_BATCH:
                    break
                offset += READ_BATCH
        return out

    # --- the event stream -----------------------------------------------------------------------

    async def follow_flow_run_events(
        self,
        on_flow_run: Callable[[str, str], None],
        on_connected: Callable[[bool], None] = lambda _: None,
    ) -> None:
        """Call `on_flow_run(id, state name)` for every flow-run state event, forever;
        reconnects with backoff (the resync covers what a reconnect window misses)."""
        from prefect.events.clients import PrefectEventSubscriber
        from prefect.events.filters import EventFilter, EventNameFilter

        delay = 0.5
        while True:
            try:
                with self._settings_context():
                    subscriber = PrefectEventSubscriber(
                        api_url=self.api_url,
                        filter=EventFilter(event=EventNameFilter(prefix=[FLOW_RUN_EVENT_PREFIX])),
                        reconnection_attempts=2,
                    )
                async with subscriber:
                    on_connected(True)
                    delay = 0.5
                    async for event in subscriber:
                        resource_id = event.resource.id
                        if resource_id.startswith(FLOW_RUN_EVENT_PREFIX):
                            metrics.PREFECT_EVENTS.inc()
                            on_flow_run(
                                resource_id.removeprefix(FLOW_RUN_EVENT_PREFIX),
                                event.event.removeprefix(FLOW_RUN_EVENT_PREFIX),
                            )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("Prefect event stream: %r; reconnecting in %.1f s", exc, delay)
            on_connected(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
