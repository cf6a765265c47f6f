"""The `radps` command line.

Heavy imports (Prefect, the array core) happen inside the commands that need them, after the
process environment is set up, so `radps crd` stays fast and Prefect reads radps's settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from radps_flows.contract import CACHED_STAGES
from radps_operator import __version__, cli_cluster
from radps_operator.cli_output import overrides_or_report, print_as, stderr, stdout

if TYPE_CHECKING:
    from radps_operator.local.manifests import Manifest
    from radps_operator.local.server import LocalServer

EXIT_INVALID = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except KeyboardInterrupt:
        stderr.print("interrupted")
        return 130
    except Exception as exc:  # the last line of defence: one clear line, not a traceback
        if os.environ.get("RADPS_DEBUG"):
            raise
        stderr.print(f"[red]radps: {type(exc).__name__}: {exc}[/] (RADPS_DEBUG=1 shows where)")
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radps",
        description="Radio astronomy pipelines: one PipelineRun = one Prefect flow run "
        "with its own Dask cluster.",
    )
    parser.add_argument("--version", action="version", version=f"radps {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    crd = commands.add_parser("crd", help="print the PipelineRun CRD generated from the API")
    crd.add_argument(
        "--dask", action="store_true", help="print the dask-kubernetes CRDs the chart installs"
    )
    crd.add_argument(
        "--schedules", action="store_true", help="print the PipelineSchedule CRD instead"
    )
    crd.set_defaults(command=cmd_crd)

    pipelines = commands.add_parser("pipelines", help="list the pipeline catalog")
    pipelines.add_argument("name", nargs="?", help="show one pipeline with its parameters")
    pipelines.add_argument("--schema", action="store_true", help="print parameter JSON schemas")
    pipelines.set_defaults(command=cmd_pipelines)

    validate = commands.add_parser("validate", help="check PipelineRun manifests")
    _manifest_arguments(validate)
    validate.add_argument(
        "--check-data",
        action="store_true",
        help="also check that every input exists and can be read from here (local paths, "
        "and s3:// URLs with the AWS credentials of this shell)",
    )
    validate.set_defaults(command=cmd_validate)

    run = commands.add_parser(
        "run", help="run PipelineRuns here, without a cluster (several: one after the other)"
    )
    _manifest_arguments(run)
    run.add_argument(
        "-v", "--verbose", action="store_true", help="show Prefect, Dask and xradio logs"
    )
    run.set_defaults(command=cmd_run)

    listing = commands.add_parser(
        "list", help="the runs, the newest first (local; a cluster's with -n or --kubeconfig)"
    )
    listing.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    _output_argument(listing)
    cli_cluster.add_arguments(listing, all_namespaces=True)
    listing.set_defaults(command=cmd_list)

    get = commands.add_parser("get", help="a run: its PipelineRun and status")
    get.add_argument("name", help="the run's name (locally: its latest run, if several)")
    _output_argument(get)
    cli_cluster.add_arguments(get)
    get.set_defaults(command=cmd_get)

    logs = commands.add_parser("logs", help="a run's log (on a cluster: its flow pod's)")
    logs.add_argument("name")
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing until the run ends"
    )
    cli_cluster.add_arguments(logs)
    logs.set_defaults(command=cmd_logs)

    cancel = commands.add_parser(
        "cancel", help="cancel a run that has not ended (on a cluster: sets spec.cancel)"
    )
    cancel.add_argument("name")
    cli_cluster.add_arguments(cancel)
    cancel.set_defaults(command=cmd_cancel)

    rerun = commands.add_parser(
        "rerun",
        help="run a run's PipelineRun again, as <name>-xxxxx, with -p changes (on a "
        "cluster: creates it there)",
    )
    rerun.add_argument("name")
    _parameter_argument(rerun, "change a parameter (the value read as YAML); repeatable")
    rerun.add_argument(
        "--from",
        dest="from_stage",
        choices=CACHED_STAGES,
        help="recompute from this stage on; the stages before it come from the stage cache "
        "(spec.fromStage)",
    )
    rerun.add_argument(
        "-v", "--verbose", action="store_true", help="show Prefect, Dask and xradio logs"
    )
    cli_cluster.add_arguments(rerun)
    rerun.set_defaults(command=cmd_rerun)

    resume = commands.add_parser(
        "resume",
        help="answer the pause a run waits at, e.g. -p niter=500 or -p action=stop (on a "
        "cluster: sets spec.resume)",
    )
    resume.add_argument("name")
    _parameter_argument(resume, "a field of the answer (the value read as YAML); repeatable")
    cli_cluster.add_arguments(resume)
    resume.set_defaults(command=cmd_resume)

    server = commands.add_parser(
        "server",
        help="keep a local Prefect server with its UI, and a warm process for radps run",
    )
    server.add_argument(
        "action",
        nargs="?",
        choices=["start", "stop", "status", "env"],
        default="start",
        help="start (the default: in the foreground until Ctrl-C), stop, status, or env (the "
        'environment for Prefect\'s own CLI: eval "$(radps server env)")',
    )
    server.add_argument("--port", type=int, default=4200)
    server.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="stop after this long without a run (default: never; in the background "
        "$RADPS_SERVER_IDLE_SECONDS, 900)",
    )
    server.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
    server.set_defaults(command=cmd_server)

    operator = commands.add_parser(
        "operator",
        help="run the Kubernetes operator (configured from RADPS_* environment variables)",
    )
    operator.set_defaults(command=cmd_operator)
    return parser


def _manifest_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="PipelineRun manifests (several documents each, if separated by ---); - reads "
        "standard input",
    )
    _parameter_argument(
        command,
        "set a parameter of every run (the value read as YAML: -p niter=2000, "
        "-p image_formats=[fits,casa]); repeatable",
    )


def _parameter_argument(command: argparse.ArgumentParser, help: str) -> None:
    command.add_argument(
        "-p",
        "--parameter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="parameters",
        help=help,
    )


def _output_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "-o", "--output", choices=["table", "json", "yaml"], default="table", help="format"
    )


def cmd_list(args: argparse.Namespace) -> int:
    if cli_cluster.wanted(args):
        return cli_cluster.run_command("list", args)
    from radps_operator.local import history

    with history.local_prefect() as (client, _):
        rows = [history.summary_row(r) for r in history.runs(client, limit=args.limit)]
    if args.output != "table":
        print_as(rows, args.output)
        return 0
    table = Table("NAME", "PIPELINE", "STATE", "STARTED", "DURATION", box=None)
    for row in rows:
        duration = "-" if row["duration_s"] is None else f"{row['duration_s']:g} s"
        started = (row["started"] or "-")[:19].replace("T", " ")
        table.add_row(row["name"], row["pipeline"], row["state"], started, duration)
    stdout.print(table)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    if cli_cluster.wanted(args):
        return cli_cluster.run_command("get", args)
    from radps_operator.local import history

    with history.local_prefect() as (client, server):
        flow_run = _local_run(client, args.name)
        if flow_run is None:
            return 1
        document = history.record(client, flow_run, server.ui_url)
    if args.output != "table":
        print_as(document, args.output)
        return 0
    status = document["status"]
    stdout.print(f"[bold]{escape(args.name)}[/] ({document['spec'].get('pipeline')})")
    table = Table(box=None, show_header=False)
    for key in ("phase", "message", "startTime", "completionTime", "flowRunUrl"):
        if key in status:
            table.add_row(key, escape(str(status[key])))
    for key, value in (document["spec"].get("parameters") or {}).items():
        table.add_row(f"parameters.{key}", escape(json.dumps(value)))
    for output in status.get("outputs", []):
        table.add_row(f"output {output.get('name')}", escape(str(output.get("uri"))))
    for stage, outcome in (status.get("cache") or {}).items():
        table.add_row(f"cache {stage}", escape(outcome))
    for key, value in (status.get("summary") or {}).items():
        table.add_row(str(key), escape(str(value)))
    stdout.print(table)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    if cli_cluster.wanted(args):
        return cli_cluster.run_command("logs", args)
    from radps_operator.local import history

    with history.local_prefect() as (client, _):
        flow_run = _local_run(client, args.name)
        if flow_run is None:
            return 1
        for entry in history.logs(client, flow_run.id, follow=args.follow):
            level = logging.getLevelName(entry.level)
            stdout.out(f"{entry.timestamp:%H:%M:%S} {level:<7} {entry.message}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    if cli_cluster.wanted(args):
        return cli_cluster.run_command("cancel", args)
    from radps_operator.local import history

    with history.local_prefect() as (client, _):
        flow_run = _local_run(client, args.name)
        if flow_run is None:
            return 1
        stdout.print(escape(history.request_cancel(client, flow_run)))
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    if cli_cluster.wanted(args):
        return cli_cluster.run_command("rerun", args)
    from radps_operator.local import history
    from radps_operator.local.manifests import Manifest, named

    overrides = overrides_or_report(args.parameters)
    if overrides is None:
        return EXIT_INVALID
    with history.local_prefect() as (client, _):
        flow_run = _local_run(client, args.name)
        if flow_run is None:
            return 1
        document = history.rerun_manifest(client, flow_run, overrides, args.from_stage)
    return _run_manifests([Manifest(f"rerun of {args.name}", named(document))], args)


def cmd_resume(args: argparse.Namespace) -> int:
    if cli_cluster.wanted(args):
        return cli_cluster.run_command("resume", args)
    from radps_operator.local import history
    from radps_operator.validation import InvalidPipelineRun

    answer = overrides_or_report(args.parameters)
    if answer is None:
        return EXIT_INVALID
    with history.local_prefect() as (client, _):
        flow_run = _local_run(client, args.name)
        if flow_run is None:
            return 1
        try:
            stdout.print(escape(history.request_resume(client, flow_run, answer)))
        except InvalidPipelineRun as invalid:
            for error in invalid.errors:
                stderr.print(f"[red]{escape(args.name)}: {escape(str(error))}[/]")
            return EXIT_INVALID
    return 0


def _local_run(client: Any, name: str) -> Any | None:
    """The latest local run named ``name``, or None after saying there is none."""
    from radps_operator.local import history

    try:
        return history.latest(client, name)
    except history.RunNotFound as exc:
        stderr.print(f"[red]{escape(str(exc))}[/]")
        return None


def _read_manifests(args: argparse.Namespace) -> list[Manifest] | None:
    """The documents of ``args.files`` with ``args.parameters`` applied, or None after
    printing every problem."""
    from radps_operator.local.manifests import read_manifests
    from radps_operator.validation import InvalidPipelineRun

    try:
        return read_manifests(args.files, args.parameters)
    except InvalidPipelineRun as invalid:
        for error in invalid.errors:
            stderr.print(f"[red]{escape(str(error))}[/]")
        return None


def cmd_crd(args: argparse.Namespace) -> int:
    if args.dask:
        from radps_operator.dask_crds import render_dask_crds

        stdout.out(render_dask_crds(), end="")
        return 0
    from radps_operator.crd import render_crd, render_schedule_crd

    stdout.out(render_schedule_crd() if args.schedules else render_crd(), end="")
    return 0


def cmd_pipelines(args: argparse.Namespace) -> int:
    from radps_flows.catalog import get_pipeline, pipelines

    if args.name:
        pipeline = get_pipeline(args.name)
        if pipeline is None:
            stderr.print(f"unknown pipeline {args.name!r} (known: {', '.join(pipelines())})")
            return EXIT_INVALID
        stdout.print(f"[bold]{pipeline.name}[/]: {escape(pipeline.description)}")
        stdout.out(json.dumps(pipeline.parameter_schema, indent=2))
        return 0
    if args.schema:
        schemas = {name: p.parameter_schema for name, p in pipelines().items()}
        stdout.out(json.dumps(schemas, indent=2))
        return 0
    for pipeline in pipelines().values():
        stdout.print(f"[bold]{pipeline.name}[/]: {escape(pipeline.description)}")
        table = Table("parameter", "type", "default", "description", box=None, padding=(0, 1))
        table.columns[3].overflow = "fold"  # never cut a description short
        schema = pipeline.parameter_schema
        for name, prop in schema["properties"].items():
            required = name in schema.get("required", [])
            default = "(required)" if required else json.dumps(prop.get("default"))
            table.add_row(
                *(escape(cell) for cell in (name, _type_name(prop), default)),
                escape(prop.get("description", "")),
            )
        stdout.print(table)
        stdout.print()
    return 0


def _type_name(prop: dict) -> str:
    if "enum" in prop:
        return "|".join(json.dumps(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type_name(p) for p in prop["anyOf"] if p.get("type") != "null")
    if prop.get("type") == "array":
        return f"list of {_type_name(prop.get('items', {}))}"
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    return prop.get("type", "any")


def cmd_validate(args: argparse.Namespace) -> int:
    from radps_operator.validation import (
        InvalidPipelineRun,
        check_local_paths,
        local_outputs,
        validate_manifest,
    )

    manifests = _read_manifests(args)
    if manifests is None:
        return EXIT_INVALID
    status = 0
    produced: list[str] = []
    for manifest in manifests:
        path = manifest.source
        if manifest.document.get("kind") == "PipelineSchedule":
            status = max(status, _validate_schedule(manifest.document, path))
            continue
        try:
            run = validate_manifest(manifest.document)
            if args.check_data:
                problems = check_local_paths(run.spec, produced)
                produced += local_outputs(run.spec)
                if problems:
                    raise InvalidPipelineRun(problems)
        except InvalidPipelineRun as invalid:
            status = EXIT_INVALID
            for error in invalid.errors:
                stderr.print(f"[red]{escape(path)}[/]: {escape(str(error))}")
            continue
        stdout.print(
            f"{escape(path)}: valid PipelineRun {run.metadata.name!r} ({run.spec.pipeline})"
        )
    return status


def _validate_schedule(document: dict[str, Any], path: str) -> int:
    """`radps validate` of a PipelineSchedule: its template is checked as a PipelineRun."""
    from radps_operator.validation import InvalidPipelineRun, validate_schedule_manifest

    try:
        schedule = validate_schedule_manifest(document)
    except InvalidPipelineRun as invalid:
        for error in invalid.errors:
            stderr.print(f"[red]{escape(path)}[/]: {escape(str(error))}")
        return EXIT_INVALID
    stdout.print(
        f"{escape(path)}: valid PipelineSchedule {schedule.metadata.name!r} "
        f"({schedule.spec.template.spec.pipeline}, {escape(schedule.spec.schedule)!r})"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    manifests = _read_manifests(args)  # here: standard input is this process's
    if manifests is None:
        return EXIT_INVALID
    return _run_manifests(manifests, args)


def _run_manifests(manifests: list[Manifest], args: argparse.Namespace) -> int:
    """`radps run` of ``manifests``: in a fork of the warm server where it can, else here."""
    from radps_operator.local import server as local_server
    from radps_operator.local.home import configure_process_env, process_env, radps_home

    home = radps_home()
    environment = dict(os.environ)
    configure_process_env(home, args.verbose)
    server = local_server.find_running_server(home)
    if server is not None:
        # The server's fork validates the runs as this process would, and reports the same
        # errors; this process then imports nothing heavy (0.2-0.3 s of every warm run).
        code, server = _run_warm(server, home, args, manifests)
        if code is not None:
            return code
    from radps_flows.allocator import keep_freed_memory

    keep_freed_memory()  # before any thread exists: the flows run in this process
    from radps_operator.local.runner import validated_runs

    runs = validated_runs(manifests, stderr)
    if runs is None:
        return EXIT_INVALID
    if server is None and local_server.idle_seconds_setting() > 0:
        try:
            server, started = local_server.start_background(
                home, process_env(home, False, environment)
            )
        except local_server.ServerError as exc:
            stderr.print(f"[yellow]radps: {exc}; this run gets a private server[/]")
        else:
            if started:
                stdout.print(
                    f"[dim]started a background radps server ({server.ui_url}); it stops "
                    f"after {local_server.idle_seconds_setting():g} s without a run, or with "
                    "`radps server stop`[/]"
                )
            code, server = _run_warm(server, home, args, manifests)
            if code is not None:
                return code
    from radps_operator.local.runner import run_and_report

    sources = [m.source for m in manifests]
    if server is None:
        return run_and_report(runs, sources, home, stdout)  # a private server
    with local_server.using(home):  # the background server is not idle meanwhile
        return run_and_report(runs, sources, home, stdout, server)


def _run_warm(
    server: LocalServer, home: Path, args: argparse.Namespace, manifests: list[Manifest]
) -> tuple[int | None, LocalServer | None]:
    """The run's exit code from a fork of the warm `server`; or None (no runner, `-v`, or a
    refusal, said on the terminal) and the server this process may use instead: none where
    that one did not answer, unless another now does."""
    if not server.runner_socket or args.verbose:
        return None, server
    from radps_operator.local import server as local_server
    from radps_operator.local import warm

    outcome = warm.run_warm(server.runner_socket, [m.to_json() for m in manifests])
    if not isinstance(outcome, warm.Refused):
        return outcome, server
    stdout.print(f"[dim]running in this process: {outcome.reason}[/]")
    if outcome.unreachable:  # stopping, perhaps: only a server that answers is used
        return None, local_server.find_running_server(home)
    return None, server


def cmd_server(args: argparse.Namespace) -> int:
    from radps_operator.local import server as local_server
    from radps_operator.local.home import radps_home

    home = radps_home()
    if args.action == "stop":
        pid = local_server.stop_running_server(home)
        stdout.print(f"stopped the radps server (PID {pid})" if pid else "no radps server runs")
        return 0
    running = local_server.find_running_server(home)
    if args.action == "env":
        if running is None:
            stderr.print(f"no radps server runs for {home}: `radps server` starts one")
            return 1
        # Prefect's CLI talks to the API at PREFECT_API_URL, and otherwise (an ephemeral
        # server of its own, refused here) waits ~50 s before it gives up.
        stdout.out(f"export PREFECT_API_URL={running.api_url}")
        return 0
    if args.action == "status":
        if running is None:
            stdout.print(f"no radps server runs for {home}")
            return 1
        kind = "background" if running.background else "started by hand"
        stdout.print(f"radps server (PID {running.supervisor_pid}, {kind}): {running.ui_url}")
        stdout.print(f'Prefect\'s CLI: eval "$(radps server env)" (API {running.api_url})')
        return 0
    if running is not None:
        stdout.print(f"a radps server is already running: {running.ui_url}")
        return 0
    return _serve(home, args)


def _serve(home: Path, args: argparse.Namespace) -> int:
    """The Prefect server, and a warm process that forks a child per `radps run`
    (local.warm), until Ctrl-C, SIGTERM or (in the background) idleness."""
    from radps_flows.allocator import keep_freed_memory

    keep_freed_memory()  # inherited by the runs forked from this process
    from radps_operator.local import server as local_server
    from radps_operator.local import warm
    from radps_operator.local.home import configure_process_env

    configure_process_env(home, verbose=False)
    life_lock = local_server.hold_life_lock(home)
    if life_lock is None:
        stderr.print(f"[red]another radps server of {home} is starting or running[/]")
        return 1
    idle = args.idle_timeout
    if args.background and idle is None:
        idle = local_server.idle_seconds_setting()
    idle = idle or None  # 0: never idle
    port = local_server.port_or_free(args.port) if args.background else args.port
    stdout.print(f"starting the Prefect server on 127.0.0.1:{port} (state in {home})")
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stop as Ctrl-C does, removing the record
        signal.signal(sig, _interrupt)
    settings = warm.import_settings(os.environ)  # before the imports: an edit meanwhile shows
    server = local_server.start_server(
        home, port=port, ui=True, log_path=home / "logs" / "prefect-server.log", wait=False
    )
    runner: warm.WarmRunner | None = None
    try:
        warm.warm_up()  # while the Prefect server starts
        runner = warm.WarmRunner(home, settings, _run_child(home, server), [life_lock])
        local_server.wait_healthy(server)
        server.runner_socket = str(runner.listen())
        server.background = args.background
        local_server.write_record(home, server)
        stdout.print(
            f"Prefect UI: [bold]{server.ui_url}[/]; `radps run` now uses it. "
            + (f"Stops after {idle:g} s without a run." if idle else "Ctrl-C stops.")
        )
        process = server.process
        assert process is not None
        reason = runner.serve(
            alive=lambda: process.poll() is None,
            idle_seconds=idle,
            in_use=lambda: local_server.in_use(home),
        )
        stdout.print(f"the radps server stops: {reason}")
        return 0 if process.poll() is None else 1
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second one: no matter
            signal.signal(sig, signal.SIG_IGN)
        local_server.remove_record(home)  # first: no new run may pick this server
        try:
            if runner is not None:
                runner.close()
        finally:
            server.stop()


def _run_child(home: Path, server: Any) -> Callable[[Any], int]:
    """What a run forked from the warm server does: what `radps run` does in its own process,
    on this server."""

    def run(request: Any) -> int:
        from radps_operator.local.manifests import Manifest
        from radps_operator.local.runner import (
            drain_prefect_services,
            run_and_report,
            validated_runs,
        )
        from radps_operator.local.server import LocalServer

        out = Console(highlight=False)  # this terminal's, not the server's log
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        manifests = [Manifest.from_json(m) for m in request.manifests]
        runs = validated_runs(manifests, err)
        if runs is None:
            return EXIT_INVALID
        attached = LocalServer(api_url=server.api_url, ui_url=server.ui_url, process=None)
        try:
            return run_and_report(runs, [m.source for m in manifests], home, out, attached)
        finally:
            drain_prefect_services()  # the child ends with os._exit: no exit-time flush

    return run


def cmd_operator(args: argparse.Namespace) -> int:
    from radps_operator.settings import OperatorSettings, SettingsError

    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        stderr.print(f"[red]radps operator: {exc}[/]")
        return EXIT_INVALID
    os.environ.setdefault("PREFECT_API_URL", settings.prefect_api_url)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    keep_generated_clients_out()
    from radps_operator.handlers import run_operator

    run_operator(settings)
    return 0


def keep_generated_clients_out() -> None:
    """Make the generated Kubernetes clients unimportable in this process (the operator's,
    before kopf is imported): kopf imports their models for its type checks whenever they are
    installed, ~50 MiB of the operator's memory, and the operator calls the API server through
    kopf and :mod:`radps_operator.kube` only. A None in sys.modules makes an import fail."""
    for name in ("kubernetes", "kubernetes_asyncio", "pykube"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
