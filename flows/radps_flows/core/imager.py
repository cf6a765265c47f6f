"""The imaging drivers: a dirty image or cube in one pass over the blocks, CLEAN in major cycles.

Each driver maps the block functions of :mod:`radps_flows.core.blocks` through an executor
(:mod:`radps_flows.core.executors`) and folds what comes back. The imaging pipeline's tasks
call them with the flow run's Dask cluster; :func:`make_dirty_image` and
:func:`make_clean_image`, for data at hand (a test, a notebook), call the same drivers with a
serial executor. There is no other imaging path: what the tests check is what a PipelineRun
runs.

The major cycles (:func:`clean_image`): residual visibilities ``V - predict(model)`` are
imaged with the same gridder as the dirty image, the model predicted with
:func:`radps_flows.core.calibration.image_model_visibilities` (ducc0 ``dirty2vis``, its
adjoint), so model and residual always agree with the visibilities instead of accumulating
PSF-subtraction errors. The minor cycles are :func:`radps_flows.core.clean.hogbom`, down to
``max(threshold, min(0.8, max(0.05, cyclefactor * psf_sidelobe)) * peak)`` as tclean does,
with a PSF of the image's own size (as tclean's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import xarray as xr

from radps_flows.core import blocks as blk
from radps_flows.core import cube as core_cube
from radps_flows.core import imaging as core_imaging
from radps_flows.core.beam import Beam, fit_beam, restore
from radps_flows.core.clean import (
    CleanSettings,
    box_mask,
    box_rms,
    compile_minor_cycle_in_background,
    cycle_epsilon,
    hogbom,
    intermediate_epsilon,
    psf_sidelobe,
)
from radps_flows.core.executors import Executor, SerialExecutor
from radps_flows.core.interaction import CleanAnswer, CleanCheckpoint, Interaction

Log = Callable[[str], object]

CANDIDATE_FRACTION = 0.5
"""A minor cycle works in the box around the pixels at least this fraction of its cycle
threshold (:func:`radps_flows.core.clean.hogbom`'s ``floor``): a pixel outside would have to
rise by half the threshold within one cycle to be missed, and the next major cycle finds it."""


def _quiet(_: str) -> None:
    pass


def flag_report(summaries: Sequence[dict]) -> dict:
    """Visibilities, flagged before and after, and the fraction flagged, over block
    summaries (:func:`radps_flows.core.blocks.summary`); ``cache``: the blocks whose flags and
    gains the stage cache held, missed or refreshed (:func:`cache_report`)."""
    samples = sum(s["samples"] for s in summaries)
    before = sum(s["flagged_before"] for s in summaries)
    after = sum(s["flagged_after"] for s in summaries)
    return {
        "samples": samples,
        "flagged_before": before,
        "flagged_after": after,
        "flagged_fraction": after / samples if samples else 0.0,
        "cache": cache_report(summaries),
    }


def cache_report(summaries: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Per cached stage, the number of blocks of each outcome: ``{"flagging": {"hit": 3}}``."""
    out: dict[str, dict[str, int]] = {}
    for s in summaries:
        for stage, outcome in (s.get("cache") or {}).items():
            counts = out.setdefault(stage, {})
            counts[outcome] = counts.get(outcome, 0) + 1
    return out


def _gains(summaries: Sequence[dict]) -> list[xr.Dataset]:
    return [s["gains"] for s in summaries if s["gains"] is not None]


def dirty_image(
    ex: Executor,
    blocks: Sequence[blk.Block],
    datasets: Sequence[xr.Dataset],
    steps: blk.Steps,
    grid: blk.Grid,
    *,
    log: Log = _quiet,
) -> tuple[xr.DataArray, list[xr.Dataset]]:
    """One pass over the blocks (read, flag, calibrate, grid), partial images summed: the
    Stokes I MFS dirty image (attributes of
    :func:`radps_flows.core.imaging.dirty_image_from_sums`, plus ``flagged_fraction`` and
    ``flag_report``, :func:`flag_report`'s counts) and the
    gain solutions of each block."""
    core_imaging.common_phase_center(datasets)
    cell_arcsec = math.degrees(grid.cell_rad) * 3600
    sums = [core_imaging.DirtySum.empty(grid.imsize) for _ in datasets]
    summaries = []
    handles = ex.map(blk.dirty_block, blocks, steps=steps, grid=grid)
    for i, (part, info) in ex.completed(handles):
        sums[blocks[i].dataset] = sums[blocks[i].dataset] + part
        summaries.append(info)
    image = core_imaging.dirty_image_from_sums(
        datasets, sums, cell_arcsec=cell_arcsec, epsilon=grid.epsilon
    )
    report = flag_report(summaries)
    log(
        f"imaged {image.attrs['nvis']:,} Stokes I samples in {len(blocks)} blocks; "
        f"flagged {report['flagged_fraction']:.2%} of {report['samples']:,} visibilities"
    )
    image.attrs["flagged_fraction"] = report["flagged_fraction"]
    image.attrs["flag_report"] = report
    return image, _gains(summaries)


def dirty_cube(
    ex: Executor,
    blocks: Sequence[blk.Block],
    datasets: Sequence[xr.Dataset],
    steps: blk.Steps,
    grid: blk.Grid,
    *,
    log: Log = _quiet,
) -> tuple[xr.DataArray, list[xr.Dataset]]:
    """One task per (block, channel group); a group's partial cubes are summed as they come
    back and normalised into the cube once all its blocks are in, so the caller holds the cube
    (float32) and the groups still open, whatever the size of the data."""
    core_imaging.common_phase_center(datasets)
    freq = core_cube.common_frequencies(datasets)
    imsize = grid.imsize
    groups = blk.channel_groups(len(freq), imsize)
    jobs = [(b, g) for g in groups for b in blocks]
    cube = np.full((len(freq), imsize, imsize), np.nan, dtype=np.float32)
    weight_sum = np.zeros(len(freq))
    nvis = np.zeros(len(freq), dtype=np.int64)
    beams: list[Beam | None] = [None] * len(freq)
    cell_arcsec = math.degrees(grid.cell_rad) * 3600
    open_groups: dict[tuple[int, int], core_cube.CubeSum] = {}
    missing = dict.fromkeys(groups, len(blocks))
    summaries = []
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
            beams[a:b] = done.beams(cell_arcsec)
    image = core_cube.cube_image(
        datasets,
        cube,
        weight_sum,
        nvis,
        cell_arcsec=cell_arcsec,
        epsilon=grid.epsilon,
        beams=beams,
    )
    report = flag_report(summaries)
    log(
        f"imaged a cube of {len(freq)} channels ({int(nvis.sum()):,} Stokes I samples) in "
        f"{len(jobs)} tasks; flagged {report['flagged_fraction']:.2%} of "
        f"{report['samples']:,} visibilities"
    )
    image.attrs["flagged_fraction"] = report["flagged_fraction"]
    image.attrs["flag_report"] = report
    return image, _gains(summaries)


@dataclass
class CleanInputs:
    """The blocks as every later pass of CLEAN uses them (see :func:`clean_inputs`)."""

    handles: list
    """Kept blocks (:class:`radps_flows.core.blocks.Prepared`) or reread ones
    (:class:`radps_flows.core.blocks.Reread`), or the executor's handles of them."""
    dataset: list[int]
    """The index of the dataset each is of."""
    summaries: list[dict]
    """The summaries of the blocks as planned (partition, flag counts, gains)."""
    extra: dict
    """What each pass needs besides: the shared weight density of reread blocks."""
    nthreads: int = 1
    """The gridder's threads in each pass's call."""
    minor_threads: int = 1
    """The minor cycle's threads: all the workers' where they are threads of this process
    (nothing else runs meanwhile), else one (on Kubernetes the flow pod is small)."""


def clean_inputs(
    ex: Executor,
    blocks: Sequence[blk.Block],
    datasets: Sequence[xr.Dataset],
    steps: blk.Steps,
    grid: blk.Grid,
    settings: CleanSettings,
    *,
    log: Log = _quiet,
) -> CleanInputs:
    """The blocks as every later pass of CLEAN uses them, their summaries, and what each of
    those passes needs besides (the shared weight density for uniform/Briggs weights of
    reread blocks).

    Kept (``visibilities: keep``): the prepared Stokes I samples stay on the workers,
    reweighted once. Where the workers are threads of this process (a local run), each
    dataset's blocks are then merged into one, which every pass grids over all the threads
    (:func:`radps_flows.core.blocks.merge_prepared`). Reread: each pass reads, flags and
    calibrates its block again with the gains of the first pass, so memory stays bounded by
    the block size (a read per pass more). ``auto`` keeps them when they fill at most half
    the cluster's memory."""
    choice = settings.visibilities
    if choice == "auto":
        needed, memory = blk.stokes_i_bytes(datasets, steps.data_group), ex.memory_bytes()
        choice = "keep" if blk.keep_between_passes(needed, memory) else "reread"
        log(
            f"CLEAN {'keeps' if choice == 'keep' else 'rereads'} the visibilities between "
            f"major cycles: {needed / 1e9:.3g} GB of Stokes I samples, cluster memory "
            f"{memory / 1e9:.3g} GB"
        )
    weighted = settings.weighting != "natural"
    of_dataset = [b.dataset for b in blocks]
    local_threads = ex.threads() if ex.workers_in_this_process() else 1
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
            scheme = blk.Weighting(settings.weighting, settings.robust, grid)
        # the model only served to solve the gains; the flags the first pass made (or
        # refreshed) are in the cache for the passes after it
        again = replace(steps, model=(), cache=steps.cache and steps.cache.using())
        rereads = [
            blk.Reread(b, again, s["gains"], scheme) for b, s in zip(blocks, summaries, strict=True)
        ]
        return CleanInputs(rereads, of_dataset, summaries, extra, minor_threads=local_threads)
    prepared = ex.map(blk.prepare_block, blocks, steps=steps)
    summaries = ex.gather(ex.map(blk.summary, prepared))
    if weighted:
        density = blk.total(ex, ex.map(blk.density_block, prepared, grid=grid))
        reweighted = ex.map(
            blk.reweight_block,
            prepared,
            density=ex.share(density),
            grid=grid,
            scheme=settings.weighting,
            robust=settings.robust,
        )
        ex.release(prepared)
        prepared = reweighted
    if not ex.workers_in_this_process():
        return CleanInputs(prepared, of_dataset, summaries, {})
    kept = sorted(set(of_dataset))
    if len(kept) < len(prepared):
        groups = [[h for h, d in zip(prepared, of_dataset, strict=True) if d == k] for k in kept]
        merged = ex.map(blk.merge_prepared, groups)
        ex.release(prepared)
        prepared, of_dataset = merged, kept
    return CleanInputs(
        prepared,
        of_dataset,
        summaries,
        {},
        nthreads=max(1, local_threads // len(prepared)),
        minor_threads=local_threads,
    )


def clean_image(
    ex: Executor,
    blocks: Sequence[blk.Block],
    datasets: Sequence[xr.Dataset],
    steps: blk.Steps,
    grid: blk.Grid,
    settings: CleanSettings,
    *,
    log: Log = _quiet,
    interaction: Interaction | None = None,
) -> tuple[xr.Dataset, list[xr.Dataset]]:
    """Hogbom CLEAN with major cycles through the visibilities, kept on the workers or read
    again at each cycle (see :func:`clean_inputs`): the major-cycle driver.

    With an ``interaction``, CLEAN asks how to go on after the PSF and dirty image (and
    after each major cycle, if it says so), and takes the answer's niter, threshold and mask,
    or stops there (:mod:`radps_flows.core.interaction`); the answers are in the attribute
    ``clean_answers``.

    ``grid.epsilon`` is the gridder accuracy of both directions (the residual is a difference
    of nearly equal numbers: tighter than for a dirty image). Returns the ``(y, x)`` images
    ``dirty``, ``model`` (Jy/pixel), ``residual``, ``restored`` (Jy/beam) and ``psf`` (peak
    1), with the dirty image's attributes plus the beam (``beam_major_arcsec``,
    ``beam_minor_arcsec``, ``beam_pa_deg``), ``clean_iterations``, ``clean_major_cycles``,
    ``clean_threshold``, ``clean_gain``, ``dirty_rms``; and the gain solutions of each block.
    """
    core_imaging.common_phase_center(datasets)
    imsize, cell_rad = grid.imsize, grid.cell_rad
    cell_arcsec = math.degrees(cell_rad) * 3600
    compile_minor_cycle_in_background()
    inputs = clean_inputs(ex, blocks, datasets, steps, grid, settings, log=log)
    prepared, extra = inputs.handles, inputs.extra
    grid = replace(grid, nthreads=inputs.nthreads)
    # The PSF at the image's own size, as CASA's (a quarter of the grid and FFT of one twice
    # as large; the gridding itself costs about the same), in one pass over the data with the
    # first residual.
    psf_sum = core_imaging.DirtySum.empty(imsize)
    parts = [core_imaging.DirtySum.empty(imsize) for _ in datasets]
    handles = ex.map(blk.psf_and_residual_block, prepared, grid=grid, **extra)
    for i, (psf_part, part) in ex.completed(handles):
        psf_sum = psf_sum + psf_part
        parts[inputs.dataset[i]] = parts[inputs.dataset[i]] + part
    if psf_sum.weight_sum <= 0:
        raise ValueError("no visibilities with positive weight to image")
    psf = psf_sum.image / psf_sum.weight_sum
    beam = fit_beam(psf, cell_arcsec)
    sidelobe = psf_sidelobe(psf)
    dirty = core_imaging.dirty_image_from_sums(
        datasets, parts, cell_arcsec=cell_arcsec, epsilon=grid.epsilon, weighting=settings.weighting
    )
    weight_sum = float(dirty.attrs["sum_weights"])
    residual = dirty.values.copy()
    rms = box_rms(residual, settings.rms_box)
    threshold = max(settings.threshold_jy, settings.threshold_rms * rms)
    mask = box_mask(settings.mask, imsize)
    if settings.epsilon is None:
        epsilon = cycle_epsilon(float(np.abs(residual).max()), rms, grid.epsilon)
        rough = intermediate_epsilon(epsilon)
        log(
            f"CLEAN's last major cycle grids at epsilon {epsilon:.2g}, those before it at "
            f"{rough:.2g} (auto)"
        )
    else:
        epsilon = rough = settings.epsilon
    residual_epsilon = epsilon  # the dirty image is at least as accurate
    model = np.zeros((imsize, imsize))
    niter, done, cycles = settings.niter, 0, 0
    mask_boxes = [list(b) for b in settings.mask] if settings.mask else None
    answers: list[dict] = []

    def major_cycle(at: float) -> np.ndarray:
        shared = ex.share(model.copy())
        cycle_grid = replace(grid, epsilon=at)
        residuals = ex.map(blk.residual_block, prepared, grid=cycle_grid, model=shared, **extra)
        return blk.total(ex, residuals).image / weight_sum

    def ask() -> bool:
        """Ask how to go on and take the answer; False: stop CLEANing."""
        nonlocal niter, threshold, mask, mask_boxes, inputs, prepared, extra
        nonlocal residual, residual_epsilon
        assert interaction is not None
        region = residual if mask is None else np.where(mask, residual, 0)
        checkpoint = CleanCheckpoint(
            cycle=cycles,
            components=done,
            niter=niter,
            threshold=float(threshold),
            peak=float(np.abs(region).max()),
            rms=rms,
            mask=mask_boxes,
            images=_checkpoint_images(dirty, residual, model, psf, beam),
        )
        if not interaction.keeps_workers:
            ex.release(prepared)
        answer = interaction.ask(checkpoint)
        answers.append(_answer_record(checkpoint, answer))
        if answer.niter is not None:
            niter = answer.niter
        if answer.threshold_jy is not None:
            threshold = answer.threshold_jy
        if answer.set_mask:
            mask, mask_boxes = answer.mask, answer.mask_boxes
        if not interaction.keeps_workers and not (answer.stop and residual_epsilon == epsilon):
            # the workers may have gone: the blocks again (flags and gains from the cache)
            again = replace(steps, cache=steps.cache and steps.cache.using())
            inputs = clean_inputs(ex, blocks, datasets, again, grid, settings, log=log)
            prepared, extra = inputs.handles, inputs.extra
        if answer.stop and residual_epsilon != epsilon:
            residual, residual_epsilon = major_cycle(epsilon), epsilon
            log(f"the residual imaged again at epsilon {epsilon:.2g} before CLEAN stops")
        return not answer.stop

    asking = interaction is not None and ask()
    if interaction is not None and not asking:
        niter = done  # stopped before the first minor cycle
    while done < niter and cycles < settings.max_major:
        region = residual if mask is None else np.where(mask, residual, 0)
        peak = float(np.abs(region).max())
        n = 0
        if peak >= threshold:
            frac = min(0.8, max(0.05, settings.cyclefactor * sidelobe))
            cycle_threshold = max(threshold, frac * peak)
            delta, _, n = hogbom(
                residual,
                psf,
                gain=settings.gain,
                threshold=cycle_threshold,
                niter=niter - done,
                mask=mask,
                floor=CANDIDATE_FRACTION * cycle_threshold,
                threads=inputs.minor_threads,
            )
        if n == 0:
            if residual_epsilon == epsilon:
                break
            # CLEAN would end on a rough residual, which may only seem below the threshold
            residual, residual_epsilon = major_cycle(epsilon), epsilon
            log(f"the residual imaged again at epsilon {epsilon:.2g} before CLEAN ends")
            continue
        done += n
        model += delta
        cycles += 1
        # A residual that only serves the next minor cycle can be rougher than the one CLEAN
        # ends with (see clean.INTERMEDIATE_EPSILON); the last cycle's is exact.
        last = done >= niter or cycle_threshold <= threshold or cycles >= settings.max_major
        residual_epsilon = epsilon if last else rough
        residual = major_cycle(residual_epsilon)
        log(
            f"major cycle {cycles}: {n} components, cycle threshold {cycle_threshold:.4g}, "
            f"epsilon {residual_epsilon:.2g}"
        )
        if asking and interaction is not None and interaction.after_each_cycle and not last:
            asking = ask()
            if not asking:
                niter = done
    ex.release(prepared)
    restored = restore(model, residual, beam, cell_arcsec)
    report = flag_report(inputs.summaries)
    log(
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
        "clean_gain": float(settings.gain),
        "dirty_rms": rms,
        "deconvolver": "hogbom",
        "flagged_fraction": report["flagged_fraction"],
        "flag_report": report,
    }
    if interaction is not None:
        attrs["clean_answers"] = answers

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
    return images, _gains(inputs.summaries)


def _checkpoint_images(
    dirty: xr.DataArray, residual: np.ndarray, model: np.ndarray, psf: np.ndarray, beam: Beam
) -> xr.Dataset:
    """The images a person looks at to answer a checkpoint, with the dirty image's
    attributes and the beam (as the products have them)."""
    attrs = {**dirty.attrs, **beam.attrs()}

    def da(values: np.ndarray, bunit: str) -> xr.DataArray:
        return xr.DataArray(
            values.copy(), dims=("y", "x"), coords=dirty.coords, attrs={**attrs, "bunit": bunit}
        )

    return xr.Dataset(
        {
            "dirty": da(dirty.values, "Jy/beam"),
            "residual": da(residual, "Jy/beam"),
            "model": da(model, "Jy/pixel"),
            "psf": da(psf, ""),
        }
    )


def _answer_record(checkpoint: CleanCheckpoint, answer: CleanAnswer) -> dict:
    """What an answer changed, for the products' HISTORY."""
    record: dict = {"cycle": checkpoint.cycle, "components": checkpoint.components}
    if answer.pause is not None:
        record["pause"] = answer.pause
    if answer.stop:
        record["action"] = "stop"
    if answer.niter is not None:
        record["niter"] = answer.niter
    if answer.threshold_jy is not None:
        record["threshold_jy"] = answer.threshold_jy
    if answer.set_mask:
        record["mask"] = answer.mask_file or answer.mask_boxes or []
    return record


def grid_for(imsize: int, cell_arcsec: float, epsilon: float) -> blk.Grid:
    """The image grid of ``imsize`` pixels of ``cell_arcsec``, checked for the gridder."""
    cell_rad = math.radians(cell_arcsec / 3600)
    core_imaging.check_geometry(imsize, cell_rad)
    return blk.Grid(imsize, cell_rad, epsilon)


def make_dirty_image(
    datasets: Sequence[xr.Dataset],
    *,
    imsize: int,
    cell_arcsec: float,
    epsilon: float = 1e-4,
    steps: blk.Steps | None = None,
    block_mb: float = blk.DEFAULT_BLOCK_MB,
) -> xr.DataArray:
    """The imaging pipeline's dirty image of datasets at hand (lazy or in memory), block by
    block in this process: :func:`dirty_image` with a serial executor. ``steps`` flag and
    calibrate each block first (default: image the ``base`` data group as it is)."""
    if not datasets:
        raise ValueError("no datasets to image")
    steps = steps or blk.Steps()
    grid = grid_for(imsize, cell_arcsec, epsilon)
    blocks = blk.blocks_for(None, datasets, steps, block_mb)
    image, _ = dirty_image(SerialExecutor(), blocks, datasets, steps, grid)
    return image


def make_clean_image(
    datasets: Sequence[xr.Dataset],
    *,
    imsize: int,
    cell_arcsec: float,
    settings: CleanSettings | None = None,
    epsilon: float = 1e-6,
    steps: blk.Steps | None = None,
    block_mb: float = blk.DEFAULT_BLOCK_MB,
    interaction: Interaction | None = None,
    **clean: Any,
) -> xr.Dataset:
    """The imaging pipeline's CLEAN of datasets at hand, block by block in this process:
    :func:`clean_image` with a serial executor. ``settings`` (or its fields as keywords)
    as :class:`radps_flows.core.clean.CleanSettings`."""
    if not datasets:
        raise ValueError("no datasets to image")
    settings = replace(settings or CleanSettings(), **clean)
    steps = steps or blk.Steps()
    grid = grid_for(imsize, cell_arcsec, epsilon)
    blocks = blk.blocks_for(None, datasets, steps, block_mb)
    ex = SerialExecutor()
    images, _ = clean_image(ex, blocks, datasets, steps, grid, settings, interaction=interaction)
    return images
