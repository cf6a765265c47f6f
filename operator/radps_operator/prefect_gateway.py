"""The only module that talks to Prefect: one async client for the operator's lifetime.

Every failure to reach Prefect (connection refused, timeouts, 5xx) surfaces as
:class:`PrefectUnavailable`, so callers can show `PrefectReachable=False` and retry; any other
error is the request's own fault and is raised as is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import httpx

from radps_flows.contract import OUTPUTS_ARTIFACT_DESCRIPTION, PauseRequest, pause_input_key
from radps_operator import metrics
from radps_operator.reconcile import DeploymentRequest, FlowRunRequest, FlowRunSnapshot

log = logging.getLogger(__name__)

FLOW_RUN_EVENT_PREFIX = "prefect.flow-run."
READ_BATCH = 200
USER_AGENT = "radps-operator"
CHANGE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


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


def snapshot_of(flow_run: dict[str, Any]) -> FlowRunSnapshot:
    """A flow run as Prefect's API returns it (JSON), as the operator reads it."""
    state = flow_run.get("state") or {}
    return FlowRunSnapshot(
        id=str(flow_run["id"]),
        name=flow_run.get("name") or "",
        state_type=state.get("type"),
        state_name=state.get("name"),
        state_message=state.get("message") or None,
        start_time=_datetime(flow_run.get("start_time")),
        end_time=_datetime(flow_run.get("end_time")),
        labels=dict(flow_run.get("labels") or {}),
        deployment_id=flow_run.get("deployment_id"),
        work_pool=flow_run.get("work_pool_name"),
        state_time=_datetime(state.get("timestamp")),
        expected_start_time=_datetime(flow_run.get("expected_start_time")),
    )


def _datetime(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _output_rows(artifact: dict[str, Any]) -> list[dict[str, str]] | None:
    """The rows of a "radps outputs" table artifact; None for any other artifact."""
    if artifact.get("description") != OUTPUTS_ARTIFACT_DESCRIPTION:
        return None
    data = artifact.get("data")
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


def _state(type_: str, name: str, message: str | None = None, **details: Any) -> dict[str, Any]:
    """A state to propose, in the shape of Prefect's `StateCreate` (the server fills the
    rest of `state_details`)."""
    return {"type": type_, "name": name, "message": message, "state_details": details}


def busy_retry_delay(retry: int) -> float:
    """Seconds before the ``retry``-th attempt of a call Prefect refused as busy (503, 429):
    an overloaded server answers again within moments; jitter spreads the retries."""
    return min(0.2 * 2 ** min(retry, 5), 5.0) * random.uniform(0.5, 1.5)


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is Prefect saying it is busy (SQLite's "database is locked" is a 503)."""
    return _unavailable(exc) is PrefectBusy


class PrefectGateway:
    """Prefect's REST API and event stream, over plain httpx and websockets.

    Not Prefect's own client: importing it and its schemas costs the operator ~33 MiB of its
    ~90 MiB at rest (docs/architecture.md, "A burst of PipelineRuns"), for the dozen endpoints
    below. The request bodies are those Prefect's client sends; the integration tests run
    every call against a real server of the pinned version."""

    def __init__(
        self,
        api_url: str,
        auth_string: str | None = None,
        max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS,
    ):
        self.api_url = api_url.rstrip("/")
        self.auth_string = auth_string
        self._slots = asyncio.Semaphore(max_concurrent_calls)
        """A burst of creates must not become a burst of concurrent writes: SQLite serialises
        them anyway and answers the surplus with "database is locked" (503)."""
        self._http: httpx.AsyncClient | None = None
        self._csrf = _CsrfToken()
        self._deployments: dict[tuple[str, ...], asyncio.Future[str]] = {}
        self._pool_variables: dict[str, set[str] | None] = {}

    async def __aenter__(self) -> PrefectGateway:
        headers = {"User-Agent": USER_AGENT}
        if self.auth_string:  # as Prefect's client: the server's auth string, as basic auth
            token = base64.b64encode(self.auth_string.encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self._http = httpx.AsyncClient(
            base_url=self.api_url + "/",
            headers=headers,
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _call(self, operation: str, method: str, path: str, body: Any = None) -> Any:
        """One API call in a call slot: its JSON answer (None for an empty one).

        No retry here: a busy SQLite server answers again within a fraction of the 2 s that
        Prefect's client waits (creates retry busy answers themselves, `busy_retry_delay`), and
        an outage surfaces at once (the operator retries with its own backoff and shows
        PrefectReachable=False meanwhile)."""
        http = self._http
        if http is None:
            raise RuntimeError("PrefectGateway used outside `async with`")
        with metrics.PREFECT_SLOT_WAIT_SECONDS.time():
            await self._slots.acquire()
        try:
            with metrics.PREFECT_CALL_SECONDS.labels(operation).time():
                try:
                    response = await self._send(http, method, path, body)
                    response.raise_for_status()
                    return response.json() if response.content else None
                except Exception as exc:
                    kind = _unavailable(exc)
                    if kind is None:
                        rejected = _rejection(exc)
                        if rejected is not None:
                            assert isinstance(exc, httpx.HTTPStatusError)
                            raise PrefectRejected(
                                f"Prefect refused {operation}: {rejected}",
                                exc.response.status_code,
                            ) from exc
                        raise
                    metrics.PREFECT_API_ERRORS.labels(operation).inc()
                    raise kind(f"Prefect API {self.api_url}: {exc!r}") from exc
        finally:
            self._slots.release()

    async def _send(
        self, http: httpx.AsyncClient, method: str, path: str, body: Any
    ) -> httpx.Response:
        """The request, with Prefect's CSRF token where the server asks for one (a change
        request to a server with CSRF protection on, as the chart runs it); a token the
        server no longer knows is fetched again once."""
        url = path.lstrip("/")
        if method not in CHANGE_METHODS:
            return await http.request(method, url, json=body)
        headers = await self._csrf.headers(http)
        response = await http.request(method, url, json=body, headers=headers)
        if response.status_code == 403 and "Invalid CSRF token" in response.text:
            self._csrf.forget()
            headers = await self._csrf.headers(http)
            response = await http.request(method, url, json=body, headers=headers)
        return response

    async def healthy(self) -> bool:
        try:
            await self._call("health", "GET", "/health")
        except (PrefectUnavailable, PrefectRejected):
            return False
        return True

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
        """Prefect upserts a deployment by (flow, name): a new image or schema replaces the
        old one's."""
        flow = await self._call("create_flow", "POST", "/flows/", {"name": request.flow_name})
        variables = await self._known_variables(request.work_pool, {"image": request.image})
        deployment = await self._call(
            "create_deployment",
            "POST",
            "/deployments/",
            {
                "flow_id": flow["id"],
                "name": request.name,
                "version": request.image,
                "entrypoint": request.entrypoint,
                "work_pool_name": request.work_pool,
                "parameters": request.parameters,
                "parameter_openapi_schema": request.parameter_schema,
                "enforce_parameter_schema": True,
                "job_variables": variables,
                "tags": list(request.tags),
                "description": request.description,
                "schedules": _schedules(request),
                "paused": request.paused,
            },
        )
        log.info("deployment %s/%s is %s", request.flow_name, request.name, deployment["id"])
        return str(deployment["id"])

    async def deployment_id(self, flow_name: str, name: str) -> str | None:
        """The id of the deployment ``flow_name/name``; None where there is none."""
        path = f"/deployments/name/{quote(flow_name, safe='')}/{quote(name, safe='')}"
        try:
            deployment = await self._call("read_deployment", "GET", path)
        except PrefectRejected as exc:
            if exc.status == 404:
                return None
            raise
        return str(deployment["id"])

    async def delete_deployment(self, deployment_id: str) -> None:
        """Delete a deployment (its flow runs stay); gone already is fine."""
        try:
            await self._call("delete_deployment", "DELETE", f"/deployments/{UUID(deployment_id)}")
        except PrefectRejected as exc:
            if exc.status != 404:
                raise
        self._deployments = {
            key: future
            for key, future in self._deployments.items()
            if not (future.done() and not future.exception() and future.result() == deployment_id)
        }

    async def _known_variables(self, work_pool: str, variables: dict[str, Any]) -> dict[str, Any]:
        """Only the job variables the pool's template declares (a process pool has no image,
        namespace or resources; Prefect rejects variables a template does not know)."""
        if work_pool not in self._pool_variables:
            try:
                pool = await self._call(
                    "read_work_pool", "GET", f"/work_pools/{quote(work_pool, safe='')}"
                )
            except PrefectRejected as exc:
                if exc.status != 404:
                    raise
                return variables  # creating the deployment says what is wrong
            template = pool.get("base_job_template") or {}
            properties = template.get("variables", {}).get("properties")
            self._pool_variables[work_pool] = set(properties) if properties else None
        known = self._pool_variables[work_pool]
        if known is None:
            return variables
        return {k: v for k, v in variables.items() if k in known}

    async def create_flow_run(
        self, deployment_id: str, request: FlowRunRequest, work_pool: str
    ) -> FlowRunSnapshot:
        """The flow run for `request.idempotency_key`: created, or the existing one (so asking
        again after a busy answer is safe).

        The body sets what `create_flow_run_from_deployment` cannot: the run's retry policy,
        which the server's RetryFailedFlows rule reads, and no server check of the parameters
        against the deployment's schema. The operator has just validated them against the
        pipeline's own model, which generated that schema (`validation.validate_spec`); the
        server's check cost ~20 ms of its CPU per run, half of a create on SQLite. Runs started
        from the UI are still checked."""
        variables = await self._known_variables(work_pool, request.job_variables)
        body = {
            "name": request.name,
            "parameters": request.parameters,
            "state": _state("SCHEDULED", "Scheduled", scheduled_time=_now()),
            "tags": list(request.tags),
            "idempotency_key": request.idempotency_key,
            "job_variables": variables,
            "empirical_policy": {"retries": request.retries, "retry_delay": 0},
            "enforce_parameter_schema": False,
        }
        path = f"/deployments/{UUID(deployment_id)}/create_flow_run"
        for retry in range(CREATE_BUSY_RETRIES):
            try:
                return snapshot_of(await self._call("create_flow_run", "POST", path, body))
            except PrefectBusy:
                await asyncio.sleep(busy_retry_delay(retry))  # with its call slot free
        # the last try: a busy answer goes to the handler
        return snapshot_of(await self._call("create_flow_run", "POST", path, body))

    async def _filter_flow_runs(self, where: dict[str, Any], limit: int) -> list[FlowRunSnapshot]:
        runs = await self._call(
            "read_flow_runs", "POST", "/flow_runs/filter", {"flow_runs": where, "limit": limit}
        )
        return [snapshot_of(run) for run in runs]

    async def read_flow_runs(self, flow_run_ids: list[str]) -> list[FlowRunSnapshot]:
        out: list[FlowRunSnapshot] = []
        for i in range(0, len(flow_run_ids), READ_BATCH):
            batch = [str(UUID(x)) for x in flow_run_ids[i : i + READ_BATCH]]
            out.extend(await self._filter_flow_runs({"id": {"any_": batch}}, len(batch)))
        return out

    async def read_flow_run_by_key(self, idempotency_key: str) -> FlowRunSnapshot | None:
        """The flow run created for a PipelineRun's UID: not for creation (the key makes that
        idempotent) but for a deleted run whose status never recorded its flow run."""
        runs = await self._filter_flow_runs({"idempotency_key": {"any_": [idempotency_key]}}, 1)
        return runs[0] if runs else None

    async def _set_state(self, flow_run_id: str, state: dict[str, Any], force: bool) -> str:
        """Propose `state`; Prefect's answer (ACCEPT, REJECT, ABORT or WAIT)."""
        run_id = str(UUID(flow_run_id))
        state["state_details"].update(flow_run_id=run_id, transition_id=str(uuid4()))
        result = await self._call(
            "set_flow_run_state",
            "POST",
            f"/flow_runs/{run_id}/set_state",
            {"state": state, "force": force},
        )
        return str((result or {}).get("status", ""))

    async def cancel_flow_run(self, flow_run_id: str, message: str) -> None:
        """Ask for cancellation: Cancelling (the worker stops the infrastructure, then
        Cancelled); a run that never started goes straight to Cancelled."""
        runs = await self.read_flow_runs([flow_run_id])
        if not runs or runs[0].terminal or runs[0].state_type == "CANCELLING":
            return
        if runs[0].state_type in ("SCHEDULED", None):
            await self._set_state(flow_run_id, _state("CANCELLED", "Cancelled", message), False)
            return
        answer = await self._set_state(
            flow_run_id, _state("CANCELLING", "Cancelling", message), False
        )
        if answer != "ACCEPT":  # e.g. "no infrastructure to terminate" for a run not yet
            await self.force_cancelled(flow_run_id, message)  # picked up

    async def force_cancelled(self, flow_run_id: str, message: str) -> None:
        """Set Cancelled whatever Prefect's rules say: a Cancelling that Prefect refused, or
        one no worker completes (it is gone, or lost the race with the Job's creation)."""
        await self._set_state(flow_run_id, _state("CANCELLED", "Cancelled", message), True)

    async def read_pause_request(self, flow_run_id: str, pause: int) -> PauseRequest | None:
        """What a paused flow run asks at ``pause`` (the flow run input the flow wrote, see
        radps_flows.pipelines.interactive), None where there is none."""
        run_id = str(UUID(flow_run_id))
        key = pause_input_key(pause)
        try:
            value = await self._call(
                "read_flow_run_input", "GET", f"/flow_runs/{run_id}/input/{key}"
            )
        except PrefectRejected:  # 404: not written (yet)
            return None
        return PauseRequest.from_json(value)

    async def resume_flow_run(self, flow_run_id: str, run_input: dict[str, Any]) -> None:
        """Resume a paused flow run with ``run_input`` (Prefect checks it against the form the
        flow saved); PrefectRejected with Prefect's reason when it does not."""
        run_id = str(UUID(flow_run_id))
        result = await self._call(
            "resume_flow_run", "POST", f"/flow_runs/{run_id}/resume", {"run_input": run_input}
        )
        status = str((result or {}).get("status", ""))
        if status != "ACCEPT":
            reason = ((result or {}).get("details") or {}).get("reason") or status
            raise PrefectRejected(f"Prefect did not resume the flow run: {reason}", 409)

    async def read_outputs(self, flow_run_id: str) -> list[dict[str, Any]]:
        """Rows {name, uri, kind} of the flow run's "radps outputs" table artifact."""
        return (await self.read_outputs_of([flow_run_id]))[flow_run_id]

    async def read_outputs_of(self, flow_run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """`read_outputs` of many flow runs, READ_BATCH per call (1000 runs finishing together
        would otherwise make 1000 calls, one after another)."""
        out: dict[str, list[dict[str, Any]]] = {i: [] for i in flow_run_ids}
        for i in range(0, len(flow_run_ids), READ_BATCH):
            batch = [str(UUID(x)) for x in flow_run_ids[i : i + READ_BATCH]]
            offset = 0
            while True:  # a run may have several artifacts: page through them
                page = await self._call(
                    "read_artifacts",
                    "POST",
                    "/artifacts/filter",
                    {
                        "artifacts": {"flow_run_id": {"any_": batch}},
                        "limit": READ_BATCH,
                        "offset": offset,
                    },
                )
                for artifact in page:
                    rows = _output_rows(artifact)
                    run_id = str(artifact.get("flow_run_id"))
                    if rows is not None and run_id in out:
                        out[run_id] = rows
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
        stream = _EventStream(self.events_url, self.auth_string)
        delay = 0.5

        def connected() -> None:
            nonlocal delay
            delay = 0.5
            on_connected(True)

        while True:
            try:
                async for event in stream.events(connected):
                    resource_id = event.get("resource", {}).get("prefect.resource.id", "")
                    if resource_id.startswith(FLOW_RUN_EVENT_PREFIX):
                        metrics.PREFECT_EVENTS.inc()
                        on_flow_run(
                            resource_id.removeprefix(FLOW_RUN_EVENT_PREFIX),
                            str(event.get("event", "")).removeprefix(FLOW_RUN_EVENT_PREFIX),
                        )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("Prefect event stream: %r; reconnecting in %.1f s", exc, delay)
            on_connected(False)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    @property
    def events_url(self) -> str:
        """The event stream's websocket: `/events/out` under the API, ws(s) for http(s)."""
        scheme, rest = self.api_url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/events/out"


def _schedules(request: DeploymentRequest) -> list[dict[str, Any]]:
    """A schedule's deployment shows its cron, inactive: Prefect's scheduler makes no run."""
    if request.cron is None:
        return []
    cron = {"cron": request.cron, "timezone": request.time_zone or "UTC"}
    return [{"schedule": cron, "active": False}]


class _CsrfToken:
    """Prefect's CSRF token for this client (`/csrf-token?client=`), fetched when first needed
    and again before it expires; none at all against a server without CSRF protection."""

    RENEW_BEFORE = timedelta(minutes=1)

    def __init__(self) -> None:
        self.client = str(uuid4())
        self.enabled = True
        self.token: str | None = None
        self.expires: datetime | None = None
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        self.token = None

    async def headers(self, http: httpx.AsyncClient) -> dict[str, str]:
        async with self._lock:  # a burst of creates fetches one token
            if self.enabled and (self.token is None or self._expiring()):
                await self._fetch(http)
        if not self.enabled or self.token is None:
            return {}
        return {"Prefect-Csrf-Token": self.token, "Prefect-Csrf-Client": self.client}

    def _expiring(self) -> bool:
        return self.expires is not None and datetime.now(UTC) > self.expires - self.RENEW_BEFORE

    async def _fetch(self, http: httpx.AsyncClient) -> None:
        response = await http.get("csrf-token", params={"client": self.client})
        disabled = response.status_code == 422 and "CSRF protection is disabled" in response.text
        if response.status_code == 404 or disabled:  # an older server, or protection off
            self.enabled = False
            return
        response.raise_for_status()
        answer = response.json()
        self.token = answer["token"]
        self.expires = _datetime(answer.get("expiration"))


class _EventStream:
    """Prefect's `/events/out` websocket protocol, as its `PrefectEventSubscriber` speaks it.

    The "prefect" subprotocol, then an auth message (the server's auth string, or none), then
    a filter. The server replays the filter's past events from `occurred.since` before the
    live ones: each connection asks from a minute before the last event seen, and events
    already seen are skipped, so a reconnect loses nothing and repeats nothing."""

    SEEN_MAX = 20_000
    REPLAY = timedelta(minutes=1)

    def __init__(self, url: str, auth_string: str | None):
        self.url = url
        self.auth_string = auth_string
        self.since: datetime | None = None
        self.seen: OrderedDict[str, None] = OrderedDict()

    async def events(self, connected: Callable[[], None]) -> AsyncIterator[dict[str, Any]]:
        """Events of one connection; ends (raising) when it drops."""
        from websockets.asyncio.client import connect
        from websockets.typing import Subprotocol

        now = datetime.now(UTC)
        since = self.since or now - self.REPLAY
        async with connect(
            self.url,
            subprotocols=[Subprotocol("prefect")],
            user_agent_header=USER_AGENT,
            open_timeout=10,
        ) as socket:
            await socket.send(json.dumps({"type": "auth", "token": self.auth_string}))
            answer = json.loads(await socket.recv())
            if answer.get("type") != "auth_success":
                raise PrefectUnavailable(f"Prefect event stream refused us: {answer!r}")
            where = {
                "event": {"prefix": [FLOW_RUN_EVENT_PREFIX]},
                "occurred": {"since": since.isoformat(), "until": _far_future(now)},
            }
            await socket.send(json.dumps({"type": "filter", "filter": where}))
            connected()
            async for message in socket:
                payload = json.loads(message)
                event = payload.get("event") if payload.get("type") == "event" else None
                if not isinstance(event, dict) or self._seen(str(event.get("id"))):
                    continue
                occurred = _datetime(event.get("occurred"))
                replay_from = occurred - self.REPLAY if occurred else None
                if replay_from and (self.since is None or replay_from > self.since):
                    self.since = replay_from
                yield event

    def _seen(self, event_id: str) -> bool:
        if event_id in self.seen:
            return True
        self.seen[event_id] = None
        if len(self.seen) > self.SEEN_MAX:
            self.seen.popitem(last=False)
        return False


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _far_future(now: datetime) -> str:
    return (now + timedelta(days=365)).isoformat()
