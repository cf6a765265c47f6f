"""The `imaging` pipeline: visibilities in, a dirty image (FITS, PNG, zarr) out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import xarray as xr
from prefect import flow, task
from pydantic import Field

from radps_flows.cluster import DaskClusterConfig, task_runner_from_env
from radps_flows.core import imaging as core_imaging
from radps_flows.core import io as core_io
from radps_flows.core import products
from radps_flows.pipelines.outputs import Output, file_output, publish_outputs
from radps_flows.progress import report_progress

STAGES = 3


@task(name="open-visibilities")
def open_visibilities(input: str, cache_dir: str) -> list[xr.Dataset]:
    return core_io.open_processing_set(input, cache_dir=cache_dir)


@task(name="dirty-image")
def dirty_image(
    datasets: list[xr.Dataset], imsize: int, cell_arcsec: float, epsilon: float, nthreads: int
) -> xr.DataArray:
    return core_imaging.make_dirty_image(
        datasets, imsize=imsize, cell_arcsec=cell_arcsec, epsilon=epsilon, nthreads=nthreads
    )


@task(name="write-products")
def write_products(image: xr.DataArray, output: str, title: str) -> list[Output]:
    folder = Path(output)
    return [
        file_output("image", products.write_fits(image, folder / "image.fits"), "fits"),
        file_output("preview", products.write_png(image, folder / "image.png", title), "png"),
        file_output("image-zarr", products.write_zarr(image, folder / "image.zarr"), "zarr"),
    ]


@flow(name="imaging", task_runner=task_runner_from_env(), log_prints=True)
def imaging(
    input: str,
    output: str,
    imsize: Annotated[int, Field(ge=16, le=65536)] = 512,
    cell_arcsec: Annotated[float, Field(gt=0)] = 1.0,
    epsilon: Annotated[float, Field(ge=1e-7, le=1e-1)] = 1e-4,
) -> list[dict[str, str]]:
    """Dirty image of a MeasurementSet: Stokes I, natural weighting, MFS, w-gridding.

    Args:
        input: MeasurementSet v2 directory or MSv4 processing set (zarr) to image.
        output: Folder for the products (image.fits, image.png, image.zarr); created if missing.
        imsize: Image width and height in pixels.
        cell_arcsec: Pixel size in arcseconds.
        epsilon: Gridding accuracy of ducc0's wgridder (1e-4 gives ~1e-5 Jy error).
    """
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"output folder {folder} is not writable")
    report_progress(0, STAGES)
    datasets = open_visibilities.submit(input, str(folder / "msv4")).result()
    report_progress(1, STAGES)
    threads = DaskClusterConfig.from_env().threads_per_worker
    image = dirty_image.submit(datasets, imsize, cell_arcsec, epsilon, threads).result()
    report_progress(2, STAGES)
    outputs = write_products.submit(image, output, f"{Path(input).name}: dirty image").result()
    report_progress(3, STAGES)
    return publish_outputs(outputs)
