"""Image products as xradio image datasets: schema-valid, float32, oriented as xradio's
(l, m), with the beam in radians on every plane and the data groups of a tclean set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from xradio.image.schema import check_image

from radps_flows.core.image_dataset import BEAM_SKY, PSF, image_dataset, single_image

N = 32
CELL = math.radians(1 / 3600)


def _image(name: str, bunit: str = "Jy/beam", **attrs: object) -> xr.DataArray:
    offsets = (np.arange(N) - N // 2) * CELL
    return xr.DataArray(
        np.zeros((N, N)),
        dims=("y", "x"),
        coords={"l": ("x", -offsets), "m": ("y", offsets)},
        name=name,
        attrs={
            "cell_rad": CELL,
            "phase_center_ra_rad": 2.6,
            "phase_center_dec_rad": 0.13,
            "phase_center_frame": "fk5",
            "reference_frequency_hz": 3.6e10,
            "spectral_frame": "TOPO",
            "bunit": bunit,
            "date_obs": "2010-04-26T03:21:56",
            "telescope": "EVLA",
            "telescope_position_m": [-1601159.2, -5042003.9, 3554851.7],
            "object": "J1008+0730",
            "beam_major_arcsec": 2.7,
            "beam_minor_arcsec": 1.9,
            "beam_pa_deg": 16.4,
            **attrs,
        },
    )


def test_a_clean_set_is_schema_valid_with_a_group_per_image():
    restored = _image("restored")
    restored[10, 20] = 1.0  # y 10, x 20
    sky = {
        "base": restored,
        "dirty": _image("dirty"),
        "residual": _image("residual"),
        "model": _image("model", "Jy/pixel"),
    }
    xds = image_dataset(sky, _image("psf", ""), history=["radps 1.0 pipeline imaging"])
    assert not check_image(xds), repr(check_image(xds))
    assert xds["SKY"].dtype == np.float32 and xds["SKY"].dims[-2:] == ("l", "m")
    # pixel (y 10, x 20) is at l = -(20 - N/2) cells (x grows west), m = (10 - N/2) cells
    point = xds["SKY"].isel(time=0, frequency=0, polarization=0)
    (li,), (mi,) = np.nonzero(point.values)
    assert xds["l"].values[li] == pytest.approx(-(20 - N // 2) * CELL)
    assert xds["m"].values[mi] == pytest.approx((10 - N // 2) * CELL)
    beam = xds[BEAM_SKY].sel(beam_params_label=["major", "minor", "pa"]).values.ravel()
    np.testing.assert_allclose(beam, [2.7 * CELL, 1.9 * CELL, math.radians(16.4)])
    groups = xds.attrs["data_groups"]
    assert {g: groups[g]["sky"] for g in groups} == {
        "base": "SKY",
        "dirty": "SKY_DIRTY",
        "residual": "SKY_RESIDUAL",
        "model": "SKY_MODEL",
    }
    assert "beam_fit_params_sky" not in groups["model"]  # Jy/pixel has no beam
    assert all(groups[g]["point_spread_function"] == PSF for g in groups)
    assert xds["SKY"].attrs["object_name"] == "J1008+0730"
    assert xds["SKY"].attrs["user"]["history"] == ["radps 1.0 pipeline imaging"]
    assert not check_image(single_image(xds, "SKY_RESIDUAL"))
    assert not check_image(single_image(xds, PSF))


def test_a_cube_has_a_beam_per_channel():
    offsets = (np.arange(N) - N // 2) * CELL
    attrs = _image("cube").attrs
    for key in ("beam_major_arcsec", "beam_minor_arcsec", "beam_pa_deg"):
        del attrs[key]
    cube = xr.DataArray(
        np.zeros((2, N, N), dtype=np.float32),
        dims=("frequency", "y", "x"),
        coords={
            "frequency": [1.0e9, 1.1e9],
            "beam_major_arcsec": ("frequency", [3.0, 2.8]),
            "beam_minor_arcsec": ("frequency", [2.0, 1.9]),
            "beam_pa_deg": ("frequency", [10.0, 11.0]),
            "l": ("x", -offsets),
            "m": ("y", offsets),
        },
        name="cube",
        attrs=attrs,
    )
    xds = image_dataset({"base": cube})
    assert not check_image(xds), repr(check_image(xds))
    majors = xds[BEAM_SKY].sel(beam_params_label="major").values.ravel()
    np.testing.assert_allclose(majors, [3.0 * CELL, 2.8 * CELL])
