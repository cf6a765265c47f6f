"""Stage progress of a flow run, kept on the flow run itself as Prefect labels.

Labels are readable with one `read_flow_run`, so the operator and `radps run` learn progress
from the same place without counting task runs or keeping state of their own.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext

from radps_flows.contract import (
    CACHE_LABEL,
    PROGRESS_COMPLETED_LABEL,
    PROGRESS_TOTAL_LABEL,
    format_cache,
)

#: How long a flow's last report, or a process about to exit, waits for labels to land.
FLUSH_TIMEOUT_SECONDS = 30.0
#: How long a flow's last report waits behind an earlier write before it overtakes it.
OVERTAKE_AFTER_SECONDS = 0.1

log = logging.getLogger(__name__)


class ProgressSender:
    """Sends progress labels from one background thread, so a slow Prefect server never holds
    up the science: a report returns at once, and a newer report of the same flow run
    replaces an unsent older one.

    The last report of a run (completed == total) waits until it is sent. Prefect's
    server merges labels by read-modify-write, so a label write racing the engine's final
    state change can be lost (seen: a Completed run left at 1/3); sent before the flow
    returns, the last labels cannot race it. Readers also take a Completed run as all done,
    and the process flushes at exit."""

    def __init__(self, send: Callable[[Any, int, int], None]):
        self._send = send
        self._lock = threading.Condition()
        self._latest: dict[Any, tuple[int, int, contextvars.Context, threading.Event]] = {}
        self._busy = False
        self._thread: threading.Thread | None = None

    def report(self, flow_run_id: Any, completed: int, total: int) -> threading.Event:
        """Queue the report; the returned event is set once it is sent (or replaced)."""
        sent = threading.Event()
        with self._lock:
            # the caller's context travels along: it says which Prefect API to talk to
            replaced = self._latest.get(flow_run_id)
            self._latest[flow_run_id] = (completed, total, contextvars.copy_context(), sent)
            if replaced is not None:
                replaced[3].set()
            self._lock.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="radps-progress-labels")
                self._thread.daemon = True
                self._thread.start()
        if completed >= total:
            self._land(flow_run_id, sent)
        return sent

    def _land(self, flow_run_id: Any, sent: threading.Event) -> None:
        """Wait until the last report of a run is sent. An earlier write still in flight
        after OVERTAKE_AFTER_SECONDS is overtaken: this report goes out from the caller's
        thread meanwhile. Such a write is one the server answers late, and mostly only to
        refuse as busy (a local SQLite server held some for 2-2.5 s, then 503); waiting for
        it made a short run's end that much later. If it lands after all, its older
        progress is harmless: readers take a Completed run as all done."""
        if sent.wait(OVERTAKE_AFTER_SECONDS):
            return
        with self._lock:
            pending = self._latest.get(flow_run_id)
            if pending is None or pending[3] is not sent:
                pending = None  # already on its way from the background thread
            else:
                del self._latest[flow_run_id]
        if pending is not None:
            completed, total, context, _ = pending
            try:
                context.run(self._send, flow_run_id, completed, total)
            except Exception as exc:  # advisory, as in _run
                log.warning("could not record progress %d/%d: %s", completed, total, exc)
            finally:
                sent.set()
        sent.wait(FLUSH_TIMEOUT_SECONDS)

    def flush(self, timeout: float = FLUSH_TIMEOUT_SECONDS) -> bool:
        """Wait until every queued report is sent; False if that took longer than timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._latest and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._latest:
                    self._lock.wait()
                flow_run_id, (completed, total, context, sent) = self._latest.popitem()
                self._busy = True
            try:
                context.run(self._send, flow_run_id, completed, total)
            except Exception as exc:  # progress is advisory: a lost update must not fail science
                log.warning("could not record progress %d/%d: %s", completed, total, exc)
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()
                sent.set()


#: Waits before retrying a label write the server refused as busy (503, 429) or left
#: unanswered past its attempt's timeout: about a minute in all, what a burst of runs
#: starting and ending together on a local SQLite server took to let each write through.
BUSY_RETRY_DELAYS_SECONDS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, *(5.0,) * 9)
#: The first attempt's timeout. The attempts after it wait as long as the server takes: an
#: attempt given up on still runs in the server, so short timeouts under load only add to it.
FIRST_ATTEMPT_TIMEOUT_SECONDS = 0.5
LATER_ATTEMPT_TIMEOUT_SECONDS = 30.0


def _update_labels(flow_run_id: Any, completed: int, total: int) -> None:
    """One label write, retried quickly while the server says it is busy or is slow to
    answer.

    Prefect merges labels by read-modify-write; on SQLite that transaction loses to a
    concurrent writer (the task runs finishing around it), and the server answers 503, mostly
    at once. Prefect's client would retry after 2 s, which was most of the overhead of a short
    flow run; a busy lock is free again within milliseconds. Now and then a local server held
    one write for 2-2.5 s and then refused it, while a second write went through at once: the
    first attempt therefore gives up after 0.5 s. A write given up on may still land later;
    it carries the same or older labels, and readers take a Completed run as all done."""
    import httpx
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    labels = {PROGRESS_COMPLETED_LABEL: str(completed), PROGRESS_TOTAL_LABEL: str(total)}
    labels.update(_EXTRA_LABELS.get(str(flow_run_id), {}))
    timeout = FIRST_ATTEMPT_TIMEOUT_SECONDS
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):
        client = _thread_client()
        for delay in (*BUSY_RETRY_DELAYS_SECONDS, None):
            try:
                response = client.request(
                    "PATCH",
                    "/flow_runs/{id}/labels",
                    path_params={"id": flow_run_id},
                    json=labels,
                    timeout=timeout,
                )
                if response.status_code not in (429, 503) or delay is None:
                    response.raise_for_status()
                    return
            except httpx.TimeoutException:
                if delay is None:
                    raise
            timeout = LATER_ATTEMPT_TIMEOUT_SECONDS
            time.sleep(delay * random.uniform(0.5, 1.5))


_CLIENTS = threading.local()


def _thread_client() -> Any:
    """This thread's client of the Prefect API the caller's settings name, kept: a new one
    costs 50-80 ms of CPU (httpx builds its TLS context), a label write about 10 ms."""
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

    key = (PREFECT_API_URL.value(), PREFECT_API_KEY.value())
    kept = getattr(_CLIENTS, "kept", None)
    if kept is None or kept[0] != key:
        if kept is not None:
            kept[1].__exit__(None, None, None)
        client = get_client(sync_client=True)
        client.__enter__()
        _CLIENTS.kept = (key, client)
    return _CLIENTS.kept[1]


_EXTRA_LABELS: dict[str, dict[str, str]] = {}
"""Labels a flow run's progress reports carry along (its stage-cache outcomes)."""
_LAST_REPORTED: dict[str, tuple[int, int]] = {}

_SENDER = ProgressSender(_update_labels)
atexit.register(_SENDER.flush)


def _flow_run() -> Any:
    """The flow run of the caller, a flow or one of its tasks (the flow's context is current
    in both), or None outside one."""
    context = FlowRunContext.get()
    return context.flow_run if context is not None else None


def report_progress(completed: int, total: int) -> None:
    """Record that `completed` of `total` stages are done; never fails, and only the last
    report of a run waits for the server."""
    flow_run = _flow_run()
    if flow_run is None:
        return
    _LAST_REPORTED[str(flow_run.id)] = (completed, total)
    _SENDER.report(flow_run.id, completed, total)


def report_cache(outcomes: dict[str, str]) -> None:
    """Record what the stage cache gave this flow run (stage -> outcome)."""
    if outcomes:
        report_labels({CACHE_LABEL: format_cache(outcomes)})


def report_labels(labels: dict[str, str], wait: bool = False) -> None:
    """Labels this flow run carries from now on: they go out at once with the progress last
    reported (before any, with the first), and again with every later report (every flow
    ends with one). ``wait``: until they are sent (a pause, which readers learn of from a
    label)."""
    flow_run = _flow_run()
    if flow_run is None:
        return
    _EXTRA_LABELS.setdefault(str(flow_run.id), {}).update(labels)
    last = _LAST_REPORTED.get(str(flow_run.id))
    if last is not None:  # now as well: a label write lost to a busy server costs less
        sent = _SENDER.report(flow_run.id, *last)
        if wait:
            sent.wait(FLUSH_TIMEOUT_SECONDS)
