"""The `imaging` pipeline reading its set from an S3-compatible store and writing its products
there, against the same run on a local volume (issue 14's target: at most 1.3x as long).

Both run as a user runs them, `radps run` against one running Prefect server, with one Dask
worker of one thread (as :mod:`.pipeline`), alternately, ``repeat`` times each; the store is
SeaweedFS on loopback (tests/s3.py), its volumes on the same disk as the local set. Each run
writes a new output, so neither pays for replacing the last one. The ratio compares the
medians of the flow runs' own wall times (Prefect start to end); the peak RSS of the process
each flow runs in says whether reading from the store keeps memory bounded by ``block_mb``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from . import arraycore, pipeline

TARGET_RATIO = 1.3


def _manifest(work: Path, name: str, input: str, output: str) -> Path:
    parameters = {
        "input": input,
        "output": output,
        "imsize": arraycore.IMSIZE,
        "cell_arcsec": arraycore.CELL_ARCSEC,
        "epsilon": arraycore.EPSILON,
    }
    return pipeline.imaging_manifest(work, name, parameters)


def main(n_vis: float = 1e8, repeat: int = 3, data: Path | None = None) -> dict[str, Any]:
    import s3fs

    from tests.s3 import running_s3_server

    work = Path(tempfile.mkdtemp(prefix="radps-bench-s3-"))
    data = data or work / "data"
    data.mkdir(parents=True, exist_ok=True)
    path, info = arraycore.synthesize(n_vis, data)
    with (
        running_s3_server(work / "store", bucket="bench") as store,
        pipeline.prefect_server() as env,
    ):
        fs = s3fs.S3FileSystem(**store.storage_options(), skip_instance_cache=True)
        t0 = time.perf_counter()
        fs.put(f"{path}/", f"bench/{path.name}", recursive=True)
        upload_s = time.perf_counter() - t0
        store_env = {**env, **{k: v for k, v in store.env().items() if k.startswith("AWS_")}}
        samples: dict[str, list[tuple[float, float | None, int]]] = {"local": [], "s3": []}
        for i in range(repeat):
            local = _manifest(work, f"local-{i}", str(path), str(work / f"out-{i}"))
            remote = _manifest(work, f"s3-{i}", store.url(path.name), store.url(f"out-{i}"))
            samples["local"].append(pipeline.radps_run(env, local))
            samples["s3"].append(pipeline.radps_run(store_env, remote))
    flow = {
        where: statistics.median(f if f is not None else w for w, f, _ in runs)
        for where, runs in samples.items()
    }
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    ratio = flow["s3"] / flow["local"]
    return {
        "data": info,
        "set_bytes": size,
        "upload_s": upload_s,
        "upload_mb_per_s": size / upload_s / 1e6,
        "repeat": repeat,
        "flow_run_s": flow,
        "flow_run_samples_s": {k: [f for _, f, _ in v] for k, v in samples.items()},
        "radps_run_wall_samples_s": {k: [w for w, _, _ in v] for k, v in samples.items()},
        "peak_rss_gb": {k: max(p for _, _, p in v) / 1e9 for k, v in samples.items()},
        "ratio_s3_vs_local": ratio,
        "targets": {"s3_vs_local_at_most_1.3x": ratio <= TARGET_RATIO},
    }
