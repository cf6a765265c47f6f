"""Block-level work of the pipelines: time blocks of MSv4 partitions, mapped over Dask workers.

A *block* is a run of whole zarr time chunks of one partition (a few tens of MB of
visibilities, seconds of work). Each block is read, flagged, calibrated and turned into
Stokes I samples on a worker; blocks only ever come back to the Prefect task as small
things (partial images, gain tables), so memory stays bounded by the block size times the
worker threads, whatever the size of the data set. Where visibilities must be revisited
(CLEAN's major cycles, uniform/Briggs weights), their Stokes I samples stay on the workers as
Dask futures (Dask spills them to disk under memory pressure), or, where they would not fit,
each pass reads the block again (:class:`Reread`).

The pipelines run their stage tasks in the flow process, as the Dask client of the flow run's
own cluster: :func:`executor` gives a :class:`DaskExecutor` over it (or over
``distributed.worker_client`` inside a task that runs on a worker); outside a flow run, a
:class:`SerialExecutor`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from radps_flows.allocator import keep_freed_memory
from radps_flows.core import calibration as cal
from radps_flows.core import imaging as core_imaging
from radps_flows.core import io as core_io
from radps_flows.core import products, weighting
from radps_flows.core.clean import StokesIVisibilities, gather_stokes_i
from radps_flows.core.cube import CubeSum, cube_sum_from_arrays
from radps_flows.core.flagging import mad_flags

#: Default uncompressed VISIBILITY bytes per block.
DEFAULT_BLOCK_MB = 64
#: Largest partial cube (float64 megabytes) one cube block task returns.
CUBE_GROUP_MB = 64
ORDER = ("time", "baseline_id", "frequency", "polarization")


# ---------------------------------------------------------------------------------------------
# Executors


class SerialExecutor:
    """Runs blocks one after the other in this process (no Dask cluster around)."""

    def map(self, fn: Callable, items: Sequence, **kwargs: Any) -> list:
        return [fn(item, **kwargs) for item in items]

    def share(self, value: Any) -> Any:
        return value

    def completed(self, handles: Sequence) -> Iterator[tuple[int, Any]]:
        """(index, result) of every handle, in order of completion."""
        yield from enumerate(handles)

    def gather(self, handles: Sequence) -> list:
        return list(handles)

    def release(self, handles: Sequence) -> None:
        pass

    def compute(self, collection: Any) -> Any:
        with dask.config.set(scheduler="synchronous"):
            return dask.compute(collection)[0]

    def memory_bytes(self) -> int:
        """What blocks kept between passes may use: this process's available memory."""
        import psutil

        return int(psutil.virtual_memory().available)


class DaskExecutor:
    """Maps blocks over a Dask cluster; results are folded as they complete."""

    def __init__(self, client: Any):
        self.client = client

    def map(self, fn: Callable, items: Sequence, **kwargs: Any) -> list:
        return self.client.map(fn, list(items), pure=False, **kwargs)

    def share(self, value: Any) -> Any:
        """Send a large argument once to every worker instead of once per block."""
        return self.client.scatter(value, broadcast=True, hash=False)

    def completed(self, handles: Sequence) -> Iterator[tuple[int, Any]]:
        """(index, result) of every handle, in order of completion; each future is released
        once its result is here, so only finished, unconsumed results hold memory."""
        from distributed import as_completed

        index = {f.key: i for i, f in enumerate(handles)}
        for future, result in as_completed(list(handles), with_results=True):
            yield index[future.key], result
            future.release()

    def gather(self, handles: Sequence) -> list:
        return self.client.gather(list(handles))

    def release(self, handles: Sequence) -> None:
        """Let the workers drop the results of ``handles`` (what is not a future is left)."""
        from distributed import Future

        for h in handles:
            if isinstance(h, Future):
                h.release()

    def compute(self, collection: Any) -> Any:
        """Compute a Dask collection (a lazy zarr write, say) on the cluster."""
        return self.client.gather(self.client.compute(collection))

    def workers_in_this_process(self) -> bool:
        """Whether the workers are threads of this process (a local run's cluster)."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        return any(address.startswith("inproc://") for address in workers)

    def memory_bytes(self) -> int:
        """The workers' memory limits summed, counting the workers the run asked for that are
        still starting as the average of those up (a worker without a limit counts its
        host's memory)."""
        import psutil

        from radps_flows.cluster import KUBE_CLUSTER_START_TIMEOUT_SECONDS, DaskClusterConfig

        self.client.wait_for_workers(1, timeout=KUBE_CLUSTER_START_TIMEOUT_SECONDS)
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        host = int(psutil.virtual_memory().total)
        limits = [int(w.get("memory_limit") or host) for w in workers]
        expected = max(len(limits), DaskClusterConfig.from_env().workers)
        return sum(limits) * expected // len(limits)


@contextlib.contextmanager
def executor() -> Iterator[SerialExecutor | DaskExecutor]:
    """The flow run's Dask cluster: from a stage task running in the flow process, through the
    flow's task runner; from a task running on one of the cluster's workers, through
    ``worker_client``; outside a flow run with a Dask task runner, serial. Blocks reuse the
    process's freed memory (:mod:`radps_flows.allocator`). While the flow process waits for
    its workers, it gets its plotting ready for the products (up to a second at a process's
    first figure)."""
    keep_freed_memory()
    try:
        from distributed import get_worker, worker_client

        get_worker()
    except ImportError:
        yield SerialExecutor()
        return
    except ValueError:  # not on a Dask worker
        client = _flow_run_dask_client()
        if client is None:
            yield SerialExecutor()
            return
        ex = DaskExecutor(client)
        products.warm_up_plotting(at_gridding=ex.workers_in_this_process())
        with client.as_current():  # for what looks up the default client (as_completed)
            yield ex
        return
    with worker_client() as client:
        yield DaskExecutor(client)


def _flow_task_runner() -> Any:
    """The current flow run's DaskTaskRunner, or None."""
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    return runner if isinstance(runner, DaskTaskRunner) else None


def _flow_run_dask_client() -> Any:
    """The Dask client of the current flow run's task runner (its cluster starts on first
    use, unless :func:`start_dask_cluster_early` started it), or None."""
    runner = _flow_task_runner()
    return runner.client if runner is not None else None


def start_dask_cluster_early(input: str) -> None:
    """In a flow run: start its Dask cluster in the background now (see
    :meth:`radps_flows.cluster.RadpsDaskTaskRunner.start_in_background`).

    An MSv2 ``input`` will be converted by xradio, whose import parses source with ``ast``;
    with the cluster starting in another thread, that could meet the concurrent-AST bug of
    older CPython 3.11 releases (see :mod:`radps_flows.preload`). So xradio is imported first,
    here: the conversion needs it anyway."""
    from radps_flows.cluster import RadpsDaskTaskRunner

    with contextlib.suppress(core_io.InputDataError, OSError):  # the open reports those
        if core_io.detect_input_kind(Path(input)) == "msv2":
            import radps_flows.preload  # noqa: F401
    runner = _flow_task_runner()
    if isinstance(runner, RadpsDaskTaskRunner):
        runner.start_in_background()


# ---------------------------------------------------------------------------------------------
# Blocks


@dataclass(frozen=True)
class Block:
    """Times ``start:stop`` of partition ``partition`` of the processing set ``store``."""

    store: str
    partition: str
    start: int
    stop: int


@dataclass(frozen=True)
class Steps:
    """What happens to each block before imaging."""

    data_group: str = "base"
    flag: bool = False
    flag_threshold: float = 5.0
    calibrate: bool = False
    model: tuple[cal.PointModel, ...] | xr.DataArray = (cal.PointModel(1.0),)
    """Point sources, or a model image (Jy/pixel, see :func:`cal.solve_gains`)."""
    refant: str | None = None
    solint: str | float = "int"
    minsnr: float = 3.0
    time_origin: float | None = None


@functools.lru_cache(maxsize=8)
def _partitions(store: str, version: int) -> dict[str, xr.Dataset]:
    return {ds.attrs["partition_name"]: ds for ds in core_io.open_processing_set(store)}


def _version(store: str) -> int:
    """Changes when the store is written anew (`radps run` may image a set, overwrite it with
    `synthesize` and image it again, all in one process)."""
    for name in ("zarr.json", ".zgroup"):
        with contextlib.suppress(OSError):
            return (Path(store) / name).stat().st_mtime_ns
    return 0


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
    store: str,
    datasets: Sequence[xr.Dataset],
    *,
    block_mb: float = DEFAULT_BLOCK_MB,
    solint: str | float | None = "int",
    data_group: str = "base",
) -> list[Block]:
    """Split every partition into blocks of whole zarr time chunks of about ``block_mb`` MB of
    visibilities. With ``solint`` in seconds a block never splits a solution interval; with
    ``"inf"`` a partition is one block."""
    target = max(1.0, block_mb) * 2**20
    blocks = []
    for ds in datasets:
        name = ds.attrs["partition_name"]
        var = ds[_names(ds, data_group)["vis"]]
        nt = ds.sizes["time"]
        if nt == 0:
            continue
        per_time = var.isel(time=0).size * var.dtype.itemsize
        chunks = var.chunks[var.dims.index("time")] if var.chunks else (nt,)
        bounds = np.cumsum((0, *chunks))
        step = max(1, int(target // per_time))
        cuts = [0]
        for edge in bounds[1:]:
            if edge - cuts[-1] >= step or edge == nt:
                cuts.append(int(edge))
        # chunks much larger than the target are split (reads stay inside one chunk)
        fine = [0]
        for a, b in itertools.pairwise(cuts):
            n = max(1, math.ceil((b - a) / (2 * step)))
            fine.extend(int(a + round(i * (b - a) / n)) for i in range(1, n + 1))
        cuts = fine
        if solint not in ("int", 0, None) and solint != "inf":
            times = np.asarray(ds["time"].values, dtype=np.float64)
            bins = cal._time_bins(times, solint)
            cuts = [c for c in cuts if c in (0, nt) or bins[c] != bins[c - 1]]
        elif solint in (None, "inf"):
            cuts = [0, nt]
        blocks.extend(Block(str(store), name, a, b) for a, b in itertools.pairwise(cuts))
    return blocks


def load_block(block: Block, data_group: str = "base") -> xr.Dataset:
    """The block's visibilities, flags, weights and UVW in memory."""
    ds = open_partition(block.store, block.partition)
    names = _names(ds, data_group)
    keep = [v for v in names.values() if v in ds.data_vars]
    with dask.config.set(scheduler="synchronous"):
        try:
            return ds[keep].isel(time=slice(block.start, block.stop)).load()
        except Exception as exc:
            raise core_io.InputDataError(
                f"{block.store}: cannot read partition {block.partition} "
                f"(times {block.start}..{block.stop}): {exc}"
            ) from exc


@dataclass
class Prepared:
    """A block after flagging and calibration: its Stokes I samples, gain solutions (or None)
    and flag counts."""

    vis: StokesIVisibilities
    gains: xr.Dataset | None
    flagged_before: int
    flagged_after: int
    samples: int
    partition: str


def flag_block(ds: xr.Dataset, data_group: str, threshold: float) -> tuple[xr.Dataset, int, int]:
    """Median/MAD flags of the block's own time x frequency plane per baseline (existing flags
    kept). Returns the dataset with the new FLAG and the flag counts before and after."""
    names = _names(ds, data_group)
    vis = ds[names["vis"]].transpose(*ORDER)
    old = (
        ds[names["flag"]].transpose(*ORDER).values
        if names["flag"] in ds
        else np.zeros(vis.shape, dtype=bool)
    )
    new = mad_flags(vis.values, old, threshold=threshold)
    out = ds.copy()
    out[names["flag"]] = (ORDER, new)
    out[names["flag"]] = out[names["flag"]].transpose(*ds[names["vis"]].dims)
    return out, int(old.sum()), int(new.sum())


def calibration_model(steps: Steps) -> list[cal.PointModel] | xr.DataArray:
    return steps.model if isinstance(steps.model, xr.DataArray) else list(steps.model)


def prepare_block(block: Block, steps: Steps, gains: xr.Dataset | None = None) -> Prepared:
    """Read, flag, calibrate and form Stokes I for one block; with ``gains`` (what an earlier
    pass solved for this block), calibrate with those instead of solving again."""
    ds = load_block(block, steps.data_group)
    names = _names(ds, steps.data_group)
    present = np.isfinite(ds[names["vis"]].values)  # not xradio's padding
    samples = int(present.sum())

    def flagged(name: str) -> int:
        return int((ds[name].values & present).sum()) if name in ds else 0

    before = after = flagged(names["flag"])
    if steps.flag:
        ds, _, _ = flag_block(ds, steps.data_group, steps.flag_threshold)
        after = flagged(names["flag"])
    group = steps.data_group
    if steps.calibrate and gains is None:
        gains = cal.solve_gains(
            ds,
            model=calibration_model(steps),
            refant=steps.refant,
            solint=steps.solint,
            minsnr=steps.minsnr,
            data_group=group,
            time_origin=steps.time_origin,
        )
    if steps.calibrate:
        ds = cal.apply_gains(ds, gains, data_group=group, output_group="corrected")
        group = "corrected"
        after = flagged("FLAG_CORRECTED")
    return Prepared(gather_stokes_i(ds, group), gains, before, after, samples, block.partition)


# ---------------------------------------------------------------------------------------------
# Imaging kernels on prepared blocks


@dataclass(frozen=True)
class Grid:
    imsize: int
    cell_rad: float
    epsilon: float = 1e-4
    nthreads: int = 1


def _sum(v: StokesIVisibilities, vis: np.ndarray, grid: Grid) -> core_imaging.DirtySum:
    products.gridding_starts()
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
    )


def dirty_block(block: Block, steps: Steps, grid: Grid) -> tuple[core_imaging.DirtySum, dict]:
    """One pass: read, flag, calibrate, grid. Returns the partial image and a small summary
    (partition, flag counts, gains)."""
    p = prepare_block(block, steps)
    part = _sum(p.vis, p.vis.vis, grid)
    return part, summary(p)


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
    products.gridding_starts()
    part = cube_sum_from_arrays(
        v.uvw,
        v.freq[a:b],
        v.vis[:, a:b],
        v.weight[:, a:b],
        imsize=grid.imsize,
        cell_rad=grid.cell_rad,
        epsilon=grid.epsilon,
        nthreads=grid.nthreads,
        uvw_sign=v.uvw_sign,
        start=a,
    )
    return part, summary(p)


def summary(p: Prepared) -> dict:
    return {
        "partition": p.partition,
        "samples": p.samples,
        "flagged_before": p.flagged_before,
        "flagged_after": p.flagged_after,
        "gains": p.gains,
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
    p = samples(p, density)
    return _sum(p.vis, np.ones(p.vis.vis.shape, dtype=np.complex128), grid)


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


def total(ex: SerialExecutor | DaskExecutor, handles: Sequence) -> Any:
    """Sum of the results (partial images, densities)."""
    out = None
    for _, result in ex.completed(handles):
        out = result if out is None else out + result
    return out


def sums_by_partition(
    ex: SerialExecutor | DaskExecutor, handles: Sequence, blocks: Sequence[Block]
) -> dict[str, core_imaging.DirtySum]:
    """Partial images summed per partition (the image attributes are per partition)."""
    out: dict[str, core_imaging.DirtySum] = {}
    for i, result in ex.completed(handles):
        name = blocks[i].partition
        out[name] = result if name not in out else out[name] + result
    return out
