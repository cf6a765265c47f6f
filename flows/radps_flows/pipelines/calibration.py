"""The `calibration` pipeline: antenna gains solved with StEFCal, block by block, written as a
gain table (zarr, plot, Prefect table artifact) and applied to give a calibrated MSv4 copy.

The calibrated copy (``calibrated.ps.zarr``) holds the corrected visibilities and flags as its
base data group (``VISIBILITY``, ``FLAG``; weights unchanged, as CASA's ``calwt=False``), like
CASA's ``split`` of the corrected column, so it can be imaged as it is.
"""

from __future__ import annotations

from typing import Any

import xarray as xr
from prefect import flow

from radps_flows.cluster import task_runner_from_env
from radps_flows.core import blocks as blk
from radps_flows.core import calibration as cal
from radps_flows.core import imager
from radps_flows.parameters.base import flow_parameters
from radps_flows.parameters.calibration import CalibrationParameters
from radps_flows.pipelines import msv4, stages
from radps_flows.pipelines.common import merge_gains
from radps_flows.pipelines.executor import executor
from radps_flows.pipelines.outputs import (
    Output,
    file_output,
    publish_outputs,
)
from radps_flows.pipelines.stage import stage
from radps_flows.pipelines.transaction import transactional_output
from radps_flows.progress import report_progress

STAGES = 4


@stage("solve-gains")
def solve(
    store: str, datasets: list[xr.Dataset], params: dict
) -> tuple[dict[str, xr.Dataset], dict[str, dict[str, int]]]:
    """StEFCal per solution interval, one Dask task per block of whole intervals (each
    block's gains from the stage cache where it holds them). Returns the gains per partition
    and the blocks' cache outcomes."""
    steps = stages.calibration_steps(
        datasets,
        model=params["model"],
        model_image=params["model_image"],
        refant=params["refant"],
        solint=params["solint"],
        minsnr=params["minsnr"],
        cache=stages.cache_policy(params),
    )
    with executor() as ex:
        blocks = blk.blocks_for(store, datasets, steps, params["block_mb"], parallel=ex.threads())
        solved = ex.gather(ex.map(blk.block_gains, blocks, steps=steps))
    tables = [gains for gains, _ in solved]
    counts = imager.cache_report([{"cache": outcomes} for _, outcomes in solved])
    merged = merge_gains(tables)
    for name, ds in merged.items():
        flagged = float(ds["FLAG"].values.mean())
        print(f"{name}: {ds.sizes['time']} intervals, {flagged:.2%} of solutions flagged")
    return merged, counts


@stage("apply-gains")
def apply(
    store: str, datasets: list[xr.Dataset], tables: dict[str, xr.Dataset], output: str
) -> list[Output]:
    """Calibrated copy of the input: corrected VISIBILITY and FLAG, chunk by chunk."""
    dest = msv4.copy_processing_set(store, msv4.output_store(output, "calibrated"), "calibration")
    with executor() as ex:
        for ds in datasets:
            name = ds.attrs["partition_name"]
            if name not in tables:
                continue
            corrected = cal.apply_gains(ds, tables[name])
            msv4.replace_arrays(
                dest,
                name,
                {
                    "VISIBILITY": corrected["VISIBILITY_CORRECTED"],
                    "FLAG": corrected["FLAG_CORRECTED"],
                },
                ex,
            )
    return [file_output("calibrated", dest, "msv4")]


@flow(name="calibration", task_runner=task_runner_from_env(), log_prints=True)
@flow_parameters(CalibrationParameters)
def calibration(**arguments: Any) -> list[dict[str, str]]:
    p = CalibrationParameters(**arguments)
    params = p.model_dump()
    CalibrationParameters.raise_if_invalid(params)
    inputs = {"input": p.input, "model_image": p.model_image}
    with transactional_output("calibration", p.output, p.overwrite, params, inputs) as transaction:
        folder = str(transaction.folder)
        policy = stages.cache_policy(params)
        store, datasets, cached = stages.open_input(p.input, folder, STAGES, policy)
        tables, counts = solve(store, datasets, params)
        stages.report_cache(policy, cached, counts)
        report_progress(2, STAGES)
        outputs = stages.write_gain_products(tables, folder, policy)
        report_progress(3, STAGES)
        outputs += apply(store, datasets, tables, folder)
        outputs = transaction.commit(outputs)
    stages.evict(policy)
    report_progress(4, STAGES)
    return publish_outputs(outputs)
