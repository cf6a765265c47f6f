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

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import xarray as xr
from prefect import flow

from radps_flows.cluster import task_runner_from_env
from radps_flows.core import blocks as blk
from radps_flows.core import imager, products
from radps_flows.core.clean import CleanSettings
from radps_flows.core.executors import Executor
from radps_flows.parameters.base import flow_parameters
from radps_flows.parameters.imaging import ImagingParameters
from radps_flows.pipelines import stages
from radps_flows.pipelines.executor import executor
from radps_flows.pipelines.outputs import (
    Output,
    file_output,
    publish_outputs,
    publish_preview,
)
from radps_flows.pipelines.stage import stage
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


def _blocks(
    store: str, datasets: list[xr.Dataset], steps: blk.Steps, params: dict, ex: Executor
) -> list[blk.Block]:
    return blk.blocks_for(store, datasets, steps, params["block_mb"], parallel=ex.threads())


@stage("dirty-image")
def dirty_image(
    store: str, datasets: list[xr.Dataset], imsize: int, cell_arcsec: float, params: dict
) -> tuple[xr.DataArray, list[xr.Dataset]]:
    """One pass over the blocks: read, flag, calibrate, grid; partial images summed."""
    steps = _steps(datasets, params)
    grid = imager.grid_for(imsize, cell_arcsec, params["epsilon"])
    with executor() as ex:
        return imager.dirty_image(
            ex, _blocks(store, datasets, steps, params, ex), datasets, steps, grid, log=print
        )


@stage("dirty-cube")
def dirty_cube(
    store: str, datasets: list[xr.Dataset], imsize: int, cell_arcsec: float, params: dict
) -> tuple[xr.DataArray, list[xr.Dataset]]:
    """One task per (block, channel group), each group normalised once all its blocks are in."""
    steps = _steps(datasets, params)
    grid = imager.grid_for(imsize, cell_arcsec, params["epsilon"])
    with executor() as ex:
        return imager.dirty_cube(
            ex, _blocks(store, datasets, steps, params, ex), datasets, steps, grid, log=print
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
        epsilon=None if params["clean_epsilon"] == "auto" else params["clean_epsilon"],
    )


@stage("clean")
def clean_image(
    store: str, datasets: list[xr.Dataset], imsize: int, cell_arcsec: float, params: dict
) -> tuple[xr.Dataset, list[xr.Dataset]]:
    """Hogbom CLEAN with major cycles through the visibilities, kept on the workers or read
    again at each cycle (see :func:`radps_flows.core.imager.clean_inputs`)."""
    steps = _steps(datasets, params)
    settings = clean_settings(params)
    first_pass = params["epsilon"] if settings.epsilon is None else settings.epsilon
    grid = imager.grid_for(imsize, cell_arcsec, first_pass)
    with executor() as ex:
        blocks = _blocks(store, datasets, steps, params, ex)
        return imager.clean_image(ex, blocks, datasets, steps, grid, settings, log=print)


@stage("write-products")
def write_products(image: xr.DataArray, output: str, title: str) -> list[Output]:
    """The dirty image (or cube) as FITS, PNG preview and zarr."""
    folder = Path(output)
    with _PreviewDrawer() as previews:
        previews.draw(image, folder / "image.png", title)
        fits_path = products.write_fits(image, folder / "image.fits")
        zarr_path = products.write_zarr(image, folder / "image.zarr")
        (png,) = previews.publish()
    return [
        file_output("image", fits_path, "fits"),
        file_output("preview", png, "png"),
        file_output("image-zarr", zarr_path, "zarr"),
    ]


CLEAN_FITS = ("restored", "residual", "model", "psf")
CLEAN_PREVIEWS = ("restored", "residual")


@stage("write-clean-products")
def write_clean_products(images: xr.Dataset, output: str, title: str) -> list[Output]:
    """CLEAN's images and the dirty image's, as :func:`write_products` writes that: FITS,
    PNG previews, and one zarr store of them all."""
    folder = Path(output)
    with _PreviewDrawer() as previews:
        previews.draw(images["dirty"], folder / "image.png", f"{title}: dirty image")
        for name in CLEAN_PREVIEWS:
            previews.draw(images[name], folder / f"{name}.png", f"{title}: {name}")
        dirty_fits = products.write_fits(images["dirty"], folder / "image.fits")
        dirty_zarr = products.write_zarr(images["dirty"], folder / "image.zarr")
        fits_paths = [products.write_fits(images[n], folder / f"{n}.fits") for n in CLEAN_FITS]
        zarr_path = products.write_zarr_images(images, folder / "images.zarr")
        dirty_png, *pngs = previews.publish()
    return [
        file_output("image", dirty_fits, "fits"),
        file_output("preview", dirty_png, "png"),
        file_output("image-zarr", dirty_zarr, "zarr"),
        *(file_output(n, path, "fits") for n, path in zip(CLEAN_FITS, fits_paths, strict=True)),
        *(file_output(f"{n}-preview", p, "png") for n, p in zip(CLEAN_PREVIEWS, pngs, strict=True)),
        file_output("images-zarr", zarr_path, "zarr"),
    ]


class _PreviewDrawer:
    """Draws previews (and their artifacts' thumbnails) on a thread of its own while the
    caller writes the FITS and zarr files: matplotlib holds the GIL, where blosc and the file
    writes release it. CLEAN's products on the CASA benchmark's set: about 1.1 s -> 0.7 s.
    One thread: matplotlib's figures are not to be drawn by two threads at once. The
    artifacts are published from the caller's thread, where Prefect's run context is."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="radps-previews")
        self._drawn: list[tuple[str, Future[tuple[Path, bytes]]]] = []

    def __enter__(self) -> _PreviewDrawer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def draw(self, image: xr.DataArray, path: Path, title: str) -> None:
        def drawn() -> tuple[Path, bytes]:
            png = products.write_png(image, path, title)
            return png, products.png_thumbnail(png)

        self._drawn.append((title, self._pool.submit(drawn)))

    def publish(self) -> list[Path]:
        """Each preview's path, in the order drawn, once all are; each published as an
        artifact."""
        pngs = []
        for title, future in self._drawn:
            png, thumbnail = future.result()
            publish_preview(png, title, thumbnail)
            pngs.append(png)
        return pngs


@flow(name="imaging", task_runner=task_runner_from_env(), log_prints=True)
@flow_parameters(ImagingParameters)
def imaging(**arguments: Any) -> list[dict[str, str]]:
    p = ImagingParameters(**arguments)
    params = p.model_dump()
    ImagingParameters.raise_if_invalid(params)
    inputs = {"input": p.input, "model_image": p.model_image}
    with transactional_output("imaging", p.output, p.overwrite, params, inputs) as transaction:
        folder = str(transaction.folder)
        n_stages = 4 if p.clean or p.calibrate else 3
        store, datasets = stages.open_input(p.input, folder, n_stages)
        title = Path(p.input).name
        if p.clean:
            images, gains = clean_image(store, datasets, p.imsize, p.cell_arcsec, params)
            report_progress(2, n_stages)
            outputs = write_clean_products(images, folder, title)
        else:
            make = dirty_cube if p.specmode == "cube" else dirty_image
            image, gains = make(store, datasets, p.imsize, p.cell_arcsec, params)
            report_progress(2, n_stages)
            kind = "cube" if p.specmode == "cube" else "image"
            outputs = write_products(image, folder, f"{title}: dirty {kind}")
        if p.calibrate or p.clean:
            report_progress(3, n_stages)
        if gains:
            outputs += stages.write_gain_products(gains, folder)
        outputs = transaction.commit(outputs)
    report_progress(n_stages, n_stages)
    return publish_outputs(outputs)
