"""One asyncio loop that mirrors every followed flow run into its PipelineRun's `.status`.

Per-object kopf timers do not scale (docs/architecture.md): instead one Prefect event-stream
consumer marks flow runs dirty, one loop reads the dirty ones in bulk (and, each resync period,
up to RESYNC_BATCH runs read longest ago, which catches missed events and progress labels) and
patches the statuses that changed.
The same loop enforces `timeoutSeconds`, `ttlSecondsAfterFinished`, start deadlines and the
cancel grace, follows the runs' pods, and removes the Jobs of deleted runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from radps_flows.contract import PauseRequest
from radps_operator import api, metrics, pauses
from radps_operator import reconcile as r
from radps_operator.kube import Kube
from radps_operator.prefect_gateway import PrefectBusy, PrefectGateway, PrefectUnavailable
from radps_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

STATUS_PATCHES_IN_FLIGHT = 32
RESYNC_BATCH = 200
"""Unfinished flow runs read per resync pass (one request), those read longest ago first: up
to 200 runs each is read every pass; 1000 runs are each read every 5 passes (25 s at the
default resync). Reading all 1000 every 5 s took ~40 reads/s of Prefect's server, which a
burst of creates was competing with; changes still arrive at once through Prefect's events."""
"""Status patches written at once: one at a time, 1000 runs changing together took 10 s."""
POD_CHECK_SECONDS = 10.0
"""How often the pods of unfinished runs are listed (one call per namespace): a reason such as
ImagePullBackOff reaches the status and an Event well within a minute."""
LOST_AFTER = 120.0
"""Seconds a Running run's flow-run pod may be missing before the run is lost (Prefect's
worker usually reports the crash first)."""
BUSY_IS_UNREACHABLE_AFTER = 30.0
"""Seconds of nothing but 503s from Prefect before the runs show PrefectReachable=False."""
DELETED_RUN_WATCH_SECONDS = 300.0
"""How long Jobs of a deleted PipelineRun are looked for after its delete handler ran: a worker
that took the flow run just as it was cancelled creates the Job afterwards (Prefect cancels a
run it thinks unstarted without touching infrastructure). Later, the Job's pod refuses to run
(radps_flows.origin finds no PipelineRun) and its TTL collects it."""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Tracked:
    namespace: str
    name: str
    uid: str
    spec: api.PipelineRunSpec
    status: api.PipelineRunStatus
    created: datetime | None
    generation: int | None
    work_pool: str
    flow_run_id: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    flow_pod_seen: bool = False
    """A pod of this run was seen (now, or before a restart: reconcile.pods_seen): a later
    absence of its flow-run pod while Running means lost."""
    no_flow_pod_since: float | None = None
    missing_reads: int = 0
    """Consecutive full reads that did not return the flow run (deleted in Prefect)."""
    cancelling_since: float | None = None
    """When the run was first seen Cancelling (monotonic), for settings.cancel_grace_seconds."""

    def ref(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}


class Deadline(enum.Enum):
    """A deadline of a run that has passed, each with its own action."""

    START = "start"
    """Not running spec.startDeadlineSeconds after creation: Failed, flow run cancelled."""
    CANCEL_GRACE = "cancel-grace"
    """Cancelling for settings.cancel_grace_seconds: forced Cancelled, Jobs removed."""
    TTL = "ttl"
    """spec.ttlSecondsAfterFinished after finishing: the PipelineRun is deleted."""
    TIMEOUT = "timeout"
    """spec.timeoutSeconds after starting: TimedOut, flow run cancelled."""


@dataclass(frozen=True)
class DeletedRun:
    """A PipelineRun whose delete handler ran, while its Jobs are still looked for."""

    namespace: str
    name: str
    flow_run_id: str | None
    since: float


class Follower:
    def __init__(self, settings: OperatorSettings, gateway: PrefectGateway, kube: Kube):
        self.settings = settings
        self.gateway = gateway
        self.kube = kube
        self.runs: dict[str, Tracked] = {}
        self.by_flow_run: dict[str, str] = {}
        self.deleted: dict[str, DeletedRun] = {}
        self._dirty: set[str] = set()
        self._resynced: dict[str, float] = {}
        """When each flow run was last read by a resync pass (monotonic)."""
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._reachable = True
        self._event_tasks: set[asyncio.Task[Any]] = set()

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(), name="radps-follower"),
            asyncio.create_task(
                self.gateway.follow_flow_run_events(self.flow_run_changed),
                name="radps-prefect-events",
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def flow_run_changed(self, flow_run_id: str, state_name: str | None = None) -> None:
        """Read the flow run soon, unless the event only says what its status already shows
        (the Scheduled event of a run just created: at 1000 creates, 1000 needless reads).
        Prefect's event stream calls it, and a handler that has just acted on the flow run."""
        uid = self.by_flow_run.get(flow_run_id)
        run = self.runs.get(uid) if uid else None
        if run is None:
            return
        if state_name and run.status.prefect and run.status.prefect.state == state_name:
            return
        self._dirty.add(flow_run_id)
        self._wake.set()

    # --- tracking -----------------------------------------------------------------------------

    def track(self, run: Tracked) -> Tracked:
        existing = self.runs.get(run.uid)
        if existing is not None:
            existing.spec = run.spec
            if run.flow_run_id and not existing.flow_run_id:
                existing.flow_run_id = run.flow_run_id
                self.by_flow_run[run.flow_run_id] = run.uid
            return existing
        self.runs[run.uid] = run
        if run.flow_run_id:
            self.by_flow_run[run.flow_run_id] = run.uid
        self._wake.set()
        return run

    def find(self, uid: str) -> Tracked | None:
        return self.runs.get(uid)

    def record_flow_run(self, run: Tracked, flow_run_id: str) -> None:
        """The flow run just created for ``run`` (kept if one was recorded meanwhile)."""
        if run.flow_run_id is None:
            run.flow_run_id = flow_run_id
            self.by_flow_run[flow_run_id] = run.uid

    def untrack(self, uid: str) -> None:
        run = self.runs.pop(uid, None)
        if run is not None and run.flow_run_id:
            self.by_flow_run.pop(run.flow_run_id, None)

    def watch_deleted(self, namespace: str, name: str, uid: str, flow_run_id: str | None) -> None:
        """Remove Jobs of this deleted run that appear for a while (DELETED_RUN_WATCH_SECONDS)."""
        self.deleted[uid] = DeletedRun(namespace, name, flow_run_id, time.monotonic())

    async def write(self, run: Tracked, new: api.PipelineRunStatus) -> None:
        """Patch what changed (caller holds run.lock); post an Event on a phase change."""
        patch = r.status_patch(run.status, new)
        if patch is None:
            return
        old = run.status
        if not await self.kube.patch_status(run.namespace, run.name, patch):
            self.untrack(run.uid)
            return
        run.status = new
        event = r.phase_event(old, new)
        if event is not None:
            self.post_event(run, *event)

    async def update(
        self, run: Tracked, change: Callable[[api.PipelineRunStatus], api.PipelineRunStatus]
    ) -> None:
        """Write ``change`` of the run's current status, holding its lock (a handler and the
        follower loop may change one status at once)."""
        async with run.lock:
            await self.write(run, change(run.status))

    async def write_untracked(
        self, ref: dict[str, str], old: api.PipelineRunStatus, new: api.PipelineRunStatus
    ) -> None:
        """The status of a run that is not followed (its spec is invalid)."""
        patch = r.status_patch(old, new)
        if patch is not None and await self.kube.patch_status(ref["namespace"], ref["name"], patch):
            event = r.phase_event(old, new)
            if event is not None:
                self.post_event(ref, *event)

    def post_event(
        self, run: Tracked | dict[str, str], type_: str, reason: str, message: str
    ) -> None:
        ref = run.ref() if isinstance(run, Tracked) else run
        task = asyncio.create_task(self.kube.post_event(ref, type_, reason, message))
        self._event_tasks.add(task)
        task.add_done_callback(self._event_tasks.discard)

    def next_status(
        self,
        run: Tracked,
        snapshot: r.FlowRunSnapshot,
        outputs: list[dict[str, Any]] | None = None,
        now: datetime | None = None,
        pause_request: PauseRequest | None = None,
    ) -> api.PipelineRunStatus:
        """The status ``run`` gets from a read of its flow run (no I/O: the pods' reasons for
        a failure are added by :meth:`apply`)."""
        now = now or utcnow()
        new = r.status_from_flow_run(
            run.status,
            snapshot,
            now=now,
            settings=self.settings,
            work_pool=run.work_pool,
            outputs=outputs,
            generation=run.generation,
            run_name=run.name,
            pipeline=run.spec.pipeline,
            pause_request=pause_request,
        )
        if not self._reachable or r.get_condition(run.status, r.PREFECT_REACHABLE):
            new = r.reachability_status(new, True, None, now)
        return new

    async def apply(
        self,
        run: Tracked,
        snapshot: r.FlowRunSnapshot,
        outputs: list[dict[str, Any]] | None,
        pause_request: PauseRequest | None = None,
    ) -> None:
        """A read of the run's flow run in; its status patch (and Event) out."""
        async with run.lock:
            new = self.next_status(run, snapshot, outputs, pause_request=pause_request)
            if new.phase in (api.Phase.FAILED, api.Phase.CRASHED) and not r.is_finished(run.status):
                new = await self._with_pod_reasons(run, new)
            state_changed = (run.status.prefect is None) or run.status.prefect.state != (
                snapshot.state_name
            )
            await self.write(run, new)
            if state_changed and snapshot.state_time is not None:
                lag = (utcnow() - snapshot.state_time).total_seconds()
                metrics.STATUS_LAG_SECONDS.observe(max(0.0, lag))

    async def set_reachable(self, reachable: bool, message: str | None) -> None:
        """Show Prefect's reachability on every unfinished run (only on a change)."""
        metrics.PREFECT_REACHABLE.set(1 if reachable else 0)
        if reachable == self._reachable:
            return
        self._reachable = reachable
        for run in list(self.runs.values()):
            if r.is_finished(run.status):
                continue
            try:
                await self.update(
                    run, lambda s: r.reachability_status(s, reachable, message, utcnow())
                )
            except Exception as exc:
                log.warning("status of %s/%s: %r", run.namespace, run.name, exc)

    # --- the loop -----------------------------------------------------------------------------

    async def _loop(self) -> None:
        next_resync = next_pods = 0.0
        backoff = 0.5
        busy_since: float | None = None
        while True:
            timeout = max(0.0, min(next_resync - time.monotonic(), 1.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            resync = time.monotonic() >= next_resync
            try:
                await self._refresh(resync)
                await self.set_reachable(True, None)
                backoff, busy_since = 0.5, None
            except PrefectBusy:
                # Overloaded, not down: the status keeps saying reachable unless it lasts.
                busy_since = busy_since or time.monotonic()
                if time.monotonic() - busy_since > BUSY_IS_UNREACHABLE_AFTER:
                    await self.set_reachable(False, "Prefect has answered 503 (busy) for a while")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except PrefectUnavailable as exc:
                await self.set_reachable(False, str(exc)[:500])
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            except Exception:
                log.exception("follower pass failed")
                await asyncio.sleep(1)
            if resync:
                next_resync = time.monotonic() + self.settings.resync_seconds
            if time.monotonic() >= next_pods:
                next_pods = time.monotonic() + POD_CHECK_SECONDS
                try:
                    await self._refresh_pods()
                    await self._collect_deleted()
                except Exception:
                    log.exception("pod check failed")
            await self._deadlines()
            self._count_phases()

    def reads_due(self, everything: bool, clock: float | None = None) -> list[str]:
        """The flow runs to read now (and forget as due): those events named, and on a resync
        the `RESYNC_BATCH` unfinished runs a resync read longest ago (never: first)."""
        ids, self._dirty = list(self._dirty), set()
        if everything:
            clock = time.monotonic() if clock is None else clock
            unfinished = [
                run.flow_run_id
                for run in self.runs.values()
                if run.flow_run_id and not r.is_finished(run.status)
            ]
            unfinished.sort(key=lambda i: self._resynced.get(i, float("-inf")))
            batch = unfinished[:RESYNC_BATCH]
            self._resynced = {i: self._resynced[i] for i in unfinished if i in self._resynced}
            self._resynced.update((i, clock) for i in batch)
            named = set(ids)
            ids += [i for i in batch if i not in named]
        return ids

    async def _refresh(self, everything: bool) -> None:
        ids = self.reads_due(everything)
        if not ids:
            return
        try:
            snapshots = await self.gateway.read_flow_runs(ids)
            if everything:
                await self._lost_in_prefect(set(ids) - {s.id for s in snapshots})
            pairs = []
            for snapshot in snapshots:
                uid = self.by_flow_run.get(snapshot.id)
                run = self.runs.get(uid) if uid else None
                if run is not None:
                    pairs.append((run, snapshot))
            finished_now = [
                s.id for run, s in pairs if s.state_type == r.COMPLETED and not run.status.outputs
            ]
            outputs = await self.gateway.read_outputs_of(finished_now) if finished_now else {}
            requests = await self._new_pause_requests(pairs)
        except PrefectUnavailable:
            self._dirty.update(ids)
            raise
        slots = asyncio.Semaphore(STATUS_PATCHES_IN_FLIGHT)

        async def one(run: Tracked, snapshot: r.FlowRunSnapshot) -> None:
            async with slots:
                try:
                    await self.apply(
                        run, snapshot, outputs.get(snapshot.id), requests.get(snapshot.id)
                    )
                    if r.is_finished(run.status) and run.spec.ttl_seconds_after_finished is None:
                        self.untrack(run.uid)
                except Exception as exc:  # one bad object never stops the others
                    log.warning("status of %s/%s: %r", run.namespace, run.name, exc)

        await asyncio.gather(*(one(run, snapshot) for run, snapshot in pairs))
        if everything:
            await self._refresh_dask()

    async def _new_pause_requests(
        self, pairs: list[tuple[Tracked, r.FlowRunSnapshot]]
    ) -> dict[str, PauseRequest]:
        """What each run that paused again since its last status asks (read once a pause)."""
        found = {}
        for run, snapshot in pairs:
            pause = pauses.pause_of(snapshot.labels)
            shown = run.status.input.pause if run.status.input else None
            if snapshot.state_type != r.PAUSED or pause is None or pause == shown:
                continue
            request = await self.gateway.read_pause_request(snapshot.id, pause)
            if request is not None:
                found[snapshot.id] = request
        return found

    async def _refresh_dask(self) -> None:
        """`.status.dask` of running runs from their DaskClusters (one list per namespace)."""
        running = [run for run in self.runs.values() if run.status.phase == api.Phase.RUNNING]
        for namespace in {run.namespace for run in running}:
            try:
                clusters = await self.kube.dask_clusters(namespace)
            except Exception as exc:
                log.debug("DaskClusters in %s: %r", namespace, exc)
                continue
            # a rescheduled run has a new cluster while the old attempt's is being collected
            live = [c for c in clusters if not c["metadata"].get("deletionTimestamp")]
            live.sort(key=lambda c: c["metadata"].get("creationTimestamp") or "")
            by_uid = {c["metadata"].get("labels", {}).get(r.RUN_UID_LABEL): c for c in live}
            for run in running:
                cluster = by_uid.get(run.uid) if run.namespace == namespace else None
                if cluster is None:
                    continue
                async with run.lock:
                    dask = r.dask_status(cluster)
                    if dask != run.status.dask:
                        await self.write(run, run.status.model_copy(update={"dask": dask}))

    async def _lost_in_prefect(self, missing: set[str]) -> None:
        """A flow run a full read no longer returns (twice in a row: a read racing a create
        is not a loss) was deleted in Prefect: its PipelineRun can never finish otherwise."""
        for run in list(self.runs.values()):
            if run.flow_run_id is None or r.is_finished(run.status):
                continue
            if run.flow_run_id not in missing:
                run.missing_reads = 0
                continue
            run.missing_reads += 1
            if run.missing_reads >= 2:
                await self.lose(run, f"flow run {run.flow_run_id} no longer exists in Prefect")

    async def lose(self, run: Tracked, why: str) -> None:
        await self.update(run, lambda s: r.lost_status(s, why, utcnow()))
        with contextlib.suppress(PrefectUnavailable):
            if run.flow_run_id:
                await self.gateway.cancel_flow_run(run.flow_run_id, f"radps: {why}")

    async def _with_pod_reasons(
        self, run: Tracked, status: api.PipelineRunStatus
    ) -> api.PipelineRunStatus:
        """A run that just failed or crashed, with why its pods died (OOMKilled, Evicted)
        when the periodic pod check has not seen it yet: Prefect may report first."""
        known = r.get_condition(status, r.PODS_HEALTHY)
        if known is not None and known.status == "False":
            return status
        try:
            pods = (await self.kube.run_pods(run.namespace)).get(run.uid, [])
        except Exception as exc:
            log.debug("pods of %s/%s: %r", run.namespace, run.name, exc)
            return status
        problems = r.pod_problems(pods)
        if not problems:
            return status
        status = r.pods_status(status, problems, utcnow())
        assert status.phase is not None
        message = r.explain_with_pods(status.message, api.Phase(status.phase), status)
        return status.model_copy(update={"message": message})

    async def _refresh_pods(self) -> None:
        """Why the pods of unfinished runs cannot start or were killed, into each run's
        PodsHealthy condition and an Event; a pod that can never start fails its run, and a
        Running run whose flow-run pod is gone for LOST_AFTER is lost."""
        active = [run for run in self.runs.values() if not r.is_finished(run.status)]
        for namespace in {run.namespace for run in active}:
            try:
                pods = await self.kube.run_pods(namespace)
            except Exception as exc:  # no permission or no API: nothing to say about pods
                log.debug("pods in %s: %r", namespace, exc)
                continue
            for run in active:
                if run.namespace == namespace:
                    await self._apply_pods(run, pods.get(run.uid, []))

    async def _collect_deleted(self) -> None:
        """Delete the Jobs of deleted runs (one Job list per namespace). A run whose flow run
        is being cancelled is left to the worker, which stops its infrastructure, for
        settings.cancel_grace_seconds; then its flow run is ended here."""
        now = time.monotonic()
        self.deleted = {
            uid: d for uid, d in self.deleted.items() if now - d.since < DELETED_RUN_WATCH_SECONDS
        }
        for namespace in {d.namespace for d in self.deleted.values()}:
            with_jobs = await self.kube.run_job_uids(namespace)
            found = {
                uid: d
                for uid, d in self.deleted.items()
                if d.namespace == namespace and uid in with_jobs
            }
            ids = [d.flow_run_id for d in found.values() if d.flow_run_id]
            runs = await self.gateway.read_flow_runs(ids) if ids else []
            stopping = {s.id for s in runs if not s.terminal}
            for uid, gone in found.items():
                if gone.flow_run_id in stopping:
                    if now - gone.since < self.settings.cancel_grace_seconds:
                        continue
                    await self.gateway.force_cancelled(
                        gone.flow_run_id,
                        f"radps: PipelineRun {gone.name} was deleted; its Job is removed",
                    )
                removed = await self.kube.delete_run_jobs(namespace, uid)
                log.info("deleted Jobs %s of deleted run %s/%s", removed, namespace, gone.name)

    async def _apply_pods(self, run: Tracked, pods: list[dict[str, Any]]) -> None:
        flow_pods = [p for p in pods if "prefect.io/flow-run-id" in p["metadata"].get("labels", {})]
        if flow_pods:
            run.flow_pod_seen, run.no_flow_pod_since = True, None
        elif run.flow_pod_seen and run.status.phase == api.Phase.RUNNING:
            run.no_flow_pod_since = run.no_flow_pod_since or time.monotonic()
            if time.monotonic() - run.no_flow_pod_since > LOST_AFTER:
                await self.lose(run, "the flow run is Running but its pod is gone")
                return
        async with run.lock:
            old = r.get_condition(run.status, r.PODS_HEALTHY)
            flow_pod = flow_pods[0]["metadata"]["name"] if flow_pods else None
            new = r.pods_status(run.status, r.pod_problems(pods), utcnow(), flow_pod)
            await self.write(run, new)
            condition = r.get_condition(new, r.PODS_HEALTHY)
            if (
                condition
                and condition.status == "False"
                and (
                    old is None or (old.reason, old.status) != (condition.reason, condition.status)
                )
            ):
                self.post_event(run, "Warning", condition.reason or "Pod", condition.message or "")
        if r.has_operator_verdict(run.status):
            await self.stop_run(run)

    async def stop_run(self, run: Tracked) -> None:
        """After a verdict: cancel the flow run and remove its Jobs (and so its pods)."""
        if run.flow_run_id:
            with contextlib.suppress(PrefectUnavailable):
                await self.gateway.cancel_flow_run(run.flow_run_id, f"radps: {run.status.message}")
        await self.remove_jobs(run)

    async def remove_jobs(self, run: Tracked) -> None:
        try:
            removed = await self.kube.delete_run_jobs(run.namespace, run.uid)
        except Exception as exc:  # no permission: the Job's own deadline remains
            log.debug("Jobs of %s/%s: %r", run.namespace, run.name, exc)
            return
        if removed:
            log.info("deleted Jobs %s of failed run %s/%s", removed, run.namespace, run.name)

    def deadline_due(self, run: Tracked, now: datetime, clock: float) -> Deadline | None:
        """Which of the run's deadlines has passed at ``now`` (``clock``: monotonic seconds,
        for the cancel grace counted from when this operator first saw it Cancelling)."""
        start_by = r.start_deadline(
            run.spec, run.status, run.created, self.settings.start_deadline_seconds
        )
        if start_by is not None and now >= start_by:
            return Deadline.START
        if run.status.phase == api.Phase.CANCELLING and run.flow_run_id:
            run.cancelling_since = run.cancelling_since or clock
            if clock - run.cancelling_since >= self.settings.cancel_grace_seconds:
                return Deadline.CANCEL_GRACE
        else:
            run.cancelling_since = None
        ttl = r.ttl_deadline(run.spec, run.status)
        if ttl is not None and now >= ttl:
            return Deadline.TTL
        deadline = r.timeout_deadline(run.spec, run.status, run.created)
        if (
            deadline is not None
            and now >= deadline
            and run.status.phase != api.Phase.TIMED_OUT
            and run.flow_run_id
        ):
            return Deadline.TIMEOUT
        return None

    async def _deadlines(self) -> None:
        now, clock = utcnow(), time.monotonic()
        for run in list(self.runs.values()):
            try:
                due = self.deadline_due(run, now, clock)
                if due is Deadline.START:
                    await self.fail_to_start(run)
                elif due is Deadline.CANCEL_GRACE:
                    await self.force_cancel(run)
                elif due is Deadline.TTL:
                    log.info("TTL: deleting %s/%s", run.namespace, run.name)
                    self.untrack(run.uid)
                    await self.kube.delete_run(run.namespace, run.name)
                elif due is Deadline.TIMEOUT:
                    await self.time_out(run)
            except PrefectUnavailable:
                return
            except Exception as exc:
                log.warning("deadlines of %s/%s: %r", run.namespace, run.name, exc)

    async def force_cancel(self, run: Tracked) -> None:
        """End a cancellation its worker did not complete (settings.cancel_grace_seconds):
        Cancelled in Prefect, the Jobs removed; the next read makes the run Cancelled."""
        assert run.flow_run_id
        grace = self.settings.cancel_grace_seconds
        message = f"radps: its worker did not stop it within {grace:.0f} s; its Jobs are removed"
        await self.gateway.force_cancelled(run.flow_run_id, message)
        await self.remove_jobs(run)
        self.post_event(run, "Warning", "CancelForced", message.removeprefix("radps: "))
        run.cancelling_since = None
        self._dirty.add(run.flow_run_id)
        self._wake.set()

    async def fail_to_start(self, run: Tracked) -> None:
        seconds = run.spec.start_deadline_seconds or self.settings.start_deadline_seconds
        if run.flow_run_id:  # first: when Prefect is down, both wait for the next pass
            await self.gateway.cancel_flow_run(
                run.flow_run_id, f"radps: not running {seconds} s after creation"
            )
        await self.update(run, lambda s: r.start_deadline_status(s, seconds, utcnow()))
        await self.remove_jobs(run)  # its flow run is cancelled above

    async def time_out(self, run: Tracked) -> None:
        assert run.spec.timeout_seconds is not None and run.flow_run_id
        message = f"exceeded spec.timeoutSeconds ({run.spec.timeout_seconds} s)"
        await self.gateway.cancel_flow_run(run.flow_run_id, message)
        seconds = run.spec.timeout_seconds
        await self.update(run, lambda s: r.timed_out_status(s, seconds, utcnow()))
        self._dirty.add(run.flow_run_id)
        self._wake.set()

    def _count_phases(self) -> None:
        counts: dict[str, int] = {}
        for run in self.runs.values():
            phase = str(run.status.phase or api.Phase.PENDING)
            counts[phase] = counts.get(phase, 0) + 1
        metrics.set_phase_counts(counts)
