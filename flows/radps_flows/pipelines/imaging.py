"""The `imaging` pipeline: visibilities in; dirty image, optionally flagged, calibrated and
CLEANed, out (FITS, PNG, zarr; gain solutions when calibrating).

Every stage works block by block (see :mod:`radps_flows.pipelines.blocks`): time blocks of the
MSv4 zarr store are read, flagged, calibrated and gridded on the flow run's Dask workers and
only partial images come back, so the data set may be larger than memory. The default (dirty
image, natural weighting) makes one pass over the data. CLEAN and uniform/Briggs weighting
revisit the visibilities: their Stokes I samples are kept on the workers between passes, or,
where they would not fit in half the cluster's memory, read again at each pass.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import xarray as xr
from prefect import flow, task
from pydantic import Field

from radps_flows import parameter_rules
from radps_flows.cluster import task_runner_from_env
from radps_flows.core import cube as core_cube
from radps_flows.core import imaging as core_imaging
from radps_flows.core import products
from radps_flows.core.beam import fit_beam, restore
from radps_flows.core.clean import hogbom, psf_sidelobe
from radps_flows.parameter_rules import GRIDDER_MIN_PIXELS
from radps_flows.pipelines import blocks as blk
from radps_flows.pipelines import stages
from radps_flows.pipelines.common import (
    Box,
    ModelSource,
    Solint,
)
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


def _rms(image: np.ndarray, box: list[int] | None) -> float:
    """rms in a CASA-style box [x0, y0, x1, y1] (inclusive), else a robust estimate over the
    whole image (1.4826 x median absolute deviation)."""
    if box:
        x0, y0, x1, y1 = box
        region = image[y0 : y1 + 1, x0 : x1 + 1]
        return float(np.sqrt(np.mean(region**2)))
    return float(1.4826 * np.median(np.abs(image - np.median(image))))


def _mask(boxes: list[list[int]] | None, imsize: int) -> np.ndarray | None:
    if not boxes:
        return None
    mask = np.zeros((imsize, imsize), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def _flag_report(summaries: list[dict]) -> dict:
    samples = sum(s["samples"] for s in summaries)
    before = sum(s["flagged_before"] for s in summaries)
    after = sum(s["flagged_after"] for s in summaries)
    return {
        "samples": samples,
        "flagged_before": before,
        "flagged_after": after,
        "flagged_fraction": after / samples if samples else 0.0,
    }


@task(name="dirty-image")
def dirty_image(
    store: str, datasets: list[xr.Dataset], imsize: int, cell_arcsec: float, params: dict
) -> tuple[xr.DataArray, list[xr.Dataset]]:
    """One pass over the blocks: read, flag, calibrate, grid; partial images summed."""
    steps = _steps(datasets, params)
    grid = blk.Grid(imsize, math.radians(cell_arcsec / 3600), params["epsilon"])
    blocks = blk.plan_blocks(store, datasets, block_mb=params["block_mb"], solint=steps.solint)
    sums: dict[str, core_imaging.DirtySum] = {}
    summaries = []
    with blk.executor() as ex:
        handles = ex.map(blk.dirty_block, blocks, steps=steps, grid=grid)
        for i, (part, info) in ex.completed(handles):
            name = blocks[i].partition
            sums[name] = part if name not in sums else sums[name] + part
            summaries.append(info)
    parts = [sums.get(ds.attrs["partition_name"], _empty(imsize)) for ds in datasets]
    image = core_imaging.dirty_image_from_sums(
        datasets, parts, cell_arcsec=cell_arcsec, epsilon=params["epsilon"]
    )
    report = _flag_report(summaries)
    print(
        f"imaged {image.attrs['nvis']:,} Stokes I samples in {len(blocks)} blocks; "
        f"flagged {report['flagged_fraction']:.2%} of {report['samples']:,} visibilities"
    )
    image.attrs["flagged_fraction"] = report["flagged_fraction"]
    return image, [s["gains"] for s in summaries if s["gains"] is not None]


@task(name="dirty-cube")
def dirty_cube(
    store: str, datasets: list[xr.Dataset], imsize: int, cell_arcsec: float, params: dict
) -> tuple[xr.DataArray, list[xr.Dataset]]:
    """One task per (block, channel group); a group's partial cubes are summed as they come
    back and normalised into the cube once all its blocks are in, so the flow holds the cube
    (float32) and the groups still open, whatever the size of the data."""
    steps = _steps(datasets, params)
    freq = core_cube.common_frequencies(datasets)
    grid = blk.Grid(imsize, math.radians(cell_arcsec / 3600), params["epsilon"])
    blocks = blk.plan_blocks(store, datasets, block_mb=params["block_mb"], solint=steps.solint)
    groups = blk.channel_groups(len(freq), imsize)
    jobs = [(b, g) for g in groups for b in blocks]
    cube = np.full((len(freq), imsize, imsize), np.nan, dtype=np.float32)
    weight_sum = np.zeros(len(freq))
    nvis = np.zeros(len(freq), dtype=np.int64)
    open_groups: dict[tuple[int, int], core_cube.CubeSum] = {}
    missing = dict.fromkeys(groups, len(blocks))
    summaries = []
    with blk.executor() as ex:
        handles = ex.map(blk.cube_block, jobs, steps=steps, grid=grid)
        for i, (part, info) in ex.completed(handles):
            group = jobs[i][1]
            if group == groups[0]:  # every group sees the same flags and gains
                summaries.append(info)
            open_groups[group] = part if group not in open_groups else open_groups[group] + part
            missing[group] -= 1
            if missing[group] == 0:
                done = open_groups.pop(group)
                a, b = group
                cube[a:b] = done.normalised()
                weight_sum[a:b], nvis[a:b] = done.weight_sum, done.nvis
    image = core_cube.cube_image(
        datasets, cube, weight_sum, nvis, cell_arcsec=cell_arcsec, epsilon=params["epsilon"]
    )
    report = _flag_report(summaries)
    print(
        f"imaged a cube of {len(freq)} channels ({int(nvis.sum()):,} Stokes I samples) in "
        f"{len(jobs)} tasks; flagged {report['flagged_fraction']:.2%} of "
        f"{report['samples']:,} visibilities"
    )
    image.attrs["flagged_fraction"] = report["flagged_fraction"]
    return image, [s["gains"] for s in summaries if s["gains"] is not None]


def _empty(imsize: int) -> core_imaging.DirtySum:
    return core_imaging.DirtySum(image=np.zeros((imsize, imsize)))


def _clean_inputs(
    ex: blk.SerialExecutor | blk.DaskExecutor,
    blocks: list[blk.Block],
    datasets: list[xr.Dataset],
    steps: blk.Steps,
    grid: blk.Grid,
    params: dict,
) -> tuple[list, list[dict], dict]:
    """The blocks as every later pass of CLEAN uses them, their summaries, and what each of
    those passes needs besides (the shared weight density for uniform/Briggs weights of
    reread blocks).

    Kept (``clean_visibilities: keep``): the prepared Stokes I samples stay on the workers,
    reweighted once. Reread: each pass reads, flags and calibrates its block again with the
    gains of the first pass, so memory stays bounded by the block size (a read per pass more).
    ``auto`` keeps them when they fill at most half the cluster's memory."""
    choice = params["clean_visibilities"]
    if choice == "auto":
        needed, memory = blk.stokes_i_bytes(datasets), ex.memory_bytes()
        choice = "keep" if blk.keep_between_passes(needed, memory) else "reread"
        print(
            f"CLEAN {'keeps' if choice == 'keep' else 'rereads'} the visibilities between "
            f"major cycles: {needed / 1e9:.3g} GB of Stokes I samples, cluster memory "
            f"{memory / 1e9:.3g} GB"
        )
    weighted = params["weighting"] != "natural"
    if choice == "reread":
        handles = ex.map(
            blk.first_pass, blocks, steps=steps, density_grid=grid if weighted else None
        )
        summaries: list[dict] = [{}] * len(blocks)
        density = None
        for i, (summary, part) in ex.completed(handles):
            summaries[i] = summary
            density = part if density is None else density + part
        extra, scheme = {}, None
        if weighted:
            extra["density"] = ex.share(density)
            scheme = blk.Weighting(params["weighting"], params["robust"], grid)
        again = replace(steps, model=())  # the model only served to solve the gains
        rereads = [
            blk.Reread(b, again, s["gains"], scheme) for b, s in zip(blocks, summaries, strict=True)
        ]
        return rereads, summaries, extra
    prepared = ex.map(blk.prepare_block, blocks, steps=steps)
    summaries = ex.gather(ex.map(blk.summary, prepared))
    if weighted:
        density = blk.total(ex, ex.map(blk.density_block, prepared, grid=grid))
        reweighted = ex.map(
            blk.reweight_block,
            prepared,
            density=ex.share(density),
            grid=grid,
            scheme=params["weighting"],
            robust=params["robust"],
        )
        ex.release(prepared)
        prepared = reweighted
    return prepared, summaries, {}


@task(name="clean")
def clean_image(
    store: str, datasets: list[xr.Dataset], imsize: int, cell_arcsec: float, params: dict
) -> tuple[xr.Dataset, list[xr.Dataset]]:
    """Hogbom CLEAN with major cycles through the visibilities, kept on the workers or read
    again at each cycle (see :func:`_clean_inputs`)."""
    steps = _steps(datasets, params)
    cell_rad = math.radians(cell_arcsec / 3600)
    eps = params["clean_epsilon"]
    grid = blk.Grid(imsize, cell_rad, eps)
    blocks = blk.plan_blocks(store, datasets, block_mb=params["block_mb"], solint=steps.solint)
    with blk.executor() as ex:
        prepared, summaries, extra = _clean_inputs(ex, blocks, datasets, steps, grid, params)
        psf_grid = blk.Grid(2 * imsize, cell_rad, eps)
        psf_sum = blk.total(ex, ex.map(blk.psf_block, prepared, grid=psf_grid, **extra))
        psf2 = psf_sum.image / psf_sum.weight_sum
        q = imsize // 2
        psf = psf2[q : q + imsize, q : q + imsize]
        beam = fit_beam(psf, cell_arcsec)
        sidelobe = psf_sidelobe(psf)
        sums = blk.sums_by_partition(
            ex, ex.map(blk.residual_block, prepared, grid=grid, **extra), blocks
        )
        parts = [sums.get(ds.attrs["partition_name"], _empty(imsize)) for ds in datasets]
        dirty = core_imaging.dirty_image_from_sums(
            datasets, parts, cell_arcsec=cell_arcsec, epsilon=eps, weighting=params["weighting"]
        )
        weight_sum = float(dirty.attrs["sum_weights"])
        residual = dirty.values.copy()
        rms = _rms(residual, params["rms_box"])
        threshold = max(params["threshold_jy"], params["threshold_rms"] * rms)
        mask = _mask(params["mask"], imsize)
        model = np.zeros((imsize, imsize))
        niter, done, cycles = params["niter"], 0, 0
        while done < niter and cycles < params["max_major"]:
            region = residual if mask is None else np.where(mask, residual, 0)
            peak = float(np.abs(region).max())
            if peak < threshold:
                break
            frac = min(0.8, max(0.05, params["cyclefactor"] * sidelobe))
            cycle_threshold = max(threshold, frac * peak)
            delta, _, n = hogbom(
                residual,
                psf2,
                gain=params["clean_gain"],
                threshold=cycle_threshold,
                niter=niter - done,
                mask=mask,
            )
            if n == 0:
                break
            done += n
            model += delta
            shared = ex.share(model.copy())
            residuals = ex.map(blk.residual_block, prepared, grid=grid, model=shared, **extra)
            total = blk.total(ex, residuals)
            residual = total.image / weight_sum
            cycles += 1
            print(f"major cycle {cycles}: {n} components, cycle threshold {cycle_threshold:.4g}")
        ex.release(prepared)
    restored = restore(model, residual, beam, cell_arcsec)
    report = _flag_report(summaries)
    print(
        f"CLEAN: {done} components in {cycles} major cycles, dirty rms {rms:.4g}, threshold "
        f'{threshold:.4g} Jy/beam; beam {beam.major_arcsec:.3f}" x {beam.minor_arcsec:.3f}" '
        f"PA {beam.pa_deg:.2f} deg; flagged {report['flagged_fraction']:.2%}"
    )
    attrs = {
        **dirty.attrs,
        **beam.attrs(),
        "clean_iterations": done,
        "clean_major_cycles": cycles,
        "clean_threshold": float(threshold),
        "clean_gain": float(params["clean_gain"]),
        "dirty_rms": rms,
        "deconvolver": "hogbom",
        "flagged_fraction": report["flagged_fraction"],
    }

    def da(values: np.ndarray, name: str, bunit: str) -> xr.DataArray:
        return xr.DataArray(
            values, dims=("y", "x"), coords=dirty.coords, name=name, attrs={**attrs, "bunit": bunit}
        )

    images = xr.Dataset(
        {
            "dirty": da(dirty.values, "dirty", "Jy/beam"),
            "model": da(model, "model", "Jy/pixel"),
            "residual": da(residual, "residual", "Jy/beam"),
            "restored": da(restored, "restored", "Jy/beam"),
            "psf": da(psf, "psf", ""),
        },
        attrs=attrs,
    )
    return images, [s["gains"] for s in summaries if s["gains"] is not None]


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
