"""`radps list|get|logs|cancel|rerun|resume` against a cluster's PipelineRuns (`--kubeconfig`,
`--context`, `-n`, `-A`), in kubectl's manner: the same commands read local runs without
those options. The calls themselves are :mod:`radps_operator.kube_runs`."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator

from rich.markup import escape
from rich.table import Table

from radps_operator import kube_runs
from radps_operator.cli_output import overrides_or_report, print_as, stderr, stdout

EXIT_INVALID = 2


def add_arguments(command: argparse.ArgumentParser, all_namespaces: bool = False) -> None:
    """The options that point a command at a cluster instead of the local server."""
    group = command.add_argument_group(
        "on a cluster (any of these: the cluster's PipelineRuns, not the local runs)"
    )
    group.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (default: $KUBECONFIG)")
    group.add_argument("--context", help="kubeconfig context (default: its current one)")
    group.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    if all_namespaces:
        group.add_argument(
            "-A", "--all-namespaces", action="store_true", help="runs of every namespace"
        )


def wanted(args: argparse.Namespace) -> bool:
    """Whether the command is meant for a cluster."""
    return bool(
        args.kubeconfig or args.context or args.namespace or getattr(args, "all_namespaces", 0)
    )


@contextlib.contextmanager
def _cluster(args: argparse.Namespace) -> Iterator[kube_runs.Cluster]:
    cluster = kube_runs.connect(args.kubeconfig, args.context, args.namespace)
    try:
        yield cluster
    finally:
        cluster.close()


def run_command(command: str, args: argparse.Namespace) -> int:
    """``command`` on the cluster; a refusal or an unreachable cluster is one red line."""
    try:
        return _COMMANDS[command](args)
    except kube_runs.ClusterError as exc:
        stderr.print(f"[red]{escape(str(exc))}[/]")
        return 1


def _list(args: argparse.Namespace) -> int:
    with _cluster(args) as cluster:
        rows = [kube_runs.summary_row(r) for r in kube_runs.runs(cluster, args.all_namespaces)]
    rows = rows[: args.limit]
    if args.output != "table":
        print_as(rows, args.output)
        return 0
    columns = ["NAME", "PIPELINE", "PHASE", "PROGRESS", "DURATION", "AGE"]
    table = Table(*(["NAMESPACE"] if args.all_namespaces else []), *columns, box=None)
    for row in rows:
        duration = "-" if row["duration_s"] is None else f"{row['duration_s']:g} s"
        cells = [row["name"], row["pipeline"], row["state"], row["progress"] or "-", duration]
        cells.append(kube_runs.age(row["created"]))
        table.add_row(*([row["namespace"]] if args.all_namespaces else []), *cells)
    stdout.print(table)
    return 0


def _get(args: argparse.Namespace) -> int:
    with _cluster(args) as cluster:
        run = kube_runs.get_run(cluster, args.name)
    if args.output != "table":
        print_as(run, args.output)
        return 0
    status = run.get("status") or {}
    metadata, spec = run["metadata"], run.get("spec") or {}
    stdout.print(
        f"[bold]{escape(metadata['name'])}[/] ({escape(str(spec.get('pipeline')))}) in "
        f"{escape(str(metadata.get('namespace')))}"
    )
    table = Table(box=None, show_header=False)
    rows: list[tuple[str, object]] = [
        ("phase", kube_runs.phase_of(run)),
        ("message", status.get("message")),
        ("progress", (status.get("progress") or {}).get("summary")),
        ("startTime", status.get("startTime")),
        ("completionTime", status.get("completionTime")),
        ("duration", status.get("duration")),
        ("prefect", (status.get("prefect") or {}).get("url")),
        ("dask dashboard", (status.get("dask") or {}).get("dashboardUrl")),
    ]
    rows += [(f"parameters.{k}", json.dumps(v)) for k, v in (spec.get("parameters") or {}).items()]
    rows += [(f"output {o.get('name')}", o.get("uri")) for o in status.get("outputs", [])]
    rows += [(f"cache {stage}", outcome) for stage, outcome in (status.get("cache") or {}).items()]
    for condition in status.get("conditions", []):
        words = " ".join(str(condition.get(k) or "") for k in ("status", "reason", "message"))
        rows.append((f"condition {condition.get('type')}", words.strip()))
    for key, value in rows:
        if value not in (None, ""):
            table.add_row(escape(key), escape(str(value)))
    stdout.print(table)
    return 0


def _logs(args: argparse.Namespace) -> int:
    with _cluster(args) as cluster:
        try:
            for line in kube_runs.logs(cluster, args.name, follow=args.follow):
                stdout.out(line, highlight=False)
        except kube_runs.NoLog as exc:
            stderr.print(escape(str(exc)))
            return 1
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _cluster(args) as cluster:
        stdout.print(escape(kube_runs.request_cancel(cluster, args.name)))
    return 0


def _rerun(args: argparse.Namespace) -> int:
    from radps_operator.validation import InvalidPipelineRun

    overrides = overrides_or_report(args.parameters)
    if overrides is None:
        return EXIT_INVALID
    with _cluster(args) as cluster:
        try:
            name = kube_runs.create_rerun(cluster, args.name, overrides, args.from_stage)
        except InvalidPipelineRun as invalid:
            for error in invalid.errors:
                stderr.print(f"[red]rerun of {escape(args.name)}: {escape(str(error))}[/]")
            return EXIT_INVALID
        stdout.print(f"pipelinerun.radps.io/{escape(name)} created (a rerun of {args.name})")
        stdout.print(f"[dim]radps logs -f -n {cluster.namespace} {escape(name)}[/]")
    return 0


def _resume(args: argparse.Namespace) -> int:
    from radps_operator.validation import InvalidPipelineRun

    answer = overrides_or_report(args.parameters)
    if answer is None:
        return EXIT_INVALID
    with _cluster(args) as cluster:
        try:
            stdout.print(escape(kube_runs.request_resume(cluster, args.name, answer)))
        except InvalidPipelineRun as invalid:
            for error in invalid.errors:
                stderr.print(f"[red]{escape(args.name)}: {escape(str(error))}[/]")
            return EXIT_INVALID
    return 0


_COMMANDS = {
    "list": _list,
    "get": _get,
    "logs": _logs,
    "cancel": _cancel,
    "rerun": _rerun,
    "resume": _resume,
}
