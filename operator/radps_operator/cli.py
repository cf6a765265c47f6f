"""The `radps` command line.

Heavy imports (Prefect, the array core) happen inside the commands that need them, after the
process environment is set up, so `radps crd` stays fast and Prefect reads radps's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from radps_operator import __version__

EXIT_INVALID = 2

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


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
    crd.set_defaults(command=cmd_crd)

    pipelines = commands.add_parser("pipelines", help="list the pipeline catalog")
    pipelines.add_argument("name", nargs="?", help="show one pipeline with its parameters")
    pipelines.add_argument("--schema", action="store_true", help="print parameter JSON schemas")
    pipelines.set_defaults(command=cmd_pipelines)

    validate = commands.add_parser("validate", help="check PipelineRun manifests")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.set_defaults(command=cmd_validate)

    run = commands.add_parser(
        "run", help="run PipelineRuns here, without a cluster (several: one after the other)"
    )
    run.add_argument("files", nargs="+", type=Path, metavar="FILE")
    run.add_argument("-v", "--verbose", action="store_true", help="show Prefect and Dask logs")
    run.set_defaults(command=cmd_run)

    server = commands.add_parser(
        "server", help="keep a local Prefect server with its UI running (radps run uses it)"
    )
    server.add_argument("--port", type=int, default=4200)
    server.set_defaults(command=cmd_server)

    operator = commands.add_parser(
        "operator",
        help="run the Kubernetes operator (configured from RADPS_* environment variables)",
    )
    operator.set_defaults(command=cmd_operator)
    return parser


def cmd_crd(args: argparse.Namespace) -> int:
    if args.dask:
        from radps_operator.dask_crds import render_dask_crds

        stdout.out(render_dask_crds(), end="")
        return 0
    from radps_operator.crd import render_crd

    stdout.out(render_crd(), end="")
    return 0


def cmd_pipelines(args: argparse.Namespace) -> int:
    from radps_flows.catalog import get_pipeline, pipelines

    if args.name:
        pipeline = get_pipeline(args.name)
        if pipeline is None:
            stderr.print(f"unknown pipeline {args.name!r} (known: {', '.join(pipelines())})")
            return EXIT_INVALID
        stdout.print(f"[bold]{pipeline.name}[/]: {pipeline.description}")
        stdout.out(json.dumps(pipeline.parameter_schema, indent=2))
        return 0
    if args.schema:
        schemas = {name: p.parameter_schema for name, p in pipelines().items()}
        stdout.out(json.dumps(schemas, indent=2))
        return 0
    for pipeline in pipelines().values():
        stdout.print(f"[bold]{pipeline.name}[/]: {pipeline.description}")
        table = Table("parameter", "type", "default", "description", box=None, padding=(0, 1))
        schema = pipeline.parameter_schema
        for name, prop in schema["properties"].items():
            required = name in schema.get("required", [])
            default = "(required)" if required else json.dumps(prop.get("default"))
            table.add_row(name, _type_name(prop), default, prop.get("description", ""))
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
    from radps_operator.validation import InvalidPipelineRun, load_manifest, validate_manifest

    status = 0
    for path in args.files:
        try:
            run = validate_manifest(load_manifest(path))
        except InvalidPipelineRun as invalid:
            status = EXIT_INVALID
            for error in invalid.errors:
                stderr.print(f"[red]{path}[/]: {error}")
            continue
        stdout.print(f"{path}: valid PipelineRun {run.metadata.name!r} ({run.spec.pipeline})")
    return status


def cmd_run(args: argparse.Namespace) -> int:
    from radps_flows.allocator import keep_freed_memory

    keep_freed_memory()  # before any thread exists: the flows run in this process
    from radps_operator.local.home import radps_home
    from radps_operator.local.runner import configure_process_env

    home = radps_home()
    configure_process_env(home, args.verbose)
    from radps_operator.local.runner import run_locally
    from radps_operator.validation import (
        InvalidPipelineRun,
        check_local_paths,
        load_manifest,
        local_outputs,
        validate_manifest,
    )

    runs = []
    produced: list[str] = []
    for path in args.files:
        try:
            run = validate_manifest(load_manifest(path))
            errors = check_local_paths(run.spec, produced)
            if errors:
                raise InvalidPipelineRun(errors)
        except InvalidPipelineRun as invalid:
            for error in invalid.errors:
                stderr.print(f"[red]{path}[/]: {error}")
            return EXIT_INVALID
        runs.append(run)
        produced += local_outputs(run.spec)
    results = run_locally(runs, home, stdout)
    if len(results) < len(runs):
        skipped = ", ".join(str(p) for p in args.files[len(results) :])
        stdout.print(f"[yellow]not run after that: {skipped}[/]")
    return results[-1].exit_code


def cmd_server(args: argparse.Namespace) -> int:
    from radps_operator.local import server as local_server
    from radps_operator.local.home import radps_home

    home = radps_home()
    running = local_server.find_running_server(home)
    if running is not None:
        stdout.print(f"a radps server is already running: {running.ui_url}")
        return 0
    stdout.print(f"starting the Prefect server on 127.0.0.1:{args.port} (state in {home})")
    server = local_server.start_server(
        home, port=args.port, ui=True, log_path=home / "logs" / "server.log"
    )
    local_server.write_record(home, server)
    stdout.print(f"Prefect UI: [bold]{server.ui_url}[/]; `radps run` now uses it. Ctrl-C stops.")
    signal.signal(signal.SIGTERM, _interrupt)  # stop as Ctrl-C does, removing the record
    try:
        assert server.process is not None
        server.process.wait()
        stderr.print(f"[red]the Prefect server exited (code {server.process.returncode})[/]")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        local_server.remove_record(home)
        server.stop()


def cmd_operator(args: argparse.Namespace) -> int:
    from radps_operator.settings import OperatorSettings, SettingsError

    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        stderr.print(f"[red]radps operator: {exc}[/]")
        return EXIT_INVALID
    os.environ.setdefault("PREFECT_API_URL", settings.prefect_api_url)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from radps_operator.handlers import run_operator

    run_operator(settings)
    return 0


def _prepare_prefect_env() -> None:
    """Point Prefect at radps's home before it is imported."""
    from radps_operator.local.home import prefect_base_env, radps_home

    for key, value in prefect_base_env(radps_home()).items():
        os.environ.setdefault(key, value)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
