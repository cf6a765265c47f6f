"""Stages the visibility pipelines share. Imaging, calibration and flagging are siblings: each
takes what it has in common with the others from here (and from :mod:`.common`, the shared
parameter types and gain-table helpers), never from another pipeline's module."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from radps_flows import locations, manifest, progress, stage_cache
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
from radps_flows.stage_cache import CachePolicy


def cache_policy(params: dict) -> CachePolicy:
    """The stage cache as a run's ``cache`` and ``from_stage`` parameters say."""
    return CachePolicy.of_run(params.get("cache", "Use"), params.get("from_stage"))


@stage("open-visibilities")
def open_visibilities(
    input: str, cache_dir: str, policy: CachePolicy | None = None
) -> tuple[str, list[xr.Dataset], str | None]:
    """The input as MSv4 datasets, and what the stage cache gave its conversion. A processing
    set a radps run wrote (calibrated, flagged) is read only with its manifest: without it,
    it is a remnant of a run that never finished. Without a cache (``Off``), an MSv2 is
    converted into ``cache_dir``, inside the run's output."""
    if policy is not None and policy.root is not None:
        store, outcome = core_io.cached_processing_set(input, policy)
    else:
        store, outcome = str(core_io.ensure_processing_set(input, cache_dir=cache_dir)), None
    if msv4.is_product(store):
        try:
            manifest.verify(store)
        except manifest.ProductError as exc:
            raise core_io.InputDataError(str(exc)) from None
    return store, blk.open_datasets(store), outcome  # a local run's blocks reuse them


def open_input(
    input: str, folder: str, stages: int, policy: CachePolicy | None = None
) -> tuple[str, list[xr.Dataset], dict[str, str]]:
    """How every visibility pipeline begins: progress 0 of ``stages``, the Dask cluster
    started (it comes up while the input opens), the input opened (an MSv2 converted, into
    the stage cache of ``policy`` or else ``<folder>/msv4``), progress 1. Returns the
    store, its datasets and the cache's outcome for the conversion (for
    :func:`report_cache`)."""
    report_progress(0, stages)
    if policy is not None and policy.unavailable:
        print(f"warning: {policy.unavailable}; this run neither reads nor writes it")
    start_dask_cluster_early(input)
    store, datasets, outcome = open_visibilities(input, locations.join(folder, "msv4"), policy)
    report_progress(1, stages)
    return store, datasets, {"conversion": outcome} if outcome else {}


def block_outcomes(counts: dict[str, dict[str, int]]) -> dict[str, str]:
    """One outcome per stage from the blocks' (:func:`radps_flows.core.imager.cache_report`):
    ``hit``, ``miss`` or ``refreshed`` where every block had it, else ``partial``."""
    out = {}
    for stage_name, by_outcome in counts.items():
        (only,) = by_outcome if len(by_outcome) == 1 else ("partial",)
        out[stage_name] = only
    return out


def report_cache(
    policy: CachePolicy, conversion: dict[str, str], counts: dict[str, dict[str, int]]
) -> None:
    """What the stage cache gave the run (``conversion``: :func:`open_input`'s outcome;
    ``counts``: the blocks' outcomes per stage), in its log and on its flow run (the
    PipelineRun's ``status.cache``). A stage before a rerun's ``from_stage`` that the cache
    did not hold is said to have been recomputed."""
    from prefect import get_run_logger

    outcomes = {**conversion, **block_outcomes(counts)}
    if not outcomes:
        return
    logger = get_run_logger()
    parts = []
    for stage_name, outcome in outcomes.items():
        blocks = counts.get(stage_name)
        of = f" ({blocks.get('hit', 0)} of {sum(blocks.values())} blocks)" if blocks else ""
        parts.append(f"{stage_name} {outcome}{of}")
        if policy.from_stage and outcome in ("miss", "partial"):
            logger.warning(
                "%s: not in the cache (the earlier run never committed it, or it was "
                "evicted): recomputed",
                stage_name,
            )
    logger.info("stage cache (%s, %s): %s", policy.mode, policy.root, "; ".join(parts))
    progress.report_cache(outcomes)


def evict(policy: CachePolicy) -> None:
    """Keep the cache within its limits, once a run's products are in."""
    if policy.root is not None:
        removed = stage_cache.evict_by_settings(policy.root)
        if removed:
            print(f"stage cache: evicted {len(removed)} entries")


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
    cache: CachePolicy | None = None,
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
        cache=cache,
    )


@stage("calibration")
def write_gain_products(
    gains: list[xr.Dataset] | dict[str, xr.Dataset],
    folder: str,
    policy: CachePolicy | None = None,
) -> list[Output]:
    """The gain solutions (of each block, or already merged per partition): gains.zarr,
    gains.png, a table artifact, and a summary in the run's log. (In `imaging` the gains are
    solved and applied block by block within the imaging pass, which reads the data once;
    this task is where the run records them.) With ``policy``, a plot of these gains drawn
    by an earlier run comes from the stage cache."""
    from prefect import get_run_logger

    tables = gains if isinstance(gains, dict) else merge_gains(gains)
    rows = gain_rows(tables)  # per antenna and receptor: the log line's and the table's
    get_run_logger().info("calibration: %s", gain_summary(tables, rows))
    zarr_path = write_gains(tables, locations.join(folder, "gains.zarr"))
    png = locations.join(folder, "gains.png")
    identity = stage_cache.array_digest(
        {f"{n}:{k}": v for n, ds in tables.items() for k, v in ds.variables.items()}
        | {
            f"{n}:attrs": np.array([json.dumps(ds.attrs, sort_keys=True)])
            for n, ds in tables.items()
        }
    )
    with locations.local_file(png) as local:
        # drawn from the gains alone (1.2 s for 27 antennas): a run whose gains were all
        # cache hits takes the plot an earlier run drew of them
        stage_cache.kept_file(
            policy, "gains-plot", "calibration", identity, local, lambda p: plot_gains(tables, p)
        )
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
