"""Stages the visibility pipelines share. Imaging, calibration and flagging are siblings: each
takes what it has in common with the others from here (and from :mod:`.common`, the shared
parameter types and gain-table helpers), never from another pipeline's module."""

from __future__ import annotations

import numpy as np
import xarray as xr

from radps_flows import locations, manifest
from radps_flows.core import blocks as blk
from radps_flows.core import imaging as core_imaging
from radps_flows.core import io as core_io
from radps_flows.core.previews import plot_gains
from radps_flows.pipelines import msv4
from radps_flows.pipelines.common import (
    ModelSource,
    gain_rows,
    gain_summary,
    image_model,
    merge_gains,
    point_models,
    publish_gain_table,
    write_gains,
)
from radps_flows.pipelines.executor import start_dask_cluster_early
from radps_flows.pipelines.outputs import Output, file_output, publish_preview
from radps_flows.pipelines.stage import stage
from radps_flows.progress import report_progress


@stage("open-visibilities")
def open_visibilities(input: str, cache_dir: str) -> tuple[str, list[xr.Dataset]]:
    """The input as MSv4 datasets. A processing set a radps run wrote (calibrated, flagged)
    is read only with its manifest: without it, it is a remnant of a run that never
    finished."""
    store = str(core_io.ensure_processing_set(input, cache_dir=cache_dir))
    if msv4.is_product(store):
        try:
            manifest.verify(store)
        except manifest.ProductError as exc:
            raise core_io.InputDataError(str(exc)) from None
    return store, blk.open_datasets(store)  # the blocks of a local run reuse them


def open_input(input: str, folder: str, stages: int) -> tuple[str, list[xr.Dataset]]:
    """How every visibility pipeline begins: progress 0 of ``stages``, the Dask cluster
    started (it comes up while the input opens), the input opened (an MSv2 converted into
    ``<folder>/msv4``), progress 1."""
    report_progress(0, stages)
    start_dask_cluster_early(input)
    store, datasets = open_visibilities(input, locations.join(folder, "msv4"))
    report_progress(1, stages)
    return store, datasets


def calibration_steps(
    datasets: list[xr.Dataset],
    *,
    model: list[ModelSource] | list[dict] | None,
    model_image: str | None,
    refant: str | None,
    solint: str | float,
    minsnr: float,
    calibrate: bool = True,
    flag: bool | str = False,
    flag_threshold: float = 5.0,
) -> blk.Steps:
    """What each block does before it is gridded or solved: flag, then solve (and apply)
    gains against the model, a list of point sources or a FITS image, placed relative to
    the data's common phase centre."""
    pc = core_imaging.common_phase_center(datasets)
    t0 = min(float(np.nanmin(ds["time"].values)) for ds in datasets if ds.sizes["time"])
    sky = image_model(model_image, pc) if model_image else point_models(model, float(pc["dec"]))
    return blk.Steps(
        flag=bool(flag),
        flag_threshold=flag_threshold,
        flagger="aoflagger" if flag == "aoflagger" else "mad",
        calibrate=calibrate,
        model=sky,
        refant=refant,
        solint=solint,
        minsnr=minsnr,
        time_origin=t0,
    )


@stage("calibration")
def write_gain_products(
    gains: list[xr.Dataset] | dict[str, xr.Dataset], folder: str
) -> list[Output]:
    """The gain solutions (of each block, or already merged per partition): gains.zarr,
    gains.png, a table artifact, and a summary in the run's log. (In `imaging` the gains are
    solved and applied block by block within the imaging pass, which reads the data once;
    this task is where the run records them.)"""
    from prefect import get_run_logger

    tables = gains if isinstance(gains, dict) else merge_gains(gains)
    rows = gain_rows(tables)  # per antenna and receptor: the log line's and the table's
    get_run_logger().info("calibration: %s", gain_summary(tables, rows))
    zarr_path = write_gains(tables, locations.join(folder, "gains.zarr"))
    png = locations.join(folder, "gains.png")
    with locations.local_file(png) as local:
        plot_gains(tables, local)
        publish_gain_table(rows)
        publish_preview(local, "gain solutions: amplitude and phase per antenna", "gains-plot")
    return [file_output("gains", zarr_path, "zarr"), file_output("gains-plot", png, "png")]


@stage("flagging")
def report_flags(report: dict) -> dict:
    """The flags of an imaging run's pass (flagged before and after, per
    :func:`radps_flows.core.imager.flag_report`), in the run's log. (The flagging itself runs
    block by block within the imaging pass; this task is where the run records it.)"""
    from prefect import get_run_logger

    samples = max(int(report["samples"]), 1)
    get_run_logger().info(
        "flagging: %.2f%% of %s visibilities flagged (%.2f%% before flagging)",
        100 * report["flagged_after"] / samples,
        f"{int(report['samples']):,}",
        100 * report["flagged_before"] / samples,
    )
    return report
