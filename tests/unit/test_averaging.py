"""Time and frequency averaging: weighted means, summed weights, flags, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from radps_flows.core.averaging import average_arrays, average_dataset
from radps_flows.core.imaging import make_dirty_image
from radps_flows.core.io import open_processing_set
from radps_flows.core.synth import SynthesisSpec, synthesize_processing_set


def _one(values, weights, flags):
    """Shape (ntime, 1 baseline, nchan, 1 pol) from (ntime, nchan) lists."""

    def four(x):
        return np.asarray(x)[:, None, :, None]

    return four(values).astype(complex), four(weights).astype(float), four(flags).astype(bool)


def test_weighted_mean_and_summed_weights():
    vis, w, f = _one([[1 + 1j, 3 + 0j], [5 + 0j, 7 - 1j]], [[1, 3], [2, 2]], [[0, 0], [0, 0]])
    v, wo, fo = average_arrays(vis, w, f, timebin=2, chanbin=2)
    assert v.shape == (1, 1, 1, 1)
    expected = (1 * (1 + 1j) + 3 * 3 + 2 * 5 + 2 * (7 - 1j)) / 8
    assert v[0, 0, 0, 0] == pytest.approx(expected)
    assert wo[0, 0, 0, 0] == 8
    assert not fo.any()


def test_flagged_inputs_are_left_out():
    vis, w, f = _one([[1, 100], [3, 5]], [[1, 1], [1, 2]], [[0, 1], [0, 0]])
    v, wo, fo = average_arrays(vis, w, f, timebin=1, chanbin=2)
    assert v[:, 0, :, 0].ravel() == pytest.approx([1, (3 + 10) / 3])
    assert wo[:, 0, :, 0].ravel().tolist() == [1, 3]
    assert not fo.any()


def test_cell_flagged_only_when_all_inputs_are():
    vis, w, f = _one([[2, 4, 6], [1, np.nan, 8]], [[1, 1, 1], [1, 1, 1]], [[1, 1, 0], [1, 0, 0]])
    v, wo, fo = average_arrays(vis, w, f, timebin=1, chanbin=2)  # bins: [0, 1], [2]
    assert fo[:, 0, :, 0].tolist() == [[True, False], [True, False]]
    assert v[0, 0, 0, 0] == pytest.approx(3)  # flagged cell: mean of its (flagged) inputs
    assert v[1, 0, 0, 0] == pytest.approx(1)  # the NaN input is ignored
    assert wo[0, 0, 1, 0] == 1 and v[0, 0, 1, 0] == 6
    assert wo[1, 0, 1, 0] == 1 and v[1, 0, 1, 0] == 8


def test_all_nan_cell_stays_nan_and_flagged():
    vis, w, f = _one([[np.nan, np.nan]], [[np.nan, np.nan]], [[0, 0]])
    v, _, fo = average_arrays(vis, w, f, chanbin=2)
    assert np.isnan(v).all() and fo.all()


def test_partial_last_bin():
    vis, w, f = _one([[1, 2, 3, 4, 5]], [[1] * 5], [[0] * 5])
    v, wo, _ = average_arrays(vis, w, f, chanbin=2)
    assert v[0, 0, :, 0] == pytest.approx([1.5, 3.5, 5])
    assert wo[0, 0, :, 0].tolist() == [2, 2, 1]


def test_dataset_average_keeps_the_image(tmp_path):
    spec = SynthesisSpec(n_antennas=8, n_times=12, n_channels=8, integration_s=10.0)
    result = synthesize_processing_set(tmp_path / "avg", spec)
    (ds,) = open_processing_set(result.path)
    avg = average_dataset(ds.load(), timebin=3, chanbin=4)
    assert avg.sizes["time"] == 4 and avg.sizes["frequency"] == 2
    assert avg["frequency"].values == pytest.approx(
        ds["frequency"].values.reshape(2, 4).mean(axis=1)
    )
    assert avg["frequency"].attrs["channel_width"]["data"] == pytest.approx(4e6)
    assert float(avg["WEIGHT"].sum()) == pytest.approx(float(ds["WEIGHT"].sum()))
    before = make_dirty_image([ds], imsize=64, cell_arcsec=20)
    after = make_dirty_image([avg], imsize=64, cell_arcsec=20)
    assert after.values.max() == pytest.approx(1.0, abs=1e-3)
    assert np.abs(after.values - before.values).max() < 0.01
