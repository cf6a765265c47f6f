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

from typing import Any

import xarray as xr
from prefect import flow

from radps_flows import locations, provenance
from radps_flows.cluster import task_runner_from_env
from radps_flows.core import blocks as blk
from radps_flows.core import image_dataset, imager, previews, products
from radps_flows.core.clean import CleanSettings
from radps_flows.core.executors import Executor
from radps_flows.core.summary import image_summary
from radps_flows.parameters.base import flow_parameters
from radps_flows.parameters.imaging import ImagingParameters
from radps_flows.pipelines import interactive, stages
from radps_flows.pipelines.executor import executor
from radps_flows.pipelines.outputs import (
    Output,
    file_output,
    publish_outputs,
    publish_preview,
    publish_summary,
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
        cache=stages.cache_policy(params),
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
    store: str,
    datasets: list[xr.Dataset],
    imsize: int,
    cell_arcsec: float,
    params: dict,
    folder: str = "",
    source: str = "",
) -> tuple[xr.Dataset, list[xr.Dataset]]:
    """Hogbom CLEAN with major cycles through the visibilities, kept on the workers or read
    again at each cycle (see :func:`radps_flows.core.imager.clean_inputs`); with
    ``interactive``, pausing for a person's answer (:mod:`radps_flows.pipelines.interactive`,
    its previews in ``folder``, the output's, titled with ``source``, the input's name)."""
    steps = _steps(datasets, params)
    settings = clean_settings(params)
    first_pass = params["epsilon"] if settings.epsilon is None else settings.epsilon
    grid = imager.grid_for(imsize, cell_arcsec, first_pass)
    with executor() as ex:
        blocks = _blocks(store, datasets, steps, params, ex)
        asking = interactive.interaction(params, folder, source, ex)
        return imager.clean_image(
            ex, blocks, datasets, steps, grid, settings, log=print, interaction=asking
        )


@stage("write-products")
def write_products(
    image: xr.DataArray, output: str, source: str, formats: list[str], history: list[str]
) -> list[Output]:
    """The dirty image (or cube) of ``source`` (the input's name): FITS, a PNG preview, and as
    ``formats`` asks an xradio image store (``image.img.zarr``) and a CASA image
    (``image.image``)."""
    kind = "dirty cube" if "frequency" in image.dims else "dirty image"
    out = _fits_and_preview("image", "preview", image, output, (kind, source), formats, history)
    xds = image_dataset.image_dataset({image_dataset.BASE: image}, history=history)
    return out + _xradio_products(xds, output, "image", {"image": ("SKY", "image")}, formats)


def _fits_and_preview(
    name: str,
    preview: str | None,
    image: xr.DataArray,
    folder: str,
    described: tuple[str, str],
    formats: list[str],
    history: list[str],
) -> list[Output]:
    """``name``.fits (as ``formats`` asks) and, named ``preview``, ``name``.png; ``described``
    is (what the image is, the input's name)."""
    out = []
    if "fits" in formats:
        location = locations.join(folder, f"{name}.fits")
        with locations.local_file(location) as path:
            products.write_fits(image, path, history)
        out.append(file_output(name, location, "fits"))
    if preview:
        kind, source = described
        location = locations.join(folder, f"{name}.png")
        with locations.local_file(location) as path:
            previews.write_png(image, path, kind)
            publish_preview(path, f"{kind} of {source}", preview)
        out.append(file_output(preview, location, "png"))
    return out


def _xradio_products(
    xds: xr.Dataset,
    folder: str,
    store: str,
    casa: dict[str, tuple[str, str]],
    formats: list[str],
) -> list[Output]:
    """The xradio image store ``<store>.img.zarr`` of ``xds``, and ``casa`` (product name ->
    variable, suffix) as CASA images named as tclean names its own, ``image.<suffix>``
    (xradio tells their roles by those names, so ``open_image`` of the list reads them back
    as one dataset), as ``formats`` asks."""
    out = []
    if "zarr" in formats:
        location = locations.join(folder, f"{store}.img.zarr")
        image_dataset.write(xds, location, "zarr")
        out.append(file_output(f"{store}-zarr", location, "zarr"))
    if "casa" in formats:
        for name, (variable, suffix) in casa.items():
            location = locations.join(folder, f"image.{suffix}")
            image_dataset.write(image_dataset.single_image(xds, variable), location, "casa")
            out.append(file_output(f"{name}-casa", location, "casa"))
    return out


CLEAN_PRODUCTS = {"restored": "base", "residual": "residual", "model": "model"}
"""CLEAN's images by product name, and their data groups in the image dataset (see
:mod:`radps_flows.core.image_dataset`); the dirty image's products are named ``image``, as
without CLEAN."""
CLEAN_PREVIEWS = ("restored", "residual")


@stage("write-clean-products")
def write_clean_products(
    images: xr.Dataset, output: str, source: str, formats: list[str], history: list[str]
) -> list[Output]:
    """CLEAN's images and the dirty image, in one task: FITS and PNG previews, one xradio
    image store of them all (``images.img.zarr``), CASA images. (Drawing the previews on a
    thread beside the file writes gained nothing measurable: matplotlib holds the GIL.)"""
    out = _fits_and_preview(
        "image", "preview", images["dirty"], output, ("dirty image", source), formats, history
    )
    for name in (*CLEAN_PRODUCTS, "psf"):
        preview = f"{name}-preview" if name in CLEAN_PREVIEWS else None
        described = (f"{name} image", source)
        out += _fits_and_preview(name, preview, images[name], output, described, formats, history)
    sky = {group: images[name] for name, group in CLEAN_PRODUCTS.items()}
    sky["dirty"] = images["dirty"]
    xds = image_dataset.image_dataset(sky, images["psf"], history=history)
    casa = {
        "restored": ("SKY", "image"),
        "residual": ("SKY_RESIDUAL", "residual"),
        "model": ("SKY_MODEL", "model"),
        "psf": (image_dataset.PSF, "psf"),
        "image": ("SKY_DIRTY", "dirty"),
    }
    return out + _xradio_products(xds, output, "images", casa, formats)


@flow(name="imaging", task_runner=task_runner_from_env(), log_prints=True)
@flow_parameters(ImagingParameters)
def imaging(**arguments: Any) -> list[dict[str, str]]:
    p = ImagingParameters(**arguments)
    params = p.model_dump()
    ImagingParameters.raise_if_invalid(params)
    inputs = {"input": p.input, "model_image": p.model_image}
    with transactional_output("imaging", p.output, p.overwrite, params, inputs) as transaction:
        folder = transaction.folder
        n_stages = 4 if p.clean or p.calibrate else 3
        policy = stages.cache_policy(params)
        store, datasets, cached = stages.open_input(p.input, folder, n_stages, policy)
        source = locations.name(p.input)
        history = provenance.history("imaging", params)
        if p.clean:
            images, gains = clean_image(
                store, datasets, p.imsize, p.cell_arcsec, params, folder, source
            )
            report_progress(2, n_stages)
            history += provenance.pause_history(images.attrs.get("clean_answers"))
            outputs = write_clean_products(images, folder, source, p.image_formats, history)
        else:
            make = dirty_cube if p.specmode == "cube" else dirty_image
            image, gains = make(store, datasets, p.imsize, p.cell_arcsec, params)
            report_progress(2, n_stages)
            outputs = write_products(image, folder, source, p.image_formats, history)
        if p.calibrate or p.clean:
            report_progress(3, n_stages)
        main = images["restored"] if p.clean else image
        counts = main.attrs["flag_report"]["cache"]
        stages.report_cache(policy, cached, counts)
        if p.flag:
            stages.report_flags(main.attrs["flag_report"])
        if gains:
            outputs += stages.write_gain_products(gains, folder, policy)
        outputs = transaction.commit(outputs)
    stages.evict(policy)
    report_progress(n_stages, n_stages)
    if p.clean:
        summary = image_summary(main, residual=images["residual"], model=images["model"])
    else:
        summary = image_summary(main)
    publish_summary(summary)
    return publish_outputs(outputs)
