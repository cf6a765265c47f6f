"""FITS products carry what viewers and CASA need: the restoring beam, the observatory, a
clean OBJECT, the run's HISTORY; and read back as calibration models."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from radps_flows.core.products import ModelImageError, read_model_image, write_fits


def _image(**attrs: object) -> xr.DataArray:
    return xr.DataArray(
        np.zeros((32, 32), dtype=np.float32),
        dims=("y", "x"),
        attrs={
            "cell_rad": np.radians(1 / 3600),
            "phase_center_ra_rad": 2.6,
            "phase_center_dec_rad": 0.13,
            "phase_center_frame": "fk5",
            "reference_frequency_hz": 3.6e10,
            **attrs,
        },
    )


def test_restoring_beam_is_written_in_degrees(tmp_path):
    path = write_fits(
        _image(beam_major_arcsec=2.7, beam_minor_arcsec=1.98, beam_pa_deg=3.25), tmp_path / "a"
    )
    header = fits.getheader(path)
    assert header["BMAJ"] == pytest.approx(2.7 / 3600)
    assert header["BMIN"] == pytest.approx(1.98 / 3600)
    assert header["BPA"] == pytest.approx(3.25)


def test_no_beam_keywords_without_a_beam(tmp_path):
    header = fits.getheader(write_fits(_image(bunit="Jy/pixel"), tmp_path / "b"))
    assert "BMAJ" not in header
    assert header["BUNIT"] == "Jy/pixel"


def test_a_written_clean_model_reads_back_as_the_calibration_model(tmp_path):
    values = np.random.default_rng(1).random((32, 32))
    model = _image(bunit="Jy/pixel", reference_pixel=[16, 16]).copy(data=values)
    read = read_model_image(write_fits(model, tmp_path / "model.fits"))
    np.testing.assert_allclose(read.values, values, rtol=1e-6)  # float32 on disk
    assert read.dims == ("y", "x")
    assert read.attrs["cell_rad"] == pytest.approx(model.attrs["cell_rad"])
    assert read.attrs["phase_center_dec_rad"] == pytest.approx(0.13)


@pytest.mark.parametrize(
    ("attrs", "keyword"),
    [
        ({"bunit": "Jy/beam"}, "BUNIT"),  # a restored image is not a model
        ({"bunit": "Jy/pixel", "reference_pixel": [10, 16]}, "CRPIX"),
    ],
)
def test_a_model_the_predictor_cannot_use_is_refused_by_keyword(tmp_path, attrs, keyword):
    path = write_fits(_image(**attrs), tmp_path / "bad.fits")
    with pytest.raises(ModelImageError, match=keyword):
        read_model_image(path)


def test_a_truncated_model_image_is_a_clear_error(tmp_path):
    """Its header is whole, its data unit is not: astropy raises TypeError reading it."""
    model = _image(bunit="Jy/pixel", reference_pixel=[16, 16])
    path = write_fits(model, tmp_path / "model.fits")
    path.write_bytes(path.read_bytes()[: 2880 + 1000])
    with pytest.raises(ModelImageError, match="not a readable FITS image"):
        read_model_image(path)


def test_the_header_carries_the_observatory_object_and_history_and_astropy_reads_it_quietly(
    tmp_path,
):
    import warnings

    from astropy.coordinates import EarthLocation
    from astropy.wcs import WCS

    vla = [-1601159.2, -5042003.9, 3554851.7]  # the VLA set's antenna centroid (ITRS, m)
    image = _image(
        object="J1008+0730",
        telescope_position_m=vla,
        date_obs="2010-04-26T03:21:56",
        rest_frequency_hz=3.5e10,
    )
    path = write_fits(image, tmp_path / "h.fits", history=["radps 1.2.3 pipeline imaging"])
    header = fits.getheader(path)
    assert [header[f"OBSGEO-{a}"] for a in "XYZ"] == vla
    site = EarthLocation.from_geocentric(*vla, unit="m")
    assert header["OBSGEO-L"] == pytest.approx(site.lon.deg, abs=1e-6)
    assert header["OBSGEO-B"] == pytest.approx(site.lat.deg, abs=1e-4)
    assert header["OBSRA"] == pytest.approx(np.degrees(2.6))
    assert header["OBJECT"] == "J1008+0730"
    assert header["RESTFRQ"] == 3.5e10  # the line's, not the reference frequency
    assert "radps 1.2.3 pipeline imaging" in str(header["HISTORY"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # obsfix, datfix: no "fixed" keyword
        WCS(header)


def test_names_of_an_xradio_conversion_lose_their_unique_suffix():
    from radps_flows.core.imaging import object_name

    assert object_name("J1008+0730_0") == "J1008+0730"
    assert object_name("NGC_1234_12") == "NGC_1234"  # one suffix: the field's id
    assert object_name("_0") == "_0"


def test_a_cube_writes_a_beam_per_channel_as_casa_does(tmp_path):
    cube = xr.DataArray(
        np.zeros((3, 32, 32), dtype=np.float32),
        dims=("frequency", "y", "x"),
        coords={
            "frequency": [1.0e9, 1.1e9, 1.2e9],
            "beam_major_arcsec": ("frequency", [3.0, 2.8, np.nan]),
            "beam_minor_arcsec": ("frequency", [2.0, 1.9, np.nan]),
            "beam_pa_deg": ("frequency", [10.0, 11.0, np.nan]),
        },
        attrs=_image(channel_increment_hz=1e8).attrs,
    )
    with fits.open(write_fits(cube, tmp_path / "cube.fits")) as hdus:
        assert hdus[0].header["CASAMBM"] is True
        assert "BMAJ" not in hdus[0].header
        beams = hdus["BEAMS"].data
        np.testing.assert_allclose(beams["BMAJ"][:2], [3.0, 2.8], rtol=1e-6)
        np.testing.assert_allclose(beams["BPA"][:2], [10.0, 11.0], rtol=1e-6)
        assert list(beams["CHAN"]) == [0, 1, 2] and np.isnan(beams["BMAJ"][2])


def test_the_science_summary_finds_the_peak_on_the_sky_and_the_noise_around_it():
    from astropy.wcs import WCS

    from radps_flows.core.products import fits_header
    from radps_flows.core.summary import image_summary

    rng = np.random.default_rng(7)
    noise = rng.normal(0, 0.01, (256, 256))
    attrs = _image(
        object="J1008+0730", beam_major_arcsec=2.7, beam_minor_arcsec=1.9, beam_pa_deg=16.4
    ).attrs
    image = xr.DataArray(noise, dims=("y", "x"), attrs=attrs)
    image[40, 200] = 2.5  # y 40, x 200
    summary = image_summary(image)
    assert summary["peak_jy_per_beam"] == 2.5 and summary["peak_pixel_xy"] == [200, 40]
    sky = WCS(fits_header(image)).celestial.pixel_to_world(200, 40)
    assert summary["peak_ra"] == sky.ra.to_string(unit="hourangle", sep=":", precision=3, pad=True)
    assert summary["rms_jy_per_beam"] == pytest.approx(0.01, rel=0.03)  # the source ignored
    assert summary["beam"] == '2.700" x 1.900" at 16.4 deg'
    model = xr.zeros_like(image)
    model[40, 200], model[10, 10] = 2.0, 0.25
    residual = xr.full_like(image, 0.02)
    clean = image_summary(image, residual=residual, model=model)
    assert clean["rms_jy_per_beam"] == pytest.approx(0.02) and clean["model_flux_jy"] == 2.25
    assert clean["dynamic_range"] == pytest.approx(125.0)
