"""Block planning: blocks never split a solution interval as the solve counts them."""

from __future__ import annotations

import itertools

import numpy as np

from radps_flows.core import blocks as blk
from radps_flows.core.calibration import time_bins
from radps_flows.core.io import open_processing_set
from radps_flows.core.synth import SynthesisSpec, synthesize_processing_set

SOLINT = 60.0


def _split_intervals(blocks: list[blk.Block], datasets, origin: float) -> list[str]:
    """Block boundaries that fall inside a solution interval counted from ``origin``."""
    bad = []
    for index, ds in enumerate(datasets):
        bins = time_bins(np.asarray(ds["time"].values), SOLINT, origin)
        cuts = [b.start for b in blocks if b.dataset == index and b.start > 0]
        bad += [f"partition {index} at time {c}" for c in cuts if bins[c] == bins[c - 1]]
    return bad


def test_blocks_of_a_later_partition_follow_the_solves_intervals(tmp_path):
    # ~0.6 MB of visibilities per time, one time per zarr chunk: blocks of 1-2 times
    spec = SynthesisSpec(n_antennas=24, n_times=30, n_channels=128, integration_s=10, chunk_times=1)
    (first,) = open_processing_set(synthesize_processing_set(tmp_path / "a", spec).path)
    later = first.assign_coords(time=first["time"] + 25.0)  # a scan starting 25 s later
    later.attrs = {**first.attrs, "partition_name": "later"}
    datasets = [first, later]
    origin = float(first["time"].values.min())
    steps = blk.Steps(calibrate=True, solint=SOLINT, time_origin=origin)
    blocks = blk.blocks_for(None, datasets, steps, block_mb=0.001)
    assert {b.dataset for b in blocks} == {0, 1}
    assert len(blocks) >= 8
    assert _split_intervals(blocks, datasets, origin) == []
    # what it did before: each partition counted its intervals from its own first time
    own = blk.plan_blocks(None, datasets, block_mb=0.001, solint=SOLINT)
    assert _split_intervals(own, datasets, origin)
    # and each block reads exactly its own times, in memory as from a store
    for a, b in itertools.pairwise([block for block in blocks if block.dataset == 1]):
        assert a.stop == b.start
    loaded = blk.load_block(blocks[-1])
    assert loaded.sizes["time"] == blocks[-1].stop - blocks[-1].start
    np.testing.assert_array_equal(
        loaded["time"].values, later["time"].values[blocks[-1].start : blocks[-1].stop]
    )


def test_blocks_are_equal_and_as_many_as_run_at_once():
    """A pass lasts as long as its largest block: the CASA benchmark's partition (240 times,
    zarr chunks of 186 and 54, ~1.3 blocks of 64 MB) is cut in two equal blocks for two
    workers, not at its chunk edge; a chunk edge near an ideal cut is taken; a cut never
    splits a solution interval (only allowed positions)."""
    assert blk.balanced_cuts(240, 93.3, [186, 240], parallel=2) == [0, 120, 240]
    assert blk.balanced_cuts(240, 93.3, [186, 240], parallel=1) == [0, 80, 160, 240]
    assert blk.balanced_cuts(240, 93.3, [115, 240], parallel=2) == [0, 115, 240]  # an edge
    assert blk.balanced_cuts(30, 40.0, [30], parallel=2) == [0, 30]  # smaller than a block
    cuts = blk.balanced_cuts(100, 25.0, [100], parallel=2, allowed=[24, 52, 77, 90])
    assert cuts == [0, 24, 52, 77, 100]
    assert blk.balanced_cuts(100, 25.0, [100], parallel=2, allowed=[]) == [0, 100]
    sizes = np.diff(blk.balanced_cuts(1000, 7.0, list(range(10, 1001, 10)), parallel=4))
    assert sizes.max() - sizes.min() <= 10 and 100 < len(sizes) < 200
