"""The executor of a stage task: the flow run's own Dask cluster, found through Prefect.

A stage task runs in the flow process as the Dask client of the flow run's cluster (the task
runner's), or, for a task the task runner sent to a worker, through ``worker_client``. Outside
a flow run with a Dask task runner it runs serially. The executors themselves are in
:mod:`radps_flows.core.executors`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from radps_flows.allocator import keep_freed_memory
from radps_flows.cluster import KUBE_CLUSTER_START_TIMEOUT_SECONDS, RadpsDaskTaskRunner
from radps_flows.core import io as core_io
from radps_flows.core import previews
from radps_flows.core.executors import DaskExecutor, SerialExecutor


@contextlib.contextmanager
def executor() -> Iterator[SerialExecutor | DaskExecutor]:
    """The flow run's Dask cluster: from a stage task running in the flow process, through the
    flow's task runner; from a task running on one of the cluster's workers, through
    ``worker_client``; outside a flow run with a Dask task runner, serial. Blocks reuse the
    process's freed memory (:mod:`radps_flows.allocator`). While the flow process waits for
    its workers, it gets its plotting ready for the products (up to a second at a process's
    first figure)."""
    keep_freed_memory()
    try:
        from distributed import get_worker, worker_client

        get_worker()
    except ImportError:
        yield SerialExecutor()
        return
    except ValueError:  # not on a Dask worker
        runner = _flow_task_runner()
        if runner is None:
            yield SerialExecutor()
            return
        client = runner.client  # the cluster starts on first use, unless started early
        ex = DaskExecutor(
            client,
            expected_workers=getattr(runner, "expected_workers", 1),
            start_timeout_seconds=KUBE_CLUSTER_START_TIMEOUT_SECONDS,
        )
        previews.warm_up_plotting(at_gridding=ex.workers_in_this_process())
        _log_dashboard(client)
        with client.as_current():  # for what looks up the default client (as_completed)
            yield ex
        return
    with worker_client() as client:
        yield DaskExecutor(client, start_timeout_seconds=KUBE_CLUSTER_START_TIMEOUT_SECONDS)


_dashboards_logged: set[str] = set()


def _log_dashboard(client: Any) -> None:
    """The Dask dashboard's link, at INFO in the run's log, once per cluster: where to watch
    the blocks' tasks, memory and workers (on Kubernetes, the scheduler Service's address in
    the cluster: `kubectl port-forward` reaches it)."""
    from prefect import get_run_logger

    link = getattr(client, "dashboard_link", None)
    if link and str(getattr(client.scheduler, "address", "")).startswith("inproc://"):
        # a local run's in-process cluster: its dashboard listens on loopback
        # (cluster.local_task_runner), while the link names the machine's address
        link = urlsplit(link)._replace(netloc=f"127.0.0.1:{urlsplit(link).port}").geturl()
    if link and link not in _dashboards_logged:
        _dashboards_logged.add(link)
        get_run_logger().info("Dask dashboard: %s", link)


def _flow_task_runner() -> Any:
    """The current flow run's DaskTaskRunner, or None."""
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    return runner if isinstance(runner, DaskTaskRunner) else None


def start_dask_cluster_early(input: str) -> None:
    """In a flow run: start its Dask cluster in the background now (see
    :meth:`radps_flows.cluster.RadpsDaskTaskRunner.start_in_background`).

    An MSv2 ``input`` will be converted by xradio, whose import parses source with ``ast``;
    with the cluster starting in another thread, that could meet the concurrent-AST bug of
    older CPython 3.11 releases (see :mod:`radps_flows.preload`). So xradio is imported first,
    here: the conversion needs it anyway."""
    with contextlib.suppress(core_io.InputDataError, OSError):  # the open reports those
        if core_io.detect_input_kind(input) == "msv2":
            import radps_flows.preload  # noqa: F401
    runner = _flow_task_runner()
    if isinstance(runner, RadpsDaskTaskRunner):
        runner.start_in_background()
