"""End-to-end `imaging` pipeline against the sum of its kernels, with peak memory.

The pipeline runs as a user runs it, `radps run` of a PipelineRun against a running Prefect
server (started here once, like `radps server` on a laptop; its start-up is not charged to the
run), with one Dask worker of one thread, so it has the one core the kernels are timed on.
Its wall time is the flow run's own (Prefect start to end); the kernels are what the same
work costs called directly: block reads + Stokes I + gridding (the stage's serial path) and
writing the products, in a fresh Python process as the flow run is (imports done before the
clock starts, as `radps run` does them before the flow run starts). A process's first pass
over the blocks is about 1 s slower than later ones at 1e8 (zarr, dask and matplotlib
warming up); that is the kernels' own cost, so both sides pay it. The same kernels timed again
in a warm process are reported too (``kernels_warm``). Pipeline and kernels alternate five
times; the overhead compares their medians. Overhead = (flow run wall - kernels)
/ flow run wall: Prefect, Dask, task start-up, result transfer. Peak RSS is the kernel's
high-water mark of the process the flow runs in (the `radps server`'s fork for this `radps run`;
its Dask workers are threads of it), see :class:`PeakRss`.

`python -m tests.benchmarks.pipeline STORE OUT` runs the kernels once and prints their JSON.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from radps_flows.allocator import keep_freed_memory
from radps_flows.core import blocks as blk
from radps_flows.core import image_dataset, previews, products
from radps_flows.core.imaging import dirty_image_from_sums
from radps_flows.core.io import open_processing_set

from . import arraycore

RADPS = str(Path(sys.executable).parent / "radps")


@contextlib.contextmanager
def prefect_server() -> Iterator[dict[str, str]]:
    from tests.conftest import running_radps_server

    home = Path(tempfile.mkdtemp(prefix="radps-bench-home-"))
    env = {
        **os.environ,
        "RADPS_HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    with running_radps_server(home, env) as server:
        yield {**env, "RADPS_API_URL": server.api_url}


def imaging_manifest(work: Path, name: str, parameters: dict[str, Any]) -> Path:
    """An imaging PipelineRun of ``parameters`` in ``work``, on one Dask worker of one
    thread (the one core the kernels are timed on)."""
    document = {
        "apiVersion": "radps.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {
            "pipeline": "imaging",
            "parameters": parameters,
            "dask": {"workers": 1, "threadsPerWorker": 1},
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


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
    """The pipeline's work called directly: blocks (read + Stokes I + grid), products; with
    the allocator setting the pipeline's processes use."""
    keep_freed_memory()
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
    previews.write_png(image, out / "image.png", "bench")
    image_dataset.write(
        image_dataset.image_dataset({"base": image}), str(out / "image.img.zarr"), "zarr"
    )
    t2 = time.perf_counter()
    return {"blocks": t1 - t0, "products": t2 - t1, "total": t2 - t0}


def cold_kernels(path: Path, out: Path) -> dict:
    """:func:`kernels` in a fresh Python process, as cold as the flow run's."""
    found = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.pipeline", str(path), str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return json.loads(found.stdout.strip().splitlines()[-1])


class PeakRss:
    """The high-water mark of a process's RSS (``VmHWM``, which the kernel keeps from the
    process's exec on), read every half second until it exits: the last reading is its
    peak, give or take its last half second. One small read per reading, where summing every
    descendant's RSS every 0.1 s took 2% of a core during the flow runs only; ``wait4``'s
    ``ru_maxrss`` would count the forked benchmark process's own RSS from before the exec."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.status = Path(f"/proc/{pid}/status")
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self.status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self._read()  # the process may still be there
        return self.peak


def _flow_process(client: subprocess.Popen[str], server: Any, before: set[int]) -> int:
    """The process the flow runs in: the child the `radps server` forks for this `radps run`
    (radps_operator.local.warm), or the `radps run` itself when it runs in its own process."""
    deadline = time.monotonic() + 10
    while client.poll() is None and time.monotonic() < deadline:
        forked = [p for p in server.children() if p.pid not in before]
        if forked:
            return forked[0].pid
        time.sleep(0.02)
    return client.pid


def radps_run(env: dict[str, str], manifest: Path) -> tuple[float, float | None, int]:
    """One `radps run`: its wall time, its flow run's own wall time, the peak RSS of the
    process its flow runs in."""
    import psutil

    home = Path(env["RADPS_HOME"])
    server = psutil.Process(json.loads((home / "server.json").read_text())["pid"])
    before = {p.pid for p in server.children()}
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [RADPS, "run", str(manifest)],
        env={**env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    rss = PeakRss(_flow_process(process, server, before))
    output = process.stdout.read()  # until the process closes it, at its end
    peak = rss.stop()
    process.wait()
    wall = time.perf_counter() - t0
    if process.returncode != 0:
        raise RuntimeError(f"radps run failed:\n{output}")
    return wall, _flow_run_seconds(env, output), peak


def end_to_end(env: dict[str, str], path: Path, n_vis: int, work: Path, repeat: int = 5) -> dict:
    """The pipeline and its kernels, alternately, ``repeat`` times each: on a shared machine
    one pair can differ by +-1 s at 1e8 either way, so the overhead is taken from the
    medians (every sample is in the result)."""
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
                "overwrite": True,  # the same output, run after run
            },
            "dask": {"workers": 1, "threadsPerWorker": 1},
        },
    }
    manifest = work / f"bench-{n_vis}.yaml"
    manifest.write_text(yaml.safe_dump(document))
    runs, cold = [], []
    for _ in range(repeat):
        runs.append(radps_run(env, manifest))
        cold.append(cold_kernels(path, work / f"kernels-{n_vis}"))
    warm = kernels(path, work / f"kernels-warm-{n_vis}")
    flow_s = statistics.median(flow if flow is not None else wall for wall, flow, _ in runs)
    kernels_s = statistics.median(k["total"] for k in cold)
    peak = max(p for _, _, p in runs)
    return {
        "repeat": repeat,
        "radps_run_wall_s": statistics.median(wall for wall, _, _ in runs),
        "flow_run_s": flow_s,
        "flow_run_samples_s": [flow for _, flow, _ in runs],
        "kernels_s": kernels_s,
        "kernels_samples": cold,
        "kernels_warm": warm,
        "overhead_fraction": (flow_s - kernels_s) / flow_s,
        "overhead_fraction_vs_warm_kernels": (flow_s - warm["total"]) / flow_s,
        "vis_per_s_per_core": n_vis / flow_s,
        "peak_rss_bytes": peak,
        "peak_rss_gb": peak / 1e9,
    }


if __name__ == "__main__":
    print(json.dumps(kernels(Path(sys.argv[1]), Path(sys.argv[2]))))
