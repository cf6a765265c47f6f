"""Simulated and real data share one sign convention: a source the synthesizer puts east of
the phase centre images east (left in FITS orientation), at its true pixel."""

from __future__ import annotations

import numpy as np
import pytest

from radps_flows.core.imager import make_dirty_image
from radps_flows.core.io import open_processing_set
from radps_flows.core.synth import PointSource, SynthesisSpec, synthesize_processing_set


@pytest.mark.parametrize(("east", "north"), [(60.0, 30.0), (-45.0, 75.0)])
def test_off_centre_source_lands_on_its_true_pixel(tmp_path, east, north):
    spec = SynthesisSpec(
        n_antennas=12,
        n_times=20,
        n_channels=4,
        sources=(PointSource(1.0, offset_ra_arcsec=east, offset_dec_arcsec=north),),
    )
    result = synthesize_processing_set(tmp_path / "sky", spec)
    imsize, cell_arcsec = 256, 5.0
    image = make_dirty_image(
        open_processing_set(result.path), imsize=imsize, cell_arcsec=cell_arcsec
    ).values
    east_l, north_m, _ = result.source_lmn[0]
    cell = np.radians(cell_arcsec / 3600)
    expected = (round(imsize / 2 + north_m / cell), round(imsize / 2 - east_l / cell))
    assert np.unravel_index(np.argmax(image), image.shape) == expected
    assert image[expected] > 0.95
