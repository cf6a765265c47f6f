"""End-to-end `imaging` pipeline against the sum of its kernels, with peak memory.

The pipeline runs as a user runs it, `radps run` of a PipelineRun against a running Prefect
server (started here once, like `radps server` on a laptop; its start-up is not charged to the
run), with one Dask worker of one thread, so it has the one core the kernels are timed on.
Its wall time is the flow run's own (Prefect start to end); the kernels are what the same
work costs called directly in this process: block reads + Stokes I + gridding (the stage's
serial path) and writing the products. Overhead = (flow run wall - kernels) / flow run wall:
Prefect, Dask, task start-up, result transfer. Peak RSS sums the `radps run` process and all
its children (the flow process and the Dask worker processes), sampled every 0.1 s.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import yaml

from radps_flows.core import products
from radps_flows.core.imaging import dirty_image_from_sums
from radps_flows.core.io import open_processing_set
from radps_flows.pipelines import blocks as blk

from . import arraycore

RADPS = str(Path(sys.executable).parent / "radps")


@contextlib.contextmanager
def prefect_server() -> Iterator[dict[str, str]]:
    from radps_operator.local.server import RECORD_FILE, free_port, is_healthy

    home = Path(tempfile.mkdtemp(prefix="radps-bench-home-"))
    env = {
        **os.environ,
        "RADPS_HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    port = free_port()
    log = open(home / "server.out", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [RADPS, "server", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while not ((home / RECORD_FILE).exists() and is_healthy(api)):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((home / "server.out").read_text())
            time.sleep(0.25)
        yield {**env, "RADPS_API_URL": api}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(60)
        log.close()


class PeakRss:
    """Peak of the summed RSS of a process and its descendants."""

    def __init__(self, pid: int, interval: float = 0.1):
        self.root = psutil.Process(pid)
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _flow_run_seconds(env: dict[str, str], output: str) -> float | None:
    import re

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ids = re.findall(r"/runs/flow-run/([0-9a-f-]{36})", output)
    if not ids:
        return None
    with (
        temporary_settings({PREFECT_API_URL: env["RADPS_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        run = client.read_flow_run(ids[-1])
    if run.start_time and run.end_time:
        return (run.end_time - run.start_time).total_seconds()
    return None


def kernels(path: Path, out: Path) -> dict:
    """The pipeline's work called directly: blocks (read + Stokes I + grid), products."""
    (ds,) = open_processing_set(path)
    cell = math.radians(arraycore.CELL_ARCSEC / 3600)
    grid = blk.Grid(arraycore.IMSIZE, cell, arraycore.EPSILON, 1)
    blocks = blk.plan_blocks(str(path), [ds])
    t0 = time.perf_counter()
    total = None
    for b in blocks:
        part, _ = blk.dirty_block(b, blk.Steps(), grid)
        total = part if total is None else total + part
    t1 = time.perf_counter()
    image = dirty_image_from_sums([ds], [total], cell_arcsec=arraycore.CELL_ARCSEC)
    products.write_fits(image, out / "image.fits")
    products.write_png(image, out / "image.png", "bench")
    products.write_zarr(image, out / "image.zarr")
    t2 = time.perf_counter()
    return {"blocks": t1 - t0, "products": t2 - t1, "total": t2 - t0}


def end_to_end(env: dict[str, str], path: Path, n_vis: int, work: Path) -> dict:
    out = work / f"e2e-{n_vis}"
    document = {
        "apiVersion": "radps.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": f"bench-{n_vis}"},
        "spec": {
            "pipeline": "imaging",
            "parameters": {
                "input": str(path),
                "output": str(out),
                "imsize": arraycore.IMSIZE,
                "cell_arcsec": arraycore.CELL_ARCSEC,
                "epsilon": arraycore.EPSILON,
            },
            "dask": {"workers": 1, "threadsPerWorker": 1},
        },
    }
    manifest = work / f"bench-{n_vis}.yaml"
    manifest.write_text(yaml.safe_dump(document))
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [RADPS, "run", str(manifest)],
        env={**env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    rss = PeakRss(process.pid)
    output, _ = process.communicate()
    wall = time.perf_counter() - t0
    peak = rss.stop()
    if process.returncode != 0:
        raise RuntimeError(f"radps run failed:\n{output}")
    flow_s = _flow_run_seconds(env, output)
    k = kernels(path, work / f"kernels-{n_vis}")
    run_s = flow_s if flow_s is not None else wall
    return {
        "radps_run_wall_s": wall,
        "flow_run_s": flow_s,
        "kernels_s": k,
        "overhead_fraction": (run_s - k["total"]) / run_s,
        "vis_per_s_per_core": n_vis / run_s,
        "peak_rss_bytes": peak,
        "peak_rss_gb": peak / 1e9,
    }
