"""A real `prefect worker` on a `process` work pool, so flow runs of the operator's deployments
really execute on this machine (no Kubernetes node needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PREFECT = str(Path(sys.executable).parent / "prefect")

# Tiny runs: seconds each, one Dask worker.
TINY_SYNTH = {"n_antennas": 4, "n_times": 2, "n_channels": 2}


@dataclass
class ProcessWorker:
    pool: str
    api_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def create_process_pool(api_url: str, name: str, auth_string: str | None = None) -> None:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker as PrefectProcessWorker

    with SyncPrefectClient(api_url, auth_string=auth_string) as client:
        client.create_work_pool(
            WorkPoolCreate(
                name=name,
                type="process",
                base_job_template=PrefectProcessWorker.get_default_base_job_template(),
            ),
            overwrite=True,
        )


def start_process_worker(api_url: str, pool: str, log: Path, limit: int = 4) -> ProcessWorker:
    create_process_pool(api_url, pool)
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "RADPS_DASK_WORKERS": "1",
    }
    out = open(log, "wb")  # noqa: SIM115 (the child holds it)
    process = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--limit", str(limit)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        # SIGINT at its default (not ignored) so the worker stops on SIGTERM (docs/architecture.md)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    out.close()
    return ProcessWorker(pool=pool, api_url=api_url, process=process, log=log)


@pytest.fixture(scope="session")
def process_worker(radps_server, tmp_path_factory) -> Iterator[ProcessWorker]:
    """One process worker for the session on its own pool of the shared server."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    worker = start_process_worker(radps_server.api_url, f"test-{uuid.uuid4().hex[:6]}", log)
    time.sleep(0.5)
    if worker.process.poll() is not None:
        pytest.fail(f"prefect worker exited: {log.read_text()}")
    yield worker
    worker.stop()
