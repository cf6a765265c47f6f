"""`radps run`: one PipelineRun through the same flows, on this machine.

The flow runs in the main thread (so Ctrl-C and Prefect's timeouts behave) with a DaskTaskRunner
over a LocalCluster; a second thread reads the flow run back from Prefect to draw progress, the
same way the operator follows runs in a cluster.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from radps_operator import api
from radps_operator.local import history
from radps_operator.local import server as local_server
from radps_operator.local.home import prefect_base_env
from radps_operator.local.manifests import Manifest

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

_cleanups: list[Callable[[], None]] = []
"""What a Ctrl-C must still undo before the process exits at once (LIFO)."""


@contextlib.contextmanager
def _cleanup_on_interrupt(action: Callable[[], None]) -> Iterator[None]:
    _cleanups.append(action)
    try:
        yield
    finally:
        _cleanups.remove(action)


@dataclass
class RunResult:
    state: str
    """Prefect state name: Completed, Failed, Crashed, Cancelled, TimedOut."""
    message: str = ""
    outputs: list[dict[str, str]] = field(default_factory=list)
    flow_run_id: str | None = None
    link: str | None = None
    summary: list[dict[str, str]] = field(default_factory=list)
    """The science summary's rows (quantity, value), where the pipeline made one."""

    @property
    def exit_code(self) -> int:
        if self.state == "Completed":
            return EXIT_COMPLETED
        if self.state == "Cancelled":
            return EXIT_INTERRUPTED
        return EXIT_FAILED


def validated_runs(manifests: list[Manifest], errors: Console) -> list[api.PipelineRun] | None:
    """The PipelineRuns of `manifests`, checked as the operator checks them and against this
    machine's paths (the inputs of a later run may be the outputs of an earlier one); None
    after printing every problem of the first one that has any."""
    from radps_operator.validation import (
        InvalidPipelineRun,
        check_local_paths,
        local_outputs,
        validate_manifest,
    )

    runs = []
    produced: list[str] = []
    for manifest in manifests:
        try:
            run = validate_manifest(manifest.document)
            problems = check_local_paths(run.spec, produced)
            if problems:
                raise InvalidPipelineRun(problems)
        except InvalidPipelineRun as invalid:
            for error in invalid.errors:
                errors.print(f"[red]{escape(manifest.source)}[/]: {escape(str(error))}")
            return None
        runs.append(run)
        produced += local_outputs(run.spec)
    return runs


def run_and_report(
    runs: list[api.PipelineRun],
    sources: list[str],
    home: Path,
    console: Console,
    server: local_server.LocalServer | None = None,
) -> int:
    """Run `runs` (read from `sources`) here; the exit code of the last one that ran."""
    results = run_locally(runs, home, console, server)
    if len(results) < len(runs):
        skipped = ", ".join(sources[len(results) :])
        console.print(f"[yellow]not run after that: {skipped}[/]")
    return results[-1].exit_code


@contextlib.contextmanager
def prefect_server(
    home: Path, console: Console, known: local_server.LocalServer | None = None
) -> Iterator[local_server.LocalServer]:
    """`known`, or the running `radps server` if there is one, else a private server for this
    run."""
    running = known or local_server.find_running_server(home)
    if running is not None:
        yield running
        return
    with _database_for_this_run(home) as database:
        console.print("[dim]starting an embedded Prefect server (radps server keeps one up)[/]")
        server = local_server.start_server(home, database=database)
        try:
            with _cleanup_on_interrupt(server.stop):
                yield server
        finally:
            drain_prefect_services()
            server.stop()


@contextlib.contextmanager
def _database_for_this_run(home: Path) -> Iterator[Path]:
    """The shared database when no other embedded server holds it; otherwise a private one
    (two servers on one SQLite file fail with 'database is locked')."""
    shared = Path(prefect_base_env(home)["PREFECT_HOME"]) / "radps.db"
    with open(shared.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            private = shared.with_name(f"radps-{os.getpid()}.db")

            def remove_private() -> None:
                for leftover in private.parent.glob(f"{private.name}*"):
                    leftover.unlink(missing_ok=True)

            try:
                with _cleanup_on_interrupt(remove_private):
                    yield private
            finally:
                remove_private()
            return
        yield shared


def drain_prefect_services() -> None:
    """Send queued logs and events while the server is still up; otherwise Prefect retries
    them against the stopped server for over a minute at exit ('Error logging to API')."""
    with contextlib.suppress(Exception):
        from prefect._internal.concurrency.services import QueueService

        QueueService.drain_all(timeout=15)


def run_locally(
    runs: list[api.PipelineRun],
    home: Path,
    console: Console,
    server: local_server.LocalServer | None = None,
) -> list[RunResult]:
    """Run the PipelineRuns one after the other on one Prefect server (`server`, else as
    `prefect_server` finds one), each to its end, stopping after the first that does not
    complete (later ones usually need its outputs)."""
    results = []
    with prefect_server(home, console, server) as server:
        for run in runs:
            result = _run_with_server(run, server, console)
            print_result(console, result)
            results.append(result)
            if result.state != "Completed":
                break
    return results


def _run_with_server(
    run: api.PipelineRun, server: local_server.LocalServer, console: Console
) -> RunResult:
    from prefect._internal.plugins.collections import load_prefect_collections
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )

    from radps_flows import provenance
    from radps_flows.catalog import get_pipeline

    # Prefect imports its collections (prefect-kubernetes...) once per process, otherwise
    # inside the flow run's first task (0.7 s of a 4 s run): a process start-up cost.
    load_prefect_collections()
    from radps_flows.cluster import local_task_runner
    from radps_operator.reconcile import dask_config

    pipeline = get_pipeline(run.spec.pipeline)
    assert pipeline is not None, "validated before"
    config = dask_config(run.spec)  # reaches the blocks through the task runner
    provenance.set_local_run(run.metadata.name, run.spec.to_wire())
    flow = pipeline.load_flow().with_options(
        task_runner=local_task_runner(config),
        retries=run.spec.retries,
        timeout_seconds=run.spec.timeout_seconds,
    )
    # No flow-run heartbeats: Prefect's engine joins their thread at the run's end, and it
    # sleeps in 1 s steps (0.5 s on average, of a 6 s run); they serve automations that
    # detect crashed runs, where a local run's process is watched by the `radps run` itself.
    settings = {PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    with temporary_settings(settings):
        with get_client(sync_client=True) as client:
            flow_run = client.create_flow_run(
                flow,
                parameters=run.spec.flow_parameters(),
                name=run.metadata.name,
                tags=[history.RADPS_TAG, f"pipeline:{pipeline.name}"],
            )
            history.record_manifest(
                client,
                flow_run.id,
                {
                    "apiVersion": "radps.io/v1alpha1",
                    "kind": "PipelineRun",
                    "metadata": {"name": run.metadata.name},
                    "spec": run.spec.to_wire(),
                },
            )
        link = server.flow_run_link(flow_run.id) if server.process is None else None
        if link:
            console.print(f"flow run [bold]{flow_run.name}[/]: {link}")
        with (
            _ProgressDisplay(console, run, flow_run.id) as display,
            _CancelOnCtrlC(console, flow_run.id, display),
        ):
            state = run_flow(
                flow, flow_run=flow_run, parameters=run.spec.flow_parameters(), return_type="state"
            )
        outputs: list[dict[str, str]] = []
        summary: list[dict[str, str]] = []
        message = state.message or ""
        if state.is_completed():
            outputs = state.result(raise_on_failure=False) or []
            summary = _science_summary(flow_run.id)
        else:
            error = state.result(raise_on_failure=False)
            if isinstance(error, BaseException):
                message = f"{type(error).__name__}: {error}"
        return RunResult(
            state=state.name or str(state.type.value).title(),
            message=message,
            outputs=outputs,
            flow_run_id=str(flow_run.id),
            link=link,
            summary=summary,
        )


def _science_summary(flow_run_id: Any) -> list[dict[str, str]]:
    """The rows of the run's science summary artifact; none where it has none (a pipeline
    without images) or it cannot be read (the summary is a courtesy, not the result)."""
    from prefect.client.orchestration import get_client

    from radps_flows.contract import SUMMARY_ARTIFACT_DESCRIPTION

    try:
        with get_client(sync_client=True) as client:
            tables = history.table_artifacts(client, flow_run_id)
    except Exception:
        return []
    return tables.get(SUMMARY_ARTIFACT_DESCRIPTION, [])


class _CancelOnCtrlC:
    """Ctrl-C during a flow run: record Cancelled, undo what this process started, and exit
    at once. Dask's worker threads cannot be interrupted, so a graceful unwind would wait for
    the running task to finish (34 s measured on a large synthesize)."""

    def __init__(self, console: Console, flow_run_id: Any, display: _ProgressDisplay):
        self._console = console
        self._flow_run_id = flow_run_id
        self._display = display
        self._previous: Any = None
        self._once = threading.Lock()

    def __enter__(self) -> _CancelOnCtrlC:
        self._previous = signal.signal(signal.SIGINT, self._cancel)
        self._display.on_cancel_requested = self.cancel
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _cancel(self, signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        self.cancel("Ctrl-C")

    def cancel(self, how: str) -> None:
        """Record Cancelled, undo, exit: from the main thread on Ctrl-C, from the progress
        poller on `radps cancel` (the main thread may be inside a long call, a minor cycle
        in numba, where no signal handler runs until it returns)."""
        if not self._once.acquire(blocking=False):
            return  # the other way is already at it
        self._display.stop()
        self._console.print("[yellow]cancelling the flow run...[/]")
        _mark_cancelled(self._flow_run_id, how)
        drain_prefect_services()
        for action in reversed(_cleanups):
            with contextlib.suppress(Exception):
                action()
        self._console.print(f"[bold yellow]Cancelled[/]: {how}")
        self._console.file.flush()
        os._exit(EXIT_INTERRUPTED)


def _mark_cancelled(flow_run_id: Any, how: str = "Ctrl-C") -> None:
    """Ctrl-C leaves the flow run Crashed in Prefect's eyes; the user meant Cancelled."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    message = f"Cancelled from radps run ({how})"
    with contextlib.suppress(Exception), get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Cancelled(message=message), force=True)


class _ProgressDisplay:
    """Progress bar fed by reading the flow run back from Prefect once a second: the stages
    done, the state and the stage running. A flow run found Cancelling (`radps cancel`, from
    another shell) is cancelled here as Ctrl-C cancels it.

    The flow runs in this process: the poller shares its CPU and GIL with the array work, so
    it keeps one client open (making one costs tens of ms of Python) and the bar redraws
    twice a second (rich's default is ten)."""

    POLL_SECONDS = 1.0

    def __init__(self, console: Console, run: api.PipelineRun, flow_run_id: Any):
        self._console = console
        self._run = run
        self._flow_run_id = flow_run_id
        self._stop = threading.Event()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            refresh_per_second=2,
        )
        self._task = self._progress.add_task(
            f"{run.spec.pipeline} {run.metadata.name}", total=None, state="Pending"
        )
        self._thread: threading.Thread | None = None
        self._shown_pause: int | None = None
        self.on_cancel_requested: Callable[[str], None] | None = None
        """Called from the poller when the flow run is found Cancelling."""

    def __enter__(self) -> _ProgressDisplay:
        self._progress.start()
        # The poller must see this thread's Prefect settings (the API URL), which live in
        # context variables that a new thread does not inherit.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._poll,), name="radps-progress", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._refresh()
        self._progress.stop()

    def _poll(self) -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while not self._stop.wait(self.POLL_SECONDS):
                self._refresh(client)

    def _refresh(self, client: Any = None) -> None:
        from prefect.client.orchestration import get_client

        from radps_flows.contract import read_progress

        try:
            if client is None:
                with get_client(sync_client=True) as client:
                    flow_run = client.read_flow_run(self._flow_run_id)
            else:
                flow_run = client.read_flow_run(self._flow_run_id)
        except Exception:  # a missed refresh only delays the bar
            return
        state = flow_run.state.name if flow_run.state else "Pending"
        if flow_run.state is not None and flow_run.state.is_cancelling() and client is not None:
            if self.on_cancel_requested is not None:
                self.on_cancel_requested("radps cancel")  # does not return
            return
        if flow_run.state is not None and flow_run.state.is_running() and client is not None:
            stage = _running_stage(client, self._flow_run_id)
            state = f"{state}: {stage}" if stage else state
        if flow_run.state is not None and flow_run.state.is_paused() and client is not None:
            self._show_pause(client, flow_run)
        completed_run = flow_run.state is not None and flow_run.state.is_completed()
        progress = read_progress(flow_run.labels, run_completed=completed_run)
        if progress:
            completed, total = progress
            self._progress.update(self._task, completed=completed, total=total, state=state)
        else:
            self._progress.update(self._task, state=state)

    def _show_pause(self, client: Any, flow_run: Any) -> None:
        """Once a pause: what the run asks, its previews, and how to answer."""
        from radps_flows.contract import PauseRequest, pause_input_key
        from radps_operator.pauses import pause_of

        pause = pause_of(flow_run.labels or {})
        if pause is None or pause == self._shown_pause:
            return
        try:
            text = client.read_flow_run_input(flow_run.id, pause_input_key(pause))
            request = PauseRequest.from_json(json.loads(text))
        except Exception:  # not written yet: the next poll shows it
            return
        if request is None:
            return
        self._shown_pause = pause
        name = self._run.metadata.name
        if request.refused:
            self._console.print(f"[red]the last answer was refused:[/] {escape(request.refused)}")
        self._console.print(f"[bold yellow]paused[/] ({pause}): {escape(request.prompt)}")
        for preview in request.previews:
            self._console.print(f"  {escape(preview)}")
        niter = request.defaults.get("niter")
        self._console.print(
            f"  answer in another shell: [bold]radps resume {escape(name)} -p niter={niter}[/] "
            f"(or -p threshold_jy=..., -p 'mask=[[x0,y0,x1,y1]]', -p action=stop); "
            f"it waits {request.timeout_seconds} s, then does {request.timeout_action}"
        )


def _running_stage(client: Any, flow_run_id: Any) -> str | None:
    """The name of the stage (task) the flow run is running, the latest started if several."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    try:
        running = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))
            ),
        )
    except Exception:  # the stage is a courtesy: the bar goes on without it
        return None
    if not running:
        return None
    latest = max(running, key=lambda t: str(t.start_time or t.expected_start_time or ""))
    return latest.name.rsplit("-", 1)[0] if "-" in latest.name else latest.name


def print_result(console: Console, result: RunResult) -> None:
    colour = {"Completed": "green", "Cancelled": "yellow"}.get(result.state, "red")
    detail = f": {result.message}" if result.message and result.state != "Completed" else ""
    console.print(f"[bold {colour}]{result.state}[/]{detail}")
    if result.outputs:
        table = Table("output", "kind", "where", box=None, header_style="bold")
        for output in result.outputs:
            table.add_row(output["name"], output["kind"], output["uri"])
        console.print(table)
    if result.summary:
        table = Table("science summary", "", box=None, header_style="bold")
        for row in result.summary:
            table.add_row(str(row.get("quantity", "")), str(row.get("value", "")))
        console.print(table)
