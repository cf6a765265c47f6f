"""The `flagging` pipeline: RFI flags by iterative median/MAD clipping per baseline over its
whole time x frequency plane, written into an MSv4 copy of the input.

Decision: the output is a processing set (``flagged.ps.zarr``), the input with ``FLAG``
replaced by the old flags OR the new ones (NaN padding included), so it can be imaged or
calibrated as it is; the numbers flagged go to a Prefect table artifact. The work is split by
baseline (each baseline needs its whole plane): memory per Dask task is the plane of
``baselines_per_task`` baselines.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from prefect import flow
from prefect.artifacts import create_table_artifact

from radps_flows.cluster import task_runner_from_env
from radps_flows.core.flagging import flag_dataset
from radps_flows.parameters.base import flow_parameters
from radps_flows.parameters.flagging import FlaggingParameters
from radps_flows.pipelines import msv4, stages
from radps_flows.pipelines.executor import executor
from radps_flows.pipelines.outputs import Output, artifact_key, file_output, publish_outputs
from radps_flows.pipelines.stage import stage
from radps_flows.pipelines.transaction import transactional_output
from radps_flows.progress import report_progress

STAGES = 2


def _baselines_per_task(ds: xr.Dataset, block_mb: float) -> int:
    var = ds["VISIBILITY"]
    per_baseline = var.isel(baseline_id=0).size * var.dtype.itemsize
    return int(max(1, min(ds.sizes["baseline_id"], block_mb * 2**20 // per_baseline)))


@stage("flag")
def flag(
    store: str,
    datasets: list[xr.Dataset],
    output: str,
    threshold: float,
    block_mb: float,
    method: str = "mad",
) -> list[Output]:
    dest = msv4.copy_processing_set(store, msv4.output_store(output, "flagged"), "flagging")
    rows = []
    with executor() as ex:
        for ds in datasets:
            name = ds.attrs["partition_name"]
            sub = ds[["VISIBILITY", "FLAG", "WEIGHT"]].reset_coords(drop=True)
            sub = sub.chunk({"time": -1, "baseline_id": _baselines_per_task(ds, block_mb)})
            new = flag_dataset(sub, threshold=threshold, method=method)
            msv4.replace_arrays(dest, name, {"FLAG": new}, ex)
            rows.append(_counts(ds, dest, name, ex))
    for row in rows:
        print(
            f"{row['partition']}: flagged {row['flagged_before_pct']}% -> "
            f"{row['flagged_after_pct']}% of {row['visibilities']:,} visibilities"
        )
    create_table_artifact(
        table=rows, key=artifact_key("flagging"), description="radps flagging summary"
    )
    return [file_output("flagged", dest, "msv4")]


def _counts(ds: xr.Dataset, dest: str, name: str, ex) -> dict:
    with msv4.quiet_zarr():
        after = xr.open_zarr(str(dest), group=name, consolidated=False)["FLAG"]
    present = np.isfinite(ds["VISIBILITY"].data)
    n, before, now = ex.compute(
        [present.sum(), (ds["FLAG"].data & present).sum(), (after.data & present).sum()]
    )
    n = int(n)
    return {
        "partition": name,
        "visibilities": n,
        "flagged_before_pct": round(100 * int(before) / max(n, 1), 3),
        "flagged_after_pct": round(100 * int(now) / max(n, 1), 3),
    }


@flow(name="flagging", task_runner=task_runner_from_env(), log_prints=True)
@flow_parameters(FlaggingParameters)
def flagging(**arguments: Any) -> list[dict[str, str]]:
    p = FlaggingParameters(**arguments)
    params = p.model_dump()
    FlaggingParameters.raise_if_invalid(params)
    inputs = {"input": p.input}
    with transactional_output("flagging", p.output, p.overwrite, params, inputs) as transaction:
        folder = str(transaction.folder)
        policy = stages.cache_policy(params)
        store, datasets, cached = stages.open_input(p.input, folder, STAGES, policy)
        stages.report_cache(policy, cached, {})
        products = flag(store, datasets, folder, p.threshold, p.block_mb, p.method)
        outputs = transaction.commit(products)
    stages.evict(policy)
    report_progress(2, STAGES)
    return publish_outputs(outputs)
