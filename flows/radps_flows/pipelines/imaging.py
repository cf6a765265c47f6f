"""The `imaging` pipeline: visibilities in; dirty image, optionally flagged, calibrated and
CLEANed, out (FITS, PNG, zarr; gain solutions when calibrating).

Every stage works block by block (see :mod:`radps_flows.core.blocks`, driven by
:mod:`radps_flows.core.imager`): time blocks of the
MSv4 zarr store are read, flagged, calibrated and gridded on the flow run's Dask workers and
only partial images come back, so the data set may be larger than memory. The default (dirty
image, natural weighting) makes one pass over the data. CLEAN and uniform/Briggs weighting
revisit the visibilities: their Stokes I samples are kept on the workers between passes, or,
where they would not fit in half the cluster's memory, read again at each pass.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import xarray as xr
from prefect import flow, task
from pydantic import Field

from radps_flows import parameter_rules
from radps_flows.cluster import task_runner_from_env
from radps_flows.core import blocks as blk
from radps_flows.core import imager, products
from radps_flows.core.clean import CleanSettings
from radps_flows.parameter_rules import GRIDDER_MIN_PIXELS
from radps_flows.pipelines import stages
from radps_flows.pipelines.common import (
    Box,
    ModelSource,
    Solint,
)
from radps_flows.pipelines.executor import executor
from radps_flows.pipelines.outputs import (
    Output,
    file_output,
    publish_outputs,
    publish_preview,
)
from radps_flows.pipelines.transaction import transactional_output
from radps_flows.progress import report_progress


def _steps(datasets: list[xr.Dataset], params: dict) -> blk.Steps:
    return stages.calibration_steps(
        datasets,
        model=params["model"],
        model_image=params.get("model_image"),
        refant=params["refant"],
        solint=params["solint"],
        minsnr=params["minsnr"],
        calibrate=params["calibrate"],
        flag=params["flag"],
        flag_threshold=params["flag_threshold"],
    )


def _grid(imsize: int, cell_arcsec: float, epsilon: float) -> blk.Grid:
    return blk.Grid(imsize, math.radians(cell_arcsec / 3600), epsilon)


def _blocks(store: str, datasets: list[xr.Dataset], steps: blk.Steps, params: dict):
    return blk.plan_blocks(store, datasets, block_mb=params["block_mb"], solint=steps.solint)


@task(name="dirty-image")
def dirty_image(
    store: str, datasets: list[xr.Dataset], imsize: int, cell_arcsec: float, params: dict
) -> tuple[xr.DataArray, list[xr.Dataset]]:
    """One pass over the blocks: read, flag, calibrate, grid; partial images summed."""
    steps = _steps(datasets, params)
    grid = _grid(imsize, cell_arcsec, params["epsilon"])
    with executor() as ex:
        return imager.dirty_image(
            ex, _blocks(store, datasets, steps, params), datasets, steps, grid, log=print
        )


@task(name="dirty-cube")
def dirty_cube(
    store: str, datasets: list[xr.Dataset], imsize: int, cell_arcsec: float, params: dict
) -> tuple[xr.DataArray, list[xr.Dataset]]:
    """One task per (block, channel group), each group normalised once all its blocks are in."""
    steps = _steps(datasets, params)
    grid = _grid(imsize, cell_arcsec, params["epsilon"])
    with executor() as ex:
        return imager.dirty_cube(
            ex, _blocks(store, datasets, steps, params), datasets, steps, grid, log=print
        )


def clean_settings(params: dict) -> CleanSettings:
    """The CLEAN settings among the imaging parameters."""
    return CleanSettings(
        niter=params["niter"],
        gain=params["clean_gain"],
        threshold_jy=params["threshold_jy"],
        threshold_rms=params["threshold_rms"],
        rms_box=params["rms_box"],
        mask=params["mask"],
        cyclefactor=params["cyclefactor"],
        max_major=params["max_major"],
        weighting=params["weighting"],
        robust=params["robust"],
        visibilities=params["clean_visibilities"],
    )


@task(name="clean")
def clean_image(
    store: str, datasets: list[xr.Dataset], imsize: int, cell_arcsec: float, params: dict
) -> tuple[xr.Dataset, list[xr.Dataset]]:
    """Hogbom CLEAN with major cycles through the visibilities, kept on the workers or read
    again at each cycle (see :func:`radps_flows.core.imager.clean_inputs`)."""
    steps = _steps(datasets, params)
    grid = _grid(imsize, cell_arcsec, params["clean_epsilon"])
    blocks = _blocks(store, datasets, steps, params)
    with executor() as ex:
        return imager.clean_image(
            ex, blocks, datasets, steps, grid, clean_settings(params), log=print
        )


@task(name="write-products")
def write_products(image: xr.DataArray, output: str, title: str) -> list[Output]:
    folder = Path(output)
    png = products.write_png(image, folder / "image.png", title)
    publish_preview(png, title)
    return [
        file_output("image", products.write_fits(image, folder / "image.fits"), "fits"),
        file_output("preview", png, "png"),
        file_output("image-zarr", products.write_zarr(image, folder / "image.zarr"), "zarr"),
    ]


@task(name="write-clean-products")
def write_clean_products(images: xr.Dataset, output: str, title: str) -> list[Output]:
    folder = Path(output)
    out = []
    for name in ("restored", "residual", "model", "psf"):
        out.append(
            file_output(name, products.write_fits(images[name], folder / f"{name}.fits"), "fits")
        )
    for name in ("restored", "residual"):
        png = products.write_png(images[name], folder / f"{name}.png", f"{title}: {name}")
        publish_preview(png, f"{title}: {name}")
        out.append(file_output(f"{name}-preview", png, "png"))
    path = folder / "images.zarr"
    images.to_zarr(path, mode="w", consolidated=False)
    out.append(file_output("images-zarr", path, "zarr"))
    return out


@flow(name="imaging", task_runner=task_runner_from_env(), log_prints=True)
def imaging(
    input: str,
    output: str,
    imsize: Annotated[int, Field(ge=GRIDDER_MIN_PIXELS, le=65536, multiple_of=2)] = 512,
    cell_arcsec: Annotated[float, Field(gt=0)] = 1.0,
    epsilon: Annotated[float, Field(ge=1e-7, le=1e-1)] = 1e-4,
    specmode: Literal["mfs", "cube"] = "mfs",
    weighting: Literal["natural", "uniform", "briggs"] = "natural",
    robust: Annotated[float, Field(ge=-2, le=2)] = 0.5,
    flag: bool = False,
    flag_threshold: Annotated[float, Field(gt=0)] = 5.0,
    calibrate: bool = False,
    model: list[ModelSource] | None = None,
    model_image: str | None = None,
    refant: str | None = None,
    solint: Solint = "int",
    minsnr: Annotated[float, Field(ge=0)] = 3.0,
    clean: bool = False,
    niter: Annotated[int, Field(ge=0)] = 1000,
    clean_gain: Annotated[float, Field(gt=0, le=1)] = 0.1,
    threshold_jy: Annotated[float, Field(ge=0)] = 0.0,
    threshold_rms: Annotated[float, Field(ge=0)] = 0.0,
    rms_box: Box | None = None,
    mask: list[Box] | None = None,
    cyclefactor: Annotated[float, Field(gt=0)] = 1.0,
    max_major: Annotated[int, Field(ge=1)] = 50,
    clean_epsilon: Annotated[float, Field(ge=1e-8, le=1e-2)] = 1e-6,
    clean_visibilities: Literal["auto", "keep", "reread"] = "auto",
    block_mb: Annotated[float, Field(gt=0)] = blk.DEFAULT_BLOCK_MB,
    overwrite: bool = False,
) -> list[dict[str, str]]:
    """Image a MeasurementSet (Stokes I, MFS or a per-channel cube), optionally flagged,
    calibrated and CLEANed (MFS).

    Args:
        input: MeasurementSet v2 directory or MSv4 processing set (zarr) to image.
        output: Folder for the products (image.fits/png/zarr; with clean restored, residual,
            model, psf FITS and PNG, images.zarr; with calibrate gains.zarr, gains.png).
        imsize: Image width and height in pixels.
        cell_arcsec: Pixel size in arcseconds.
        epsilon: Gridding accuracy of ducc0's wgridder for the dirty image (1e-4: ~1e-5 Jy).
        specmode: mfs (one image over the band) or cube (one dirty image per channel, each
            normalised by its own weights; all partitions must share one frequency axis).
        weighting: natural, uniform or briggs (uniform and briggs need clean: true).
        robust: Briggs robustness (-2 ~ uniform, +2 ~ natural).
        flag: Flag RFI first: median/MAD clipping per baseline over each block's time x
            frequency plane (NaN samples are always ignored).
        flag_threshold: Clip at this many robust standard deviations.
        calibrate: Solve antenna gains with StEFCal against `model` and apply them.
        model: Calibration model: point sources (default 1 Jy at the phase centre, as CASA).
        model_image: Calibration model from a FITS image in Jy/pixel instead, such as the
            model.fits of an earlier clean run on the same data (self-calibration).
        refant: Reference antenna: name, CASA antenna number ("2") or pad ("E02").
        solint: Solution interval: "int" (each integration), "inf" or seconds.
        minsnr: Flag gain solutions below this SNR (and the data they calibrate).
        clean: Deconvolve with Hogbom CLEAN (major cycles through the visibilities).
        niter: Maximum number of CLEAN components.
        clean_gain: CLEAN loop gain.
        threshold_jy: Stop when the residual peak is below this (Jy/beam).
        threshold_rms: Or below this many times the dirty image rms (see rms_box); the larger
            of the two thresholds applies.
        rms_box: Box [x0, y0, x1, y1] (pixels, inclusive) where the rms is measured; default a
            robust (MAD) estimate over the whole dirty image.
        mask: CLEAN only inside these boxes [x0, y0, x1, y1] (pixels, inclusive).
        cyclefactor: Minor cycle depth, as tclean's.
        max_major: Maximum number of major cycles.
        clean_epsilon: Gridder accuracy inside CLEAN (residuals need more than dirty images).
        clean_visibilities: Between major cycles, keep the Stokes I samples on the Dask workers
            (keep), or read, flag and calibrate the data again at each cycle, with the gains
            solved once (reread: memory bounded by block_mb, one read per cycle more); auto
            keeps them when they fill at most half of the cluster's memory.
        block_mb: Visibility megabytes per block of work (memory per worker thread ~4x this).
        overwrite: Replace an existing output when this run completes (otherwise an existing
            non-empty output is an error).
    """
    params = dict(locals())
    parameter_rules.raise_if_invalid("imaging", params)
    inputs = {"input": input, "model_image": model_image}
    with transactional_output("imaging", output, overwrite, params, inputs) as transaction:
        folder = str(transaction.folder)
        params = {k: v for k, v in params.items() if k not in ("input", "output")}
        n_stages = 4 if clean or calibrate else 3
        store, datasets = stages.open_input(input, folder, n_stages)
        title = Path(input).name
        if clean:
            images, gains = clean_image(store, datasets, imsize, cell_arcsec, params)
            report_progress(2, n_stages)
            outputs = write_products(images["dirty"], folder, f"{title}: dirty image")
            outputs += write_clean_products(images, folder, title)
        else:
            make = dirty_cube if specmode == "cube" else dirty_image
            image, gains = make(store, datasets, imsize, cell_arcsec, params)
            report_progress(2, n_stages)
            kind = "cube" if specmode == "cube" else "image"
            outputs = write_products(image, folder, f"{title}: dirty {kind}")
        if calibrate or clean:
            report_progress(3, n_stages)
        if gains:
            outputs += stages.write_gain_products(gains, folder)
        outputs = transaction.commit(outputs)
    report_progress(n_stages, n_stages)
    return publish_outputs(outputs)
