"""CLEAN on data larger than the cluster's memory reads every block again at each pass: the
passes after the first must image exactly the samples the first pass prepared (same flags,
the gains it solved, the same uniform/Briggs weights), so both ways give one image."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from radps_flows.core import blocks as blk
from radps_flows.core.executors import SerialExecutor
from radps_flows.core.synth import PointSource, SynthesisSpec, synthesize_processing_set
from radps_flows.pipelines import imaging, stages

SOURCES = [PointSource(flux_jy=1.0), PointSource(flux_jy=0.5, offset_ra_arcsec=60)]


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> str:
    """Gains and RFI, so the reread must flag and calibrate as the first pass did."""
    spec = SynthesisSpec(
        n_antennas=10,
        n_times=12,
        n_channels=8,
        sources=tuple(SOURCES),
        gain_amplitude_rms=0.1,
        gain_phase_rms_deg=30,
        rfi_fraction=0.05,
        chunk_times=3,
    )
    return str(synthesize_processing_set(tmp_path_factory.mktemp("sky") / "s", spec).path)


PARAMS = {
    "flag": True,
    "flag_threshold": 5.0,
    "calibrate": True,
    "model": [{"flux_jy": s.flux_jy, "offset_ra_arcsec": s.offset_ra_arcsec} for s in SOURCES],
    "model_image": None,
    "refant": None,
    "solint": "int",
    "minsnr": 3.0,
    "robust": 0.5,
    "niter": 300,
    "clean_gain": 0.1,
    "threshold_jy": 0.001,
    "threshold_rms": 0.0,
    "rms_box": None,
    "mask": None,
    "cyclefactor": 1.0,
    "max_major": 10,
    "clean_epsilon": 1e-6,
    "block_mb": 0.05,
}


def _steps(store: str) -> blk.Steps:
    names = ("model", "model_image", "refant", "solint", "minsnr", "calibrate", "flag")
    return stages.calibration_steps(
        blk.open_datasets(store), flag_threshold=PARAMS["flag_threshold"],
        **{name: PARAMS[name] for name in names},
    )  # fmt: skip


def test_the_estimate_is_what_the_prepared_samples_take(corrupted):
    datasets = blk.open_datasets(corrupted)
    blocks = blk.plan_blocks(corrupted, datasets, block_mb=0.05)
    prepared = [blk.prepare_block(b, blk.Steps()).vis for b in blocks]
    actual = sum(v.uvw.nbytes + v.vis.nbytes + v.weight.nbytes for v in prepared)
    assert blk.stokes_i_bytes(datasets) == pytest.approx(actual, rel=0.01)


def test_blocks_are_kept_while_they_fill_at_most_half_the_memory():
    assert blk.keep_between_passes(500, 1000)
    assert not blk.keep_between_passes(501, 1000)


def test_a_reread_block_is_the_block_the_first_pass_prepared(corrupted):
    datasets = blk.open_datasets(corrupted)
    (block, *_) = blk.plan_blocks(corrupted, datasets, block_mb=0.05)
    first = blk.prepare_block(block, _steps(corrupted))
    assert first.flagged_after > first.flagged_before  # RFI flagged, some gains applied
    summary, _ = blk.first_pass(block, _steps(corrupted), None)
    again = blk.samples(blk.Reread(block, replace(_steps(corrupted), model=()), summary["gains"]))
    for name in ("uvw", "vis", "weight"):
        np.testing.assert_array_equal(getattr(again.vis, name), getattr(first.vis, name))


@pytest.mark.parametrize("weighting", ["natural", "briggs"])
def test_clean_gives_one_image_whether_it_keeps_or_rereads(corrupted, weighting):
    datasets = blk.open_datasets(corrupted)
    images = {}
    for choice in ("keep", "reread"):
        run = {**PARAMS, "weighting": weighting, "clean_visibilities": choice}
        images[choice], gains = imaging.clean_image.fn(corrupted, datasets, 128, 4.0, run)
        assert len(gains) == len(blk.plan_blocks(corrupted, datasets, block_mb=0.05))
    keep, reread = images["keep"], images["reread"]
    assert keep.attrs["clean_iterations"] > 0
    assert reread.attrs["clean_iterations"] == keep.attrs["clean_iterations"]
    for name in ("model", "residual", "psf"):
        np.testing.assert_allclose(reread[name].values, keep[name].values, rtol=0, atol=1e-9)


def test_merged_blocks_image_as_their_sum(corrupted):
    """A local run merges each dataset's kept blocks into one (one gridder call over all the
    threads): the merged block images as the blocks summed, and keeps their flag counts."""
    datasets = blk.open_datasets(corrupted)
    (whole_set,) = blk.plan_blocks(corrupted, datasets, block_mb=0.05)
    blocks = [replace(whole_set, start=a, stop=a + 3) for a in range(0, whole_set.stop, 3)]
    parts = [blk.prepare_block(b, blk.Steps(flag=True)) for b in blocks]
    assert len(parts) == 4
    merged = blk.merge_prepared(parts)
    grid = blk.Grid(64, np.radians(4 / 3600), 1e-6, nthreads=2)
    whole = blk.residual_block(merged, grid)
    summed = blk.total(SerialExecutor(), [blk.residual_block(p, grid) for p in parts])
    assert whole.weight_sum == pytest.approx(summed.weight_sum, rel=1e-12)
    np.testing.assert_allclose(
        whole.image, summed.image, rtol=0, atol=1e-9 * abs(whole.image).max()
    )
    assert merged.flagged_after == sum(p.flagged_after for p in parts) > 0
    other = replace(parts[0], vis=replace(parts[0].vis, freq=parts[0].vis.freq * 2))
    with pytest.raises(ValueError, match="one dataset"):
        blk.merge_prepared([parts[1], other])


def test_a_local_run_gives_the_minor_cycle_every_thread(corrupted):
    """Where the Dask workers are threads of this process, each pass grids a dataset's merged
    blocks with that dataset's share of the threads, and the minor cycle, which runs alone
    between passes, gets them all: kept or reread. A real in-process cluster of 2 threads,
    two datasets."""
    from distributed import Client, LocalCluster

    from radps_flows.core import imager
    from radps_flows.core.clean import CleanSettings
    from radps_flows.core.executors import DaskExecutor

    (dataset,) = blk.open_datasets(corrupted)
    two = [dataset, dataset]
    blocks = blk.plan_blocks(corrupted, two, block_mb=0.05)
    assert {b.dataset for b in blocks} == {0, 1}
    grid = imager.grid_for(128, 4.0, 1e-6)
    with (
        LocalCluster(processes=False, n_workers=2, threads_per_worker=1) as cluster,
        Client(cluster) as client,
    ):
        ex = DaskExecutor(client)
        kept = imager.clean_inputs(
            ex, blocks, two, blk.Steps(), grid, CleanSettings(visibilities="keep")
        )
        assert (len(kept.handles), kept.nthreads, kept.minor_threads) == (2, 1, 2)
        ex.release(kept.handles)
        settings = CleanSettings(visibilities="reread")
        reread = imager.clean_inputs(ex, blocks, two, blk.Steps(), grid, settings)
        assert (reread.nthreads, reread.minor_threads) == (1, 2)
    serial = imager.clean_inputs(SerialExecutor(), blocks, two, blk.Steps(), grid, settings)
    assert serial.minor_threads == 1
