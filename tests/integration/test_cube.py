"""Per-channel cubes against truth: a source with a spectral index images, channel by
channel, to its flux at that channel's frequency; the FITS cube carries the channel axis."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from radps_flows.core import blocks as blk
from radps_flows.core import previews, products
from radps_flows.core.cube import CubeSum, common_frequencies
from radps_flows.core.io import open_processing_set
from radps_flows.core.synth import PointSource, SynthesisSpec, synthesize_processing_set
from radps_flows.pipelines.imaging import dirty_cube

IMSIZE = 64
PARAMS = {
    "flag": False,
    "flag_threshold": 5.0,
    "calibrate": False,
    "model": None,
    "refant": None,
    "solint": "int",
    "minsnr": 3.0,
    "epsilon": 1e-5,
    "block_mb": 1.0,
}


@pytest.fixture(scope="module")
def spectral_sky(tmp_path_factory):
    spec = SynthesisSpec(
        n_antennas=16,
        n_times=150,
        n_channels=6,
        channel_width_hz=50e6,
        sources=(PointSource(2.0, spectral_index=-0.7),),
        chunk_times=25,
    )
    result = synthesize_processing_set(tmp_path_factory.mktemp("cube") / "sky.ps.zarr", spec)
    return result.path, spec


def test_cube_channels_follow_the_spectrum(spectral_sky, tmp_path, monkeypatch):
    path, spec = spectral_sky
    # several blocks and several channel groups, so partial cubes are summed and placed
    monkeypatch.setattr(blk, "CUBE_GROUP_MB", 2.5 * IMSIZE * IMSIZE * 8 / 2**20)
    datasets = open_processing_set(path)
    assert len(blk.plan_blocks(str(path), datasets, block_mb=PARAMS["block_mb"])) > 1
    assert len(blk.channel_groups(spec.n_channels, IMSIZE)) == 3
    cube, gains = dirty_cube.fn(str(path), datasets, IMSIZE, 20.0, PARAMS)
    assert gains == []
    freq = cube["frequency"].values
    expected = 2.0 * (freq / freq.mean()) ** -0.7  # ref_freq None: the band centre
    centre = cube.values[:, IMSIZE // 2, IMSIZE // 2]
    np.testing.assert_allclose(centre, expected, rtol=1e-3)
    assert expected.max() / expected.min() > 1.1  # the test can tell channels apart
    assert cube.attrs["specmode"] == "cube"
    assert (cube["weight_sum"].values > 0).all() and cube.attrs["nvis"] > 0

    written = products.write_fits(cube, tmp_path / "cube.fits")
    with fits.open(written) as hdul:
        data, header = hdul[0].data, hdul[0].header
    assert data.shape == (1, spec.n_channels, IMSIZE, IMSIZE)
    assert header["CTYPE3"] == "FREQ" and header["CRPIX3"] == 1.0
    assert header["CRVAL3"] == pytest.approx(freq[0])
    assert header["CDELT3"] == pytest.approx(spec.channel_width_hz)
    np.testing.assert_allclose(data[0, :, IMSIZE // 2, IMSIZE // 2], centre, rtol=1e-6)
    assert previews.write_png(cube, tmp_path / "cube.png").stat().st_size > 0


def test_a_channel_without_weight_is_nan_not_zero():
    part = CubeSum.empty(3, 4)
    part.image[:] = 2.0
    part.weight_sum[:] = [4.0, 0.0, 1.0]
    image = (part + part).normalised()
    assert np.isnan(image[1]).all()
    np.testing.assert_array_equal(image[[0, 2], 0, 0], [0.5, 2.0])


def test_a_cube_needs_one_frequency_axis(spectral_sky):
    path, _ = spectral_sky
    (ds,) = open_processing_set(path)
    other = ds.assign_coords(frequency=ds["frequency"] + 1e9)
    other.attrs = {**ds.attrs, "partition_name": "spw_1"}
    with pytest.raises(ValueError, match=r"one frequency axis.*spw_1"):
        common_frequencies([ds, other])
