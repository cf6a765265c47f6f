"""FITS products carry what viewers and CASA need: the restoring beam among it; previews
shrink to thumbnails for the Prefect UI."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
import xarray as xr
from astropy.io import fits

from radps_flows.core.products import (
    ModelImageError,
    png_thumbnail,
    read_model_image,
    write_fits,
    write_png,
)


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


def test_preview_thumbnail_keeps_the_aspect_and_fits_the_bound(tmp_path):
    png = write_png(_image(), tmp_path / "preview.png", "t")
    with PIL.Image.open(png) as full:
        width, height = full.size
    small = PIL.Image.open(io.BytesIO(png_thumbnail(png, max_pixels=200)))
    assert small.format == "PNG" and max(small.size) == 200
    assert small.size[0] / small.size[1] == pytest.approx(width / height, rel=0.02)


def test_a_figure_waits_for_the_background_warm_up_and_it_starts_once(tmp_path, monkeypatch):
    import threading
    import time

    from radps_flows.core import products

    events: list[str] = []

    def slow_warm_up_fake() -> None:  # stands in for the real first figure, made slow
        time.sleep(0.3)
        events.append("warmed")

    monkeypatch.setattr(products, "_warm_up", None)
    monkeypatch.setattr(products, "_draw_throwaway_figure", slow_warm_up_fake)
    products.warm_up_plotting()
    thread = products._warm_up
    products.warm_up_plotting()
    assert products._warm_up is thread and isinstance(thread, threading.Thread)
    write_png(_image(), tmp_path / "p.png", "t")
    events.append("drawn")
    assert events == ["warmed", "drawn"]


def test_a_warm_up_asked_for_at_gridding_waits_for_it(monkeypatch):
    from radps_flows.core import products

    drawn: list[str] = []
    monkeypatch.setattr(products, "_warm_up", None)
    monkeypatch.setattr(products, "_warm_up_at_gridding", False)
    monkeypatch.setattr(products, "_draw_throwaway_figure", lambda: drawn.append("warm-up"))
    products.gridding_starts()  # nobody asked: nothing starts
    assert products._warm_up is None
    products.warm_up_plotting(at_gridding=True)
    assert products._warm_up is None  # not while blocks may be read
    products.gridding_starts()
    products._warm_up.join()
    assert drawn == ["warm-up"]
    products.gridding_starts()  # once per process
    assert drawn == ["warm-up"]


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


def test_a_large_preview_draws_bin_means_over_the_pixels_it_covers():
    from radps_flows.core.products import binned_for_preview

    data = np.arange(10 * 10, dtype=float).reshape(10, 10)
    data[0, 0] = np.nan
    shown, factor = binned_for_preview(data, pixels=4)
    assert factor == 3 and shown.shape == (3, 3)  # the last row and column fill no bin
    assert shown[1, 2] == data[3:6, 6:9].mean()
    assert shown[0, 0] == np.nanmean(data[0:3, 0:3])  # NaN ignored
    small = np.ones((4, 4))
    assert binned_for_preview(small, pixels=4)[0] is small


def test_a_binned_preview_spans_the_sky_of_the_pixels_it_shows(tmp_path, monkeypatch):
    from radps_flows.core import products

    drawn: dict = {}
    original = products.new_figure

    def recording_figure(figsize):
        fig = original(figsize)
        drawn["figure"] = fig
        return fig

    monkeypatch.setattr(products, "new_figure", recording_figure)
    image = xr.DataArray(np.ones((1030, 1030)), dims=("y", "x"), attrs=_image().attrs)
    write_png(image, tmp_path / "big.png", "t")
    shown = drawn["figure"].axes[0].images[0]
    assert shown.get_array().shape == (343, 343)  # bins of 3; pixel 1029 fills none
    # 1" pixels, the reference pixel 515: the left edge (RA grows to the left) is pixel -0.5
    # at +515.5", the right edge the last pixel shown, 1028, whose far edge is at -513.5".
    left, right, bottom, top = shown.get_extent()
    assert (left, right, bottom, top) == pytest.approx((515.5, -513.5, -515.5, 513.5))
