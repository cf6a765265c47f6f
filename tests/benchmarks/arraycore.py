"""Array-core benchmarks: each stage's visibilities per second per core against a reference
computed in the same run on the same arrays.

* imaging: our per-block path (Stokes I formation + ducc0 gridding; with and without the zarr
  read) against ducc0 ``vis2dirty`` alone on the prepared Stokes I arrays;
* calibration: :func:`solve_gains` (batched StEFCal on normal-equation sums) against plain
  numpy StEFCal (:func:`stefcal_reference`, dense matrices, one interval and receptor at a
  time, data pre-averaged with numpy the same way);
* flagging: :func:`mad_flags` (no reference kernel: absolute rate).

Visibilities are complex correlations (time x baseline x channel x polarization) throughout,
so rates compare directly; everything runs single-threaded in this process (one core).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import ducc0
import numpy as np

from radps_flows.core import blocks as blk
from radps_flows.core import calibration as cal
from radps_flows.core.executors import SerialExecutor
from radps_flows.core.flagging import mad_flags
from radps_flows.core.imaging import dirty_sum_from_arrays, stokes_i
from radps_flows.core.io import open_processing_set
from radps_flows.core.synth import PointSource, SynthesisSpec, synthesize_processing_set
from tests.oracles import stefcal_reference

N_ANTENNAS = 27
N_CHANNELS = 64
N_POL = 2
IMSIZE = 1024
CELL_ARCSEC = 4.0
EPSILON = 1e-4


def spec_for(n_vis: float) -> SynthesisSpec:
    per_time = N_ANTENNAS * (N_ANTENNAS - 1) // 2 * N_CHANNELS * N_POL
    return SynthesisSpec(
        n_antennas=N_ANTENNAS,
        n_channels=N_CHANNELS,
        n_polarizations=N_POL,
        n_times=max(1, round(n_vis / per_time)),
        sources=(PointSource(1.0), PointSource(0.5, 300, 120)),
        noise_jy=0.1,
        seed=1,
    )


def synthesize(n_vis: float, folder: Path) -> tuple[Path, dict]:
    """A synthesized set of about ``n_vis`` visibilities (reused when already there)."""
    spec = spec_for(n_vis)
    path = folder / f"bench-{spec.n_visibilities}.ps.zarr"
    info = {"n_visibilities": spec.n_visibilities, "n_times": spec.n_times}
    if path.exists():
        info["synthesis_s"] = None
        return path, info
    t0 = time.perf_counter()
    synthesize_processing_set(path, spec, overwrite=True)
    info["synthesis_s"] = time.perf_counter() - t0
    return path, info


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def imaging(path: Path, n_vis: int) -> dict:
    cell = math.radians(CELL_ARCSEC / 3600)
    (ds,) = open_processing_set(path)
    grid = blk.Grid(IMSIZE, cell, EPSILON, 1)
    blocks = blk.plan_blocks(str(path), [ds])
    # our path, block by block from zarr (page cache warm after the first pass)
    ex = SerialExecutor()
    ex.map(blk.dirty_block, blocks[:1], steps=blk.Steps(), grid=grid)  # warm-up
    _, t_stage = _timed(ex.map, blk.dirty_block, blocks, steps=blk.Steps(), grid=grid)
    # the same blocks in memory: read once, then Stokes I + gridding timed
    t_read = 0.0
    t_stokes = 0.0
    t_ours = 0.0
    t_ducc = 0.0
    stokes_samples = 0
    for b in blocks:
        loaded, dt = _timed(blk.load_block, b)
        t_read += dt
        order = ("time", "baseline_id", "frequency", "polarization")
        vis = loaded["VISIBILITY"].transpose(*order).values
        flag = loaded["FLAG"].transpose(*order).values
        weight = loaded["WEIGHT"].transpose(*order).values
        uvw = loaded["UVW"].transpose("time", "baseline_id", "uvw_label").values
        freq = loaded["frequency"].values
        t0 = time.perf_counter()
        vis_i, w_i = stokes_i(vis, flag, weight, [str(p) for p in loaded["polarization"].values])
        nf = vis_i.shape[-1]
        t1 = time.perf_counter()
        dirty_sum_from_arrays(
            uvw.reshape(-1, 3),
            freq,
            vis_i.reshape(-1, nf),
            w_i.reshape(-1, nf),
            imsize=IMSIZE,
            cell_rad=cell,
            epsilon=EPSILON,
            uvw_sign=-1,
        )
        t2 = time.perf_counter()
        t_stokes += t1 - t0
        t_ours += t2 - t0
        # ducc0 alone on prepared arrays (what dirty_sum_from_arrays hands it)
        u = np.ascontiguousarray(uvw.reshape(-1, 3), dtype=np.float64)
        v = np.ascontiguousarray(vis_i.reshape(-1, nf), dtype=np.complex64)
        w = np.ascontiguousarray(w_i.reshape(-1, nf), dtype=np.float32)
        t3 = time.perf_counter()
        ducc0.wgridder.vis2dirty(
            uvw=u,
            freq=freq,
            vis=v,
            wgt=w,
            npix_x=IMSIZE,
            npix_y=IMSIZE,
            pixsize_x=cell,
            pixsize_y=cell,
            epsilon=EPSILON,
            do_wgridding=True,
            flip_v=True,
            divide_by_n=False,
            nthreads=1,
        )
        t_ducc += time.perf_counter() - t3
        stokes_samples += int((w > 0).sum())
    return {
        "blocks": len(blocks),
        "stokes_i_samples": stokes_samples,
        "seconds": {
            "stage_from_zarr": t_stage,
            "read": t_read,
            "stokes_i": t_stokes,
            "stage_in_memory": t_ours,
            "ducc0_alone": t_ducc,
        },
        "vis_per_s_per_core": {
            "stage_from_zarr": n_vis / t_stage,
            "stage_in_memory": n_vis / t_ours,
            "ducc0_alone": n_vis / t_ducc,
        },
        "ratio_vs_ducc0": {
            "stage_in_memory": t_ducc / t_ours,
            "stage_from_zarr": t_ducc / t_stage,
        },
    }


def clean(path: Path, n_vis: int, niter: int = 1000) -> dict:
    """The CLEAN driver (serial, visibilities kept) at IMSIZE, Hogbom niter 1000 gain 0.1
    threshold 0, against its parts measured in the same run: one degrid + grid pass of ducc0
    alone on the same prepared samples (what each major cycle should cost) and the minor
    cycles alone on the dirty image."""
    from radps_flows.core.clean import hogbom
    from radps_flows.core.imager import CANDIDATE_FRACTION, make_clean_image

    cell = math.radians(CELL_ARCSEC / 3600)
    datasets = open_processing_set(path)
    images, t_clean = _timed(
        make_clean_image,
        datasets,
        imsize=IMSIZE,
        cell_arcsec=CELL_ARCSEC,
        niter=niter,
        gain=0.1,
        threshold_jy=0.0,
        visibilities="keep",
    )
    cycles = int(images.attrs["clean_major_cycles"])
    # one major cycle's data work, ducc0 alone: predict the model, grid the residual
    model = images["model"].values
    t_pass = 0.0
    for b in blk.plan_blocks(None, datasets):
        v = blk.prepare_block(b, blk.Steps()).vis
        w = np.ascontiguousarray(v.weight, dtype=np.float64)
        t0 = time.perf_counter()
        predicted = ducc0.wgridder.dirty2vis(
            uvw=v.uvw,
            freq=v.freq,
            dirty=np.ascontiguousarray(model.T),
            pixsize_x=cell,
            pixsize_y=cell,
            epsilon=1e-6,
            do_wgridding=True,
            flip_v=True,
            divide_by_n=False,
            nthreads=1,
        )
        ducc0.wgridder.vis2dirty(
            uvw=v.uvw,
            freq=v.freq,
            vis=np.ascontiguousarray(v.vis - predicted),
            wgt=w,
            npix_x=IMSIZE,
            npix_y=IMSIZE,
            pixsize_x=cell,
            pixsize_y=cell,
            epsilon=1e-6,
            do_wgridding=True,
            flip_v=True,
            divide_by_n=False,
            nthreads=1,
        )
        t_pass += time.perf_counter() - t0
    dirty, psf = images["dirty"].values, images["psf"].values
    peak = float(np.abs(dirty).max())
    (_, _, n), t_minor = _timed(
        hogbom,
        dirty,
        psf,
        gain=0.1,
        threshold=0.1 * peak,
        niter=niter,
        floor=CANDIDATE_FRACTION * 0.1 * peak,
    )
    passes = cycles + 1  # the PSF with the first residual, then one per major cycle
    return {
        "imsize": IMSIZE,
        "niter": niter,
        "components": int(images.attrs["clean_iterations"]),
        "major_cycles": cycles,
        "seconds": {
            "clean": t_clean,
            "ducc0_degrid_grid_pass": t_pass,
            "one_minor_cycle": t_minor,
        },
        "minor_cycle_components": n,
        "clean_per_pass_vs_ducc0_pass": t_clean / passes / t_pass,
    }


def _reference_solve(ds, n_intervals: int) -> float:
    """Plain-numpy StEFCal on the first ``n_intervals`` integrations; returns seconds."""
    names, ant1, ant2 = cal.baseline_indices(ds)
    nant = len(names)
    vis = ds["VISIBILITY"].transpose("time", "baseline_id", "frequency", "polarization").values
    uvw = ds["UVW"].transpose("time", "baseline_id", "uvw_label").values
    freq = ds["frequency"].values
    model = cal.model_visibilities(uvw, freq, [cal.PointModel(1.0)])
    _, _, parallel = cal.receptor_pairs([str(p) for p in ds["polarization"].values])
    t0 = time.perf_counter()
    for t in range(n_intervals):
        m_bar = model[t].mean(axis=-1)  # (nbl,)
        for r in parallel:
            v_bar = vis[t, :, :, r].mean(axis=-1)
            rm = np.zeros((nant, nant), complex)
            mm = np.zeros((nant, nant), complex)
            rm[ant1, ant2], rm[ant2, ant1] = v_bar, v_bar.conj()
            mm[ant1, ant2], mm[ant2, ant1] = m_bar, m_bar.conj()
            stefcal_reference(rm, mm)
    return time.perf_counter() - t0


def calibration(path: Path, n_vis: int, max_times: int = 200) -> dict:
    (ds,) = open_processing_set(path)
    nt = min(ds.sizes["time"], max_times)
    sub = ds.isel(time=slice(0, nt)).load()
    n = int(sub["VISIBILITY"].size)
    _, t_ours = _timed(cal.solve_gains, sub, solint="int")
    t_ref = _reference_solve(sub, nt)
    # the model prediction is common to both: our time includes it, the reference's does not
    return {
        "intervals": nt,
        "visibilities": n,
        "seconds": {"solve_gains": t_ours, "stefcal_reference": t_ref},
        "vis_per_s_per_core": {"solve_gains": n / t_ours, "stefcal_reference": n / t_ref},
        "speedup_vs_reference": t_ref / t_ours,
    }


def flagging(path: Path, n_vis: int, max_times: int = 200) -> dict:
    (ds,) = open_processing_set(path)
    nt = min(ds.sizes["time"], max_times)
    sub = ds.isel(time=slice(0, nt)).load()
    order = ("time", "baseline_id", "frequency", "polarization")
    vis = sub["VISIBILITY"].transpose(*order).values
    _, t = _timed(mad_flags, vis, sub["FLAG"].transpose(*order).values)
    return {"visibilities": int(vis.size), "seconds": t, "vis_per_s_per_core": vis.size / t}
