"""The stages of the one array path, block by block: read, flag, calibrate, Stokes I, grid.

A *block* is a run of whole zarr time chunks of one partition (a few tens of MB of
visibilities, seconds of work). Each block is read, flagged, calibrated and turned into
Stokes I samples where it runs (a Dask worker, or this process); blocks only ever come back
as small things (partial images, gain tables), so memory stays bounded by the block size times
the worker threads, whatever the size of the data set. Where visibilities must be revisited
(CLEAN's major cycles, uniform/Briggs weights), their Stokes I samples stay on the workers as
Dask futures (Dask spills them to disk under memory pressure), or, where they would not fit,
each pass reads the block again (:class:`Reread`).

Every function here is a pure function of its block and settings; the drivers of
:mod:`radps_flows.core.imager` and the pipelines' stages map them through an executor
(:mod:`radps_flows.core.executors`). Data already in memory (a test's synthetic dataset) make
blocks too (:func:`plan_blocks` without a store), read by the same :func:`load_block`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from radps_flows import locations
from radps_flows.core import block_cache, previews, weighting
from radps_flows.core import calibration as cal
from radps_flows.core import imaging as core_imaging
from radps_flows.core import io as core_io
from radps_flows.core.cube import CubeSum, cube_sum_from_arrays
from radps_flows.core.executors import Executor
from radps_flows.core.flagging import plane_flags
from radps_flows.core.imaging import StokesIVisibilities, gather_stokes_i
from radps_flows.parameters.common import DEFAULT_BLOCK_MB
from radps_flows.stage_cache import CachePolicy

#: Largest partial cube (float64 megabytes) one cube block task returns.
CUBE_GROUP_MB = 64
ORDER = ("time", "baseline_id", "frequency", "polarization")


# ---------------------------------------------------------------------------------------------
# Blocks


@dataclass(frozen=True)
class Block:
    """Times ``start:stop`` of partition ``partition`` of the processing set ``store``, the
    ``dataset``-th of the datasets it was planned from. Without a store, ``data`` holds that
    dataset (in memory, or lazy: a serial run's)."""

    store: str | None
    partition: str
    start: int
    stop: int
    dataset: int = 0
    data: xr.Dataset | None = field(default=None, compare=False, repr=False)
    following: tuple[str, int, int] | None = field(default=None, compare=False, repr=False)
    """The block planned after this one (partition, start, stop), where blocks run one at a
    time: :func:`load_block` reads it ahead while this one is processed."""


@dataclass(frozen=True)
class Steps:
    """What happens to each block before imaging."""

    data_group: str = "base"
    flag: bool = False
    flag_threshold: float = 5.0
    flagger: str = "mad"
    """mad or aoflagger (:func:`radps_flows.core.flagging.plane_flags`)."""
    calibrate: bool = False
    model: tuple[cal.PointModel, ...] | xr.DataArray = (cal.PointModel(1.0),)
    """Point sources, or a model image (Jy/pixel, see :func:`cal.solve_gains`)."""
    refant: str | None = None
    solint: str | float = "int"
    minsnr: float = 3.0
    time_origin: float | None = None
    """Where solution intervals of ``solint`` seconds start counting: the first time of all
    the data (each partition counting from its own first time would cut intervals
    differently in each)."""
    cache: CachePolicy | None = None
    """Where each block's flags and gains are kept and looked up (None: nowhere; see
    :mod:`radps_flows.core.block_cache`)."""


@functools.lru_cache(maxsize=8)
def _partitions(store: str, version: str) -> dict[str, xr.Dataset]:
    return {ds.attrs["partition_name"]: ds for ds in core_io.open_processing_set(store)}


def _version(store: str) -> str:
    """Changes when the store is written anew (`radps run` may image a set, overwrite it with
    `synthesize` and image it again, all in one process): its root metadata's modification
    time, or on an object store its ETag."""
    for name in ("zarr.json", ".zgroup"):
        with contextlib.suppress(OSError):
            if locations.is_url(store):
                key = locations.key_of(f"{store}/{name}")
                info = locations.filesystem().info(key, refresh=True)
                return str(info.get("ETag") or info.get("LastModified"))
            return str((Path(store) / name).stat().st_mtime_ns)
    return ""


def open_datasets(store: str) -> list[xr.Dataset]:
    """The lazy partitions of a processing set, opened once per process and version of the
    store (opening reads every partition's metadata: 0.1-0.2 s)."""
    return list(_partitions(store, _version(store)).values())


def open_partition(store: str, partition: str) -> xr.Dataset:
    """The lazy dataset of one partition (see :func:`open_datasets`)."""
    return _partitions(store, _version(store))[partition]


def _names(ds: xr.Dataset, data_group: str) -> dict[str, str]:
    return core_io.data_variable_names(ds, data_group)


def plan_blocks(
    store: str | None,
    datasets: Sequence[xr.Dataset],
    *,
    block_mb: float = DEFAULT_BLOCK_MB,
    solint: str | float | None = "int",
    time_origin: float | None = None,
    data_group: str = "base",
    parallel: int = 1,
) -> list[Block]:
    """Split every partition along time into blocks of about ``block_mb`` MB of visibilities,
    of equal size, as many as a multiple of ``parallel`` (the blocks that run at once) while
    that keeps them within half and twice ``block_mb``. A cut falls on a zarr time chunk's
    edge where one is within a quarter block of it (a cut inside a chunk reads that chunk
    twice). With ``solint`` in seconds a block never splits a solution interval (counted
    from ``time_origin``, as the solve counts them: see :attr:`Steps.time_origin`); with
    ``"inf"`` a partition is one block. With ``store`` None, each block carries its dataset
    (see :class:`Block`).

    Why equal: a pass over the blocks lasts as long as its largest block, and ducc0's
    w-stacking costs each call the same FFTs whatever its size. Cut at chunk edges only, the
    CASA benchmark's set (chunks of 186 and 54 times) made blocks of 134 and 39 MB: one
    worker gridded 78 % of the data while the other waited."""
    target = max(1.0, block_mb) * 2**20
    blocks = []
    for index, ds in enumerate(datasets):
        name = str(ds.attrs.get("partition_name", index))
        var = ds[_names(ds, data_group)["vis"]]
        nt = ds.sizes["time"]
        if nt == 0:
            continue
        per_time = var.isel(time=0).size * var.dtype.itemsize
        chunks = var.chunks[var.dims.index("time")] if var.chunks else (nt,)
        if solint in (None, "inf"):
            cuts = [0, nt]
        else:
            allowed = None  # where a cut may fall: anywhere, or between solution intervals
            if solint not in ("int", 0):
                times = np.asarray(ds["time"].values, dtype=np.float64)
                bins = cal.time_bins(times, solint, time_origin)
                allowed = [c for c in range(1, nt) if bins[c] != bins[c - 1]]
            edges = [int(e) for e in np.cumsum(chunks)]
            cuts = balanced_cuts(nt, target / per_time, edges, parallel, allowed)
        source = str(store) if store is not None else None
        data = ds if store is None else None
        blocks.extend(Block(source, name, a, b, index, data) for a, b in itertools.pairwise(cuts))
    if parallel == 1 and store is not None:
        blocks = [
            replace(this, following=(after.partition, after.start, after.stop))
            for this, after in itertools.pairwise(blocks)
        ] + blocks[-1:]
    return blocks


def balanced_cuts(
    nt: int,
    per_block: float,
    edges: Sequence[int],
    parallel: int,
    allowed: Sequence[int] | None = None,
) -> list[int]:
    """Cuts ``[0, ..., nt]`` of ``nt`` times into equal blocks of about ``per_block`` times
    (see :func:`plan_blocks`): each at one of the chunk ``edges`` within a quarter block of
    where it would be, else there; only at ``allowed`` positions when given (the nearest)."""
    wanted = nt / max(per_block, 1.0)
    n = max(1, round(wanted))
    if parallel > 1 and wanted > 1 and n < 4 * parallel:  # many blocks balance by themselves
        n = max(parallel, parallel * round(wanted / parallel))
    n = min(n, nt)
    slack = max(1, nt // (4 * n))
    if allowed is not None:
        if not allowed:
            return [0, nt]
        permitted = set(allowed)
        edges = [e for e in edges if e in permitted]
    cuts = [0]
    for i in range(1, n):
        ideal = round(i * nt / n)
        near = min(edges, key=lambda e: abs(e - ideal), default=ideal)
        cut = near if abs(near - ideal) <= slack else ideal
        if allowed is not None and cut not in permitted:
            cut = min(allowed, key=lambda c: abs(c - ideal))
        if cuts[-1] < cut < nt:
            cuts.append(cut)
    return [*cuts, nt]


def blocks_for(
    store: str | None,
    datasets: Sequence[xr.Dataset],
    steps: Steps,
    block_mb: float,
    parallel: int = 1,
) -> list[Block]:
    """The blocks ``steps`` work on, ``parallel`` at a time: never splitting one of their
    solution intervals."""
    return plan_blocks(
        store,
        datasets,
        block_mb=block_mb,
        solint=steps.solint,
        time_origin=steps.time_origin,
        data_group=steps.data_group,
        parallel=parallel,
    )


READ_THREADS = 4
"""Chunks one block read fetches at once. Reading the 1e8 benchmark set's blocks took 1.65 s
one chunk at a time and 1.34 s four at a time from a local disk, 4.0 and 3.3 s from the local
SeaweedFS (8 at a time: slower on 2 cores)."""


def load_block(block: Block, data_group: str = "base") -> xr.Dataset:
    """The block's visibilities, flags, weights and UVW in memory (the one block reader).

    Where blocks run one at a time (a block that knows the one planned after it), that one
    is read on a thread while the caller works on this one: an object store's latency, and a
    disk's decompression, then overlap the gridding instead of adding to it. At most one
    block is read ahead, so a process holds at most two blocks."""
    key = (block.store, block.partition, block.start, block.stop, data_group)
    ahead = _read_ahead.take(key)
    ds = ahead.result() if ahead is not None else _read_block(block, data_group)
    if block.following is not None:
        partition, start, stop = block.following
        following = replace(block, partition=partition, start=start, stop=stop, following=None)
        _read_ahead.start(
            (block.store, partition, start, stop, data_group),
            functools.partial(_read_block, following, data_group),
        )
    return ds


class _ReadAhead:
    """The one block being read ahead in this process (see :func:`load_block`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: tuple[tuple, Future[xr.Dataset]] | None = None
        self._pool: ThreadPoolExecutor | None = None

    def take(self, key: tuple) -> Future[xr.Dataset] | None:
        """The read of block ``key`` if it is the one read ahead; any other is dropped."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending[1] if pending is not None and pending[0] == key else None

    def start(self, key: tuple, read: Callable[[], xr.Dataset]) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="radps-read-ahead")
            self._pending = (key, self._pool.submit(read))


_read_ahead = _ReadAhead()


def _read_block(block: Block, data_group: str) -> xr.Dataset:
    if block.data is not None:
        ds = block.data
    else:
        assert block.store is not None, "a block has a store or its data"
        ds = open_partition(block.store, block.partition)
    names = _names(ds, data_group)
    keep = [v for v in names.values() if v in ds.data_vars]
    try:
        # the scheduler passed, not set: dask's config is global, and a read runs beside
        # other work (a read ahead, a Dask worker's other threads)
        return (
            ds[keep]
            .isel(time=slice(block.start, block.stop))
            .load(scheduler="threads", num_workers=READ_THREADS)
        )
    except Exception as exc:
        where = block.store or ds.attrs.get("source_path", "in-memory data")
        raise core_io.InputDataError(
            f"{where}: cannot read partition {block.partition} "
            f"(times {block.start}..{block.stop}): {exc}"
        ) from exc


@dataclass
class Prepared:
    """A block after flagging and calibration: its Stokes I samples, gain solutions (or None),
    flag counts, and what the stage cache gave (stage -> hit, miss or refreshed)."""

    vis: StokesIVisibilities
    gains: xr.Dataset | None
    flagged_before: int
    flagged_after: int
    samples: int
    partition: str
    cache: dict[str, str] = field(default_factory=dict)


def flag_block(
    ds: xr.Dataset, data_group: str, threshold: float, method: str = "mad"
) -> tuple[xr.Dataset, int, int]:
    """Flags of the block's own time x frequency plane per baseline by ``method`` (existing
    flags kept). Returns the dataset with the new FLAG and the flag counts before and after."""
    names = _names(ds, data_group)
    vis = ds[names["vis"]].transpose(*ORDER)
    old = (
        ds[names["flag"]].transpose(*ORDER).values
        if names["flag"] in ds
        else np.zeros(vis.shape, dtype=bool)
    )
    new = plane_flags(vis.values, old, method=method, threshold=threshold)
    return with_flags(ds, data_group, new), int(old.sum()), int(new.sum())


def with_flags(ds: xr.Dataset, data_group: str, flags: np.ndarray) -> xr.Dataset:
    """The block with ``flags`` (dims in ORDER) as its data group's FLAG."""
    names = _names(ds, data_group)
    out = ds.copy()
    out[names["flag"]] = (ORDER, flags)
    out[names["flag"]] = out[names["flag"]].transpose(*ds[names["vis"]].dims)
    return out


def calibration_model(steps: Steps) -> list[cal.PointModel] | xr.DataArray:
    return steps.model if isinstance(steps.model, xr.DataArray) else list(steps.model)


def solve_block(ds: xr.Dataset, steps: Steps) -> xr.Dataset:
    """The gain solutions of a loaded (and flagged) block against the steps' model."""
    return cal.solve_gains(
        ds,
        model=calibration_model(steps),
        refant=steps.refant,
        solint=steps.solint,
        minsnr=steps.minsnr,
        data_group=steps.data_group,
        time_origin=steps.time_origin,
    )


def _memo(ds: xr.Dataset, steps: Steps) -> block_cache.BlockMemo | None:
    return block_cache.BlockMemo(steps.cache, ds) if steps.cache and steps.cache.root else None


def _flagged(ds: xr.Dataset, steps: Steps, memo: block_cache.BlockMemo | None) -> xr.Dataset:
    """The block flagged as the steps say: the cached flags, else flagged here (and cached)."""
    if memo is None:
        return flag_block(ds, steps.data_group, steps.flag_threshold, steps.flagger)[0]
    key = memo.flags_key(
        block_cache.flag_parameters(steps.data_group, steps.flag_threshold, steps.flagger)
    )
    flags = memo.flags(key)
    if flags is not None:
        return with_flags(ds, steps.data_group, flags)
    ds = flag_block(ds, steps.data_group, steps.flag_threshold, steps.flagger)[0]
    memo.keep_flags(key, ds[_names(ds, steps.data_group)["flag"]].transpose(*ORDER).values)
    return ds


def _solved(ds: xr.Dataset, steps: Steps, memo: block_cache.BlockMemo | None) -> xr.Dataset:
    """The block's gains: the cached ones, else solved here (and cached)."""
    if memo is None:
        return solve_block(ds, steps)
    key = memo.gains_key(
        {
            "data_group": steps.data_group,
            "model": block_cache.model_identity(calibration_model(steps)),
            "refant": steps.refant,
            "solint": steps.solint,
            "minsnr": steps.minsnr,
            "time_origin": steps.time_origin,
        }
    )
    gains = memo.gains(key)
    if gains is None:
        gains = solve_block(ds, steps)
        memo.keep_gains(key, gains)
    return gains


def block_gains(block: Block, steps: Steps) -> tuple[xr.Dataset, dict[str, str]]:
    """Read, flag (if the steps say so) and solve one block: the calibration pipeline's
    solve, the same as the first half of :func:`prepare_block`. Returns the gains and what
    the stage cache gave (see :class:`Prepared`)."""
    ds = load_block(block, steps.data_group)
    memo = _memo(ds, steps)
    if steps.flag:
        ds = _flagged(ds, steps, memo)
    return _solved(ds, steps, memo), memo.outcomes if memo else {}


def prepare_block(block: Block, steps: Steps, gains: xr.Dataset | None = None) -> Prepared:
    """Read, flag, calibrate and form Stokes I for one block; with ``gains`` (what an earlier
    pass solved for this block), calibrate with those instead of solving again. Flags and
    gains come from the stage cache where it holds them for this block's content."""
    ds = load_block(block, steps.data_group)
    memo = _memo(ds, steps) if steps.flag or (steps.calibrate and gains is None) else None
    names = _names(ds, steps.data_group)
    present = np.isfinite(ds[names["vis"]].values)  # not xradio's padding
    samples = int(present.sum())

    def flagged(name: str) -> int:
        return int((ds[name].values & present).sum()) if name in ds else 0

    before = after = flagged(names["flag"])
    if steps.flag:
        ds = _flagged(ds, steps, memo)
        after = flagged(names["flag"])
    group = steps.data_group
    if steps.calibrate and gains is None:
        gains = _solved(ds, steps, memo)
    if steps.calibrate:
        ds = cal.apply_gains(ds, gains, data_group=group, output_group="corrected")
        group = "corrected"
        after = flagged("FLAG_CORRECTED")
    vis = gather_stokes_i(ds, group)
    outcomes = memo.outcomes if memo else {}
    return Prepared(vis, gains, before, after, samples, block.partition, outcomes)


# ---------------------------------------------------------------------------------------------
# Imaging kernels on prepared blocks


@dataclass(frozen=True)
class Grid:
    imsize: int
    cell_rad: float
    epsilon: float = 1e-4
    nthreads: int = 1


def _sum(
    v: StokesIVisibilities, vis: np.ndarray, grid: Grid, *, w_terms: bool = True
) -> core_imaging.DirtySum:
    previews.gridding_starts()
    return core_imaging.dirty_sum_from_arrays(
        v.uvw,
        v.freq,
        vis,
        v.weight,
        imsize=grid.imsize,
        cell_rad=grid.cell_rad,
        epsilon=grid.epsilon,
        nthreads=grid.nthreads,
        uvw_sign=v.uvw_sign,
        w_terms=w_terms,
    )


def dirty_block(block: Block, steps: Steps, grid: Grid) -> tuple[core_imaging.DirtySum, dict]:
    """One pass: read, flag, calibrate, grid. Returns the partial image and a small summary
    (partition, flag counts, gains)."""
    p = prepare_block(block, steps)
    part = _sum(p.vis, p.vis.vis, grid)
    if part.nvis:
        part.psf = fit_psf_block(p, grid).image
    return part, summary(p)


def fit_psf_block(p: Prepared, grid: Grid) -> core_imaging.DirtySum:
    """The block's partial PSF on the small grid a dirty image's beam is fitted to (see
    :data:`radps_flows.core.imaging.PSF_FIT_PIXELS`)."""
    ones = np.ones(p.vis.vis.shape, dtype=np.complex64)
    return _sum(p.vis, ones, _psf_fit_grid(grid), w_terms=False)


def _psf_fit_grid(grid: Grid) -> Grid:
    return replace(grid, imsize=min(grid.imsize, core_imaging.PSF_FIT_PIXELS))


def channel_groups(nchan: int, imsize: int, max_mb: float | None = None) -> list[tuple[int, int]]:
    """Channel ranges ``(start, stop)`` whose partial cube (float64) stays under ``max_mb``
    (default :data:`CUBE_GROUP_MB`): what one block task holds and returns, whatever the
    number of channels."""
    per_channel = imsize * imsize * 8
    size = max(1, int((max_mb or CUBE_GROUP_MB) * 2**20 // per_channel))
    return [(a, min(a + size, nchan)) for a in range(0, nchan, size)]


def cube_block(
    job: tuple[Block, tuple[int, int]], steps: Steps, grid: Grid
) -> tuple[CubeSum, dict]:
    """Per-channel partial images of channels ``start:stop`` of one block (read, flagged and
    calibrated over all its channels first, as for the MFS image)."""
    block, channels = job
    p = prepare_block(block, steps)
    v = p.vis
    a, b = channels
    part = _cube_sum(v, channels, v.vis[:, a:b], grid)
    ones = np.ones(v.vis[:, a:b].shape, dtype=np.complex64)
    part.psf = _cube_sum(v, channels, ones, _psf_fit_grid(grid), w_terms=False).image
    return part, summary(p)


def _cube_sum(
    v: StokesIVisibilities,
    channels: tuple[int, int],
    vis: np.ndarray,
    grid: Grid,
    *,
    w_terms: bool = True,
) -> CubeSum:
    """Channels ``start:stop`` of ``v`` with ``vis`` gridded one by one on ``grid``."""
    a, b = channels
    previews.gridding_starts()
    return cube_sum_from_arrays(
        v.uvw,
        v.freq[a:b],
        vis,
        v.weight[:, a:b],
        imsize=grid.imsize,
        cell_rad=grid.cell_rad,
        epsilon=grid.epsilon,
        nthreads=grid.nthreads,
        uvw_sign=v.uvw_sign,
        start=a,
        w_terms=w_terms,
    )


def summary(p: Prepared) -> dict:
    return {
        "partition": p.partition,
        "samples": p.samples,
        "flagged_before": p.flagged_before,
        "flagged_after": p.flagged_after,
        "gains": p.gains,
        "cache": p.cache,
    }


# ---------------------------------------------------------------------------------------------
# Passes that read the blocks again (CLEAN on data larger than the cluster's memory)


def stokes_i_bytes(datasets: Sequence[xr.Dataset], data_group: str = "base") -> int:
    """What the Stokes I samples of ``datasets`` take in memory once prepared (visibility,
    weight and UVW per row; see :class:`StokesIVisibilities`), known before reading them."""
    total = 0
    for ds in datasets:
        var = ds[_names(ds, data_group)["vis"]]
        rows = ds.sizes["time"] * ds.sizes["baseline_id"]
        sample = var.dtype.itemsize * 3 // 2  # complex, plus a real weight of half its size
        total += rows * (ds.sizes["frequency"] * sample + 3 * 8)
    return total


def keep_between_passes(stokes_i_bytes: int, memory_bytes: int) -> bool:
    """Keep the prepared blocks on the workers when they fill at most half the cluster's
    memory: the other half is for the gridding itself and Dask's own."""
    return stokes_i_bytes <= memory_bytes // 2


@dataclass(frozen=True)
class Weighting:
    """Uniform or Briggs weights on ``grid``, from the weight density summed over all blocks."""

    scheme: str
    robust: float
    grid: Grid


@dataclass(frozen=True)
class Reread:
    """A block made again from the store at each pass, instead of its Stokes I samples kept
    on a worker. Flagging is deterministic, and calibration uses the gains the first pass
    solved (``gains``), so every pass images the same samples as the first."""

    block: Block
    steps: Steps
    gains: xr.Dataset | None = None
    weighting: Weighting | None = None


def first_pass(block: Block, steps: Steps, density_grid: Grid | None) -> tuple[dict, Any]:
    """The block's summary (its gains among it) and, with ``density_grid``, its weight
    density: all that the passes after it need but cannot make from the block alone."""
    p = prepare_block(block, steps)
    return summary(p), density_block(p, density_grid) if density_grid else None


def samples(p: Prepared | Reread, density: np.ndarray | None = None) -> Prepared:
    """The block's prepared samples: kept ones as they are, reread ones made again (and
    reweighted with ``density``, the total weight density)."""
    if isinstance(p, Prepared):
        return p
    prepared = prepare_block(p.block, p.steps, p.gains)
    if p.weighting is None:
        return prepared
    w = p.weighting
    return reweight_block(prepared, density, w.grid, w.scheme, w.robust)


def residual_block(
    p: Prepared | Reread,
    grid: Grid,
    model: np.ndarray | None = None,
    density: np.ndarray | None = None,
) -> core_imaging.DirtySum:
    """Partial image of the block's visibilities minus those predicted from ``model``."""
    p = samples(p, density)
    vis = p.vis.vis
    if model is not None and np.any(model):
        predicted = cal.image_model_visibilities(
            model,
            p.vis.uvw,
            p.vis.freq,
            cell_rad=grid.cell_rad,
            uvw_sign=p.vis.uvw_sign,
            epsilon=grid.epsilon,
            nthreads=grid.nthreads,
        )
        vis = vis - predicted
    return _sum(p.vis, vis, grid)


def psf_block(
    p: Prepared | Reread, grid: Grid, density: np.ndarray | None = None
) -> core_imaging.DirtySum:
    """The block's partial PSF, gridded in 2-D: the minor cycle's model of one component.

    A PSF gridded with w-stacking is the dirty image of a source at the phase centre only;
    a component elsewhere sees other far sidelobes, so neither PSF is exact away from the
    peak, and the major cycles (with w-terms) correct what the minor cycle gets wrong. On the
    CASA benchmark's set (2048², 1", VLA-B L band) the two differ by at most 5e-4 of the peak,
    2e-5 in the main lobe (the fitted beams agree to 1e-4 arcsec), while the 2-D grid costs
    0.3-0.4 s to w-stacking's 0.9-1.1 s."""
    p = samples(p, density)
    ones = np.ones(p.vis.vis.shape, dtype=np.complex64)  # as precise as _sum's
    return _sum(p.vis, ones, grid, w_terms=False)


def psf_and_residual_block(
    p: Prepared | Reread, grid: Grid, density: np.ndarray | None = None
) -> tuple[core_imaging.DirtySum, core_imaging.DirtySum]:
    """The block's partial PSF and dirty image from one making of its samples (one read of
    a reread block instead of two)."""
    p = samples(p, density)
    return psf_block(p, grid), residual_block(p, grid)


def merge_prepared(parts: Sequence[Prepared]) -> Prepared:
    """The kept samples of ``parts`` (blocks of one dataset) as one block, for passes made
    where all of them are in one process: ducc0's w-stacking costs each call the same FFTs
    whatever its number of rows, so one call over all the threads pays them once per pass
    instead of once per block. The flag counts are summed; the gains are left out (the
    blocks' summaries keep them)."""
    first = parts[0].vis
    for p in parts[1:]:
        if not np.array_equal(p.vis.freq, first.freq) or p.vis.uvw_sign != first.uvw_sign:
            raise ValueError("only blocks of one dataset (same channels) can be merged")
    vis = replace(
        first,
        uvw=np.concatenate([p.vis.uvw for p in parts]),
        vis=np.concatenate([p.vis.vis for p in parts]),
        weight=np.concatenate([p.vis.weight for p in parts]),
    )
    return Prepared(
        vis,
        None,
        sum(p.flagged_before for p in parts),
        sum(p.flagged_after for p in parts),
        sum(p.samples for p in parts),
        ",".join(dict.fromkeys(p.partition for p in parts)),
    )


def density_block(p: Prepared, grid: Grid) -> np.ndarray:
    v = p.vis
    return weighting.weight_density(
        v.uvw, v.freq, v.weight, imsize=grid.imsize, cell_rad=grid.cell_rad
    )


def reweight_block(
    p: Prepared, density: np.ndarray, grid: Grid, scheme: str, robust: float
) -> Prepared:
    v = p.vis
    w = weighting.weights_from_density(
        v.uvw, v.freq, v.weight, density, cell_rad=grid.cell_rad, scheme=scheme, robust=robust
    )
    return replace(p, vis=replace(v, weight=w))


def total(ex: Executor, handles: Sequence) -> Any:
    """Sum of the results (partial images, densities)."""
    out = None
    for _, result in ex.completed(handles):
        out = result if out is None else out + result
    return out
