"""The operator under load: PipelineRuns applied at once -> flow runs created, Prefect state ->
status lag, the operator's RSS and CPU.

All parts are real: the local control plane (`hack/cluster-up.sh control-plane`, started here
when it is down and stopped again after), a `radps server`, and `radps operator` as its own
process (psutil measures it; its Prometheus /metrics is scraped). The runs go to a `process`
work pool with no worker, so their flow runs stay Scheduled: what is timed is the operator, not
a pipeline. The bench then moves every flow run to Running and to Completed through the Prefect
API and times how long each PipelineRun status takes to show it.

- create latency of a run = Prefect's `created` of its flow run - the moment the bench sent the
  PipelineRun's create (one clock: everything is on this machine);
- the operator's own share = time in its create handler minus the time it spent waiting on
  Prefect's API inside it (both from its histograms), per run;
- status lag = the moment the bench's watch sees the phase - the Prefect state's timestamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.integration.operator_helpers import (
    GROUP,
    PLURAL,
    VERSION,
    install_crd,
    operator_env,
    pipelinerun,
    start_operator_process,
)
from tests.integration.prefect_helpers import create_process_pool
from tests.k8s import HACK, KubeCluster, hack_setting, wait_until

TARGETS: dict[str, dict[str, float]] = {
    # issue 18's "done when", per Prefect database
    "sqlite": {"one_run_latency_s": 0.15, "batch_200_all_created_s": 15.0},
    "postgres": {
        "one_run_latency_s": 0.15,
        "batch_200_all_created_s": 5.0,
        "batch_200_p99_s": 5.0,
        "batch_1000_all_created_s": 25.0,
    },
    "any": {
        "status_lag_p99_at_1000_s": 2.0,
        "operator_rss_at_1000_mib": 150.0,
        "all_created_ratio_to_prefect_alone": 1.2,
    },
}
SINGLE_RUNS = 5
"""One run at a time, this many times (the first run of a pipeline also creates its
deployment: a warm-up run, not counted, takes that)."""


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


@contextlib.contextmanager
def control_plane() -> Iterator[KubeCluster]:
    """The local control plane: reused when up, else started here and stopped after."""
    run_dir = Path(hack_setting("RUN_DIR"))
    mode = (run_dir / "mode").read_text().strip() if (run_dir / "mode").exists() else "down"
    subprocess.run(
        [str(HACK / "cluster-up.sh"), "control-plane" if mode == "down" else mode],
        check=True,
        capture_output=True,
        timeout=3600,
    )
    kubectl = Path(hack_setting("KUBE_BIN")) / "kubectl"
    cluster = KubeCluster(
        Path(hack_setting("KUBECONFIG_PATH")), full=False, kubectl_path=str(kubectl)
    )
    try:
        yield cluster
    finally:
        if mode == "down":
            subprocess.run([str(HACK / "cluster-down.sh")], capture_output=True, timeout=300)


def scrape(port: int) -> dict[str, float]:
    """The operator's /metrics as {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+.\deEinfNa]+)$", line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


class Watch:
    """First time each PipelineRun showed a flow run id and each phase, on the client's clock."""

    def __init__(self, kube_api: Any, namespace: str):
        from kubernetes import client, watch

        self.custom = client.CustomObjectsApi(kube_api)
        self.namespace = namespace
        self.flow_run_seen: dict[str, float] = {}
        self.phase_seen: dict[tuple[str, str], float] = {}
        self._watch = watch.Watch()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                for event in self._watch.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    timeout_seconds=0,
                ):
                    now = time.time()
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    status = obj.get("status") or {}
                    if (status.get("prefect") or {}).get("flowRunId"):
                        self.flow_run_seen.setdefault(name, now)
                    if status.get("phase"):
                        self.phase_seen.setdefault((name, status["phase"]), now)
            except Exception:  # the stream ended (or stop() closed it): go on or leave
                if self._stopped.is_set():
                    return
                time.sleep(0.2)

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.process.pid)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def rss_mib(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    from radps_operator.local.server import free_port

    return free_port()


class Bench:
    def __init__(self, cluster: KubeCluster, api_url: str, scratch: Path):
        from kubernetes import client, config

        self.api_url = api_url
        self.scratch = scratch
        self.namespace = f"radps-bench-{uuid.uuid4().hex[:6]}"
        self.pool = f"bench-{uuid.uuid4().hex[:6]}"
        configuration = client.Configuration()
        config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 32  # the creates go out 32 at a time
        self.kube_api = client.ApiClient(configuration)
        self.custom = client.CustomObjectsApi(self.kube_api)
        self.core = client.CoreV1Api(self.kube_api)
        install_crd(cluster)
        self.core.create_namespace({"metadata": {"name": self.namespace}})
        create_process_pool(api_url, self.pool)
        port = _free_port()
        env = operator_env(
            cluster,
            api_url,
            self.pool,
            RADPS_METRICS_PORT=str(port),
            RADPS_RESYNC_SECONDS="5",
            RADPS_WATCH_NAMESPACES=self.namespace,
            RADPS_LOG_FORMAT="json",
            RADPS_FLOW_SERVICE_ACCOUNT="",
        )
        log = scratch / "operator.log"
        self.operator = Operator(start_operator_process(env, log), port, log)
        wait_until(lambda: self._metrics_up(), timeout=120, what="the operator's /metrics")
        self.watch = Watch(self.kube_api, self.namespace)
        self._serial = 0

    def _metrics_up(self) -> bool:
        if self.operator.process.poll() is not None:
            raise RuntimeError(f"the operator exited: {self.operator.log.read_text()[-3000:]}")
        try:
            return bool(scrape(self.operator.metrics_port))
        except OSError:
            return False

    def close(self) -> None:
        self.watch.stop()
        with contextlib.suppress(Exception):
            self._delete_runs(timeout=120)
        self.operator.stop()
        with contextlib.suppress(Exception):
            self.core.delete_namespace(self.namespace)

    # --- one batch ---------------------------------------------------------------------------

    def _spec(self, name: str) -> dict[str, Any]:
        return {
            "pipeline": "synthesize",
            "parameters": {"output": str(self.scratch / f"{name}.ps.zarr")},
        }

    def _create(self, names: list[str]) -> dict[str, float]:
        sent: dict[str, float] = {}

        def one(name: str) -> None:
            body = pipelinerun(name, **self._spec(name))
            sent[name] = time.time()
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body
            )

        with ThreadPoolExecutor(max_workers=min(32, len(names))) as pool:
            list(pool.map(one, names))
        return sent

    def _flow_runs(self, names: set[str]) -> dict[str, list[Any]]:
        """Flow runs of the bench's pool by name (a list: more than one would be a duplicate)."""
        from prefect.client.orchestration import SyncPrefectClient
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

        out: dict[str, list[Any]] = {}
        with SyncPrefectClient(self.api_url) as client:
            batch = sorted(names)
            for i in range(0, len(batch), 100):
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=batch[i : i + 100])),
                    limit=200,
                )
                for run in runs:
                    out.setdefault(run.name, []).append(run)
        return out

    def _move_states(self, runs: dict[str, Any], state_type: str) -> dict[str, float]:
        """Set every flow run's state (as a worker/engine would), concurrently; returns the
        Prefect state timestamps (epoch seconds)."""
        from prefect.client.orchestration import PrefectClient
        from prefect.states import Completed, Running

        make = {"RUNNING": Running, "COMPLETED": Completed}[state_type]
        stamps: dict[str, float] = {}

        async def go() -> None:
            limit = asyncio.Semaphore(8)
            async with PrefectClient(self.api_url) as client:

                async def one(name: str, run: Any) -> None:
                    async with limit:
                        result = await client.set_flow_run_state(run.id, make(), force=True)
                        stamps[name] = result.state.timestamp.timestamp()

                await asyncio.gather(*(one(n, r) for n, r in runs.items()))

        asyncio.run(go())
        return stamps

    def _lags(self, stamps: dict[str, float], phase: str, timeout: float) -> list[float]:
        wait_until(
            lambda: all((n, phase) in self.watch.phase_seen for n in stamps),
            timeout=timeout,
            what=f"every run {phase}",
        )
        return [self.watch.phase_seen[(n, phase)] - t for n, t in stamps.items()]

    def _delete_runs(self, timeout: float) -> None:
        self.custom.delete_collection_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL
        )
        wait_until(
            lambda: (
                not self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, limit=1
                )["items"]
            ),
            timeout=timeout,
            what="every PipelineRun deleted",
        )

    def prefect_alone(self, n: int, concurrency: int) -> dict[str, Any]:
        """The reference: `n` flow runs created straight through Prefect's API, `concurrency`
        at a time, with the request the operator sends (same deployment, same server, the
        server's parameter check skipped as the operator skips it), no Kubernetes; Prefect's
        client does not retry (as the operator's), and a call refused as busy (SQLite's 503) or
        cut off is made again after the operator's busy delay."""
        from prefect.client.orchestration import PrefectClient
        from prefect.client.schemas.actions import DeploymentFlowRunCreate
        from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings
        from prefect.states import Scheduled, to_state_create

        from radps_operator.prefect_gateway import busy_retry_delay, is_busy

        deployment_id = next(iter(self._flow_runs({"b1-0000"}).values()))[0].deployment_id
        done: list[float] = []
        calls: list[float] = []
        busy: list[int] = []

        async def go() -> float:
            limit = asyncio.Semaphore(concurrency)
            async with PrefectClient(self.api_url) as client:

                async def one(i: int) -> None:
                    body = DeploymentFlowRunCreate(
                        parameters=self._spec("alone")["parameters"],
                        state=to_state_create(Scheduled()),
                        name=f"alone-{concurrency}-{i:04d}",
                        idempotency_key=str(uuid.uuid4()),
                        enforce_parameter_schema=False,
                    ).model_dump(mode="json", exclude_unset=True)
                    for retry in itertools.count():
                        async with limit:
                            called = time.time()
                            try:
                                await client.request(
                                    "POST",
                                    "/deployments/{id}/create_flow_run",
                                    path_params={"id": deployment_id},
                                    json=body,
                                )
                            except Exception as exc:
                                # the operator asks again after a busy answer, and after a
                                # dropped connection (an overloaded SQLite server's)
                                if not (is_busy(exc) or isinstance(exc, httpx.TransportError)):
                                    raise
                                busy.append(1)
                            else:
                                calls.append(time.time() - called)
                                break
                        # as the operator: a busy server is asked again after a short wait
                        await asyncio.sleep(busy_retry_delay(retry))
                    done.append(time.time())

                start = time.time()
                await asyncio.gather(*(one(i) for i in range(n)))
                return start

        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):
            start = asyncio.run(go())
        latencies = [t - start for t in done]
        return {
            "runs": n,
            "concurrency": concurrency,
            "create_latency_s": summary(latencies),
            "one_call_s": summary(calls),
            "busy_answers": len(busy),
            "all_created_s": max(latencies),
            "per_second": n / max(latencies),
        }

    def batch(self, n: int, timeout: float = 600) -> dict[str, Any]:
        self._serial += 1
        names = [f"b{self._serial}-{i:04d}" for i in range(n)]
        before = scrape(self.operator.metrics_port)
        cpu_before = self.operator.cpu_seconds()
        sent = self._create(names)
        all_sent = time.time()
        wanted = set(names)
        wait_until(
            lambda: len(self._flow_runs(wanted)) == n, timeout=timeout, what=f"{n} flow runs"
        )
        runs = self._flow_runs(wanted)
        created = {name: rs[0].created.timestamp() for name, rs in runs.items()}
        latencies = [created[name] - sent[name] for name in names]
        wait_until(
            lambda: all(name in self.watch.flow_run_seen for name in names),
            timeout=timeout,
            what="every status showing its flow run",
        )
        shown = [self.watch.flow_run_seen[name] - sent[name] for name in names]
        after_create = scrape(self.operator.metrics_port)
        rss_live = self.operator.rss_mib()
        one_each = {name: rs[0] for name, rs in runs.items()}
        running = self._lags(self._move_states(one_each, "RUNNING"), "Running", timeout)
        rss_running = self.operator.rss_mib()
        completed = self._lags(self._move_states(one_each, "COMPLETED"), "Completed", timeout)
        after = scrape(self.operator.metrics_port)
        cpu = self.operator.cpu_seconds() - cpu_before
        duplicates = sum(len(rs) - 1 for rs in self._flow_runs(wanted).values())
        self._delete_runs(timeout)
        return {
            "runs": n,
            "flow_runs": len(runs),
            "duplicate_flow_runs": duplicates,
            "create_latency_s": summary(latencies),
            "all_flow_runs_created_s": max(created.values()) - min(sent.values()),
            "creates_sent_in_s": all_sent - min(sent.values()),
            "status_shows_flow_run_s": summary(shown),
            "per_run_in_operator": _operator_share(before, after_create, n),
            "status_lag_running_s": summary(running),
            "status_lag_completed_s": summary(completed),
            "status_lag_mean_by_operator_s": _mean_lag(after_create, after),
            "operator_rss_mib": {"all_live": rss_live, "all_running": rss_running},
            "operator_cpu_s_per_run": cpu / n,
        }


def _metric_delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def _mean_lag(before: dict[str, float], after: dict[str, float]) -> float | None:
    """The operator's own view of the lag (Prefect state time -> its status patch)."""
    count = _metric_delta(before, after, "radps_status_lag_seconds_count")
    return _metric_delta(before, after, "radps_status_lag_seconds_sum") / count if count else None


def _operator_share(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, Any]:
    """Mean seconds per run in the create handler, and of that in Prefect's API and waiting
    for a free call slot (the resync's reads wait too: a slight overestimate of the wait)."""
    handler = _metric_delta(before, after, 'radps_reconcile_seconds_sum{handler="create"}')
    prefect = sum(
        _metric_delta(before, after, f'radps_prefect_api_seconds_sum{{operation="{op}"}}')
        for op in ("create_flow", "create_deployment", "read_work_pool", "create_flow_run")
    )
    waiting = _metric_delta(before, after, "radps_prefect_api_wait_seconds_sum")
    return {
        "create_handler_s": handler / n,
        "in_prefect_api_s": prefect / n,
        "waiting_for_a_prefect_slot_s": waiting / n,
        "operator_own_s": (handler - prefect - waiting) / n,
    }


def run(api_url: str, sizes: list[int], scratch: Path, database: str) -> dict[str, Any]:
    """Warm-up, SINGLE_RUNS single runs, then each size applied at once; each beside the
    same number of flow runs created by a plain Prefect client (the reference)."""
    from radps_operator.prefect_gateway import DEFAULT_MAX_CONCURRENT_CALLS as CONCURRENCY

    with control_plane() as cluster:
        bench = Bench(cluster, api_url, scratch)
        try:
            bench.batch(1)  # warm-up: creates the deployment
            results: dict[str, Any] = {}
            if 1 in sizes:
                singles = [bench.batch(1) for _ in range(SINGLE_RUNS)]
                alone = bench.prefect_alone(SINGLE_RUNS, 1)
                latencies = [s["create_latency_s"]["p50"] for s in singles]
                results["1"] = singles[len(singles) // 2] | {
                    "latencies_s": latencies,
                    "prefect_alone": alone,
                    "ratio_to_prefect_alone_p50": percentile(latencies, 50)
                    / alone["one_call_s"]["p50"],
                }
            for n in sizes:
                if n > 1:
                    print(f" operator: {n} PipelineRuns at once", flush=True)
                    row = bench.batch(n)
                    alone = bench.prefect_alone(n, CONCURRENCY)
                    row["prefect_alone"] = alone
                    row["ratio_to_prefect_alone"] = {
                        "p50": row["create_latency_s"]["p50"] / alone["create_latency_s"]["p50"],
                        "p99": row["create_latency_s"]["p99"] / alone["create_latency_s"]["p99"],
                        "all_created": row["all_flow_runs_created_s"] / alone["all_created_s"],
                    }
                    results[str(n)] = row
            results["operator_rss_mib_idle_after"] = bench.operator.rss_mib()
        finally:
            bench.close()
    return {"sizes": results, "targets": targets(results, database)}


def targets(results: dict[str, Any], database: str) -> dict[str, Any]:
    """[measured, met] for each of issue 18's targets that the sizes measured reach."""
    goals = TARGETS[database] | TARGETS["any"]
    measured: dict[str, float] = {}
    if "1" in results:
        measured["one_run_latency_s"] = percentile(results["1"]["latencies_s"], 50)
    for n in ("200", "1000"):
        if n in results:
            row = results[n]
            measured[f"batch_{n}_all_created_s"] = row["all_flow_runs_created_s"]
            measured[f"batch_{n}_p99_s"] = row["create_latency_s"]["p99"]
            ratio = row["ratio_to_prefect_alone"]["all_created"]
            key = "all_created_ratio_to_prefect_alone"
            measured[key] = max(measured.get(key, 0.0), ratio)
    if "1000" in results:
        row = results["1000"]
        measured["status_lag_p99_at_1000_s"] = row["status_lag_running_s"]["p99"]
        measured["operator_rss_at_1000_mib"] = max(row["operator_rss_mib"].values())
    return {k: [v, v <= goals[k]] for k, v in measured.items() if k in goals}


def main_standalone(out: Path, sizes: list[int], prefect_db: str = "sqlite") -> dict[str, Any]:
    """Its own Prefect server, on SQLite (radps's default) or a throwaway PostgreSQL."""
    import tempfile

    from radps_operator.local.home import DATABASE_URL_ENV

    from . import pipeline
    from .postgres import throwaway_postgres

    scratch = Path(tempfile.mkdtemp(prefix="radps-bench-operator-"))
    with contextlib.ExitStack() as stack:
        if prefect_db == "postgres":
            os.environ[DATABASE_URL_ENV] = stack.enter_context(throwaway_postgres())
            stack.callback(os.environ.pop, DATABASE_URL_ENV, None)
        env = stack.enter_context(pipeline.prefect_server())
        result = run(env["RADPS_API_URL"], sizes, scratch, prefect_db)
        result["prefect_database"] = prefect_db
    (out / f"operator-{prefect_db}.json").write_text(json.dumps(result, indent=1))
    return result
