"""Previews: drawn on the image's WCS with its beam, binned when large, shrunk to thumbnails
for the Prefect UI, after one warm-up per process; gains per antenna with a circular phase
rms."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
import xarray as xr
from astropy.wcs import WCS

from radps_flows.core.calibration import circular_phase_rms_deg
from radps_flows.core.previews import plot_gains, png_thumbnail, preview_title, write_png
from radps_flows.core.products import fits_header
from tests.unit.test_products import _image


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

    from radps_flows.core import previews

    events: list[str] = []

    def slow_warm_up_fake() -> None:  # stands in for the real first figure, made slow
        time.sleep(0.3)
        events.append("warmed")

    monkeypatch.setattr(previews, "_warm_up", None)
    monkeypatch.setattr(previews, "_draw_throwaway_figure", slow_warm_up_fake)
    previews.warm_up_plotting()
    thread = previews._warm_up
    previews.warm_up_plotting()
    assert previews._warm_up is thread and isinstance(thread, threading.Thread)
    write_png(_image(), tmp_path / "p.png", "t")
    events.append("drawn")
    assert events == ["warmed", "drawn"]


def test_a_warm_up_asked_for_at_gridding_waits_for_it(monkeypatch):
    from radps_flows.core import previews

    drawn: list[str] = []
    monkeypatch.setattr(previews, "_warm_up", None)
    monkeypatch.setattr(previews, "_warm_up_at_gridding", False)
    monkeypatch.setattr(previews, "_draw_throwaway_figure", lambda: drawn.append("warm-up"))
    previews.gridding_starts()  # nobody asked: nothing starts
    assert previews._warm_up is None
    previews.warm_up_plotting(at_gridding=True)
    assert previews._warm_up is None  # not while blocks may be read
    previews.gridding_starts()
    previews._warm_up.join()
    assert drawn == ["warm-up"]
    previews.gridding_starts()  # once per process
    assert drawn == ["warm-up"]


def test_a_large_preview_draws_bin_means_over_the_pixels_it_covers():
    from radps_flows.core.previews import binned_for_preview

    data = np.arange(10 * 10, dtype=float).reshape(10, 10)
    data[0, 0] = np.nan
    shown, factor = binned_for_preview(data, pixels=4)
    assert factor == 3 and shown.shape == (3, 3)  # the last row and column fill no bin
    assert shown[1, 2] == data[3:6, 6:9].mean()
    assert shown[0, 0] == np.nanmean(data[0:3, 0:3])  # NaN ignored
    small = np.ones((4, 4))
    assert binned_for_preview(small, pixels=4)[0] is small


def test_a_binned_preview_spans_the_sky_of_the_pixels_it_shows(tmp_path, monkeypatch):
    from radps_flows.core import previews

    drawn: dict = {}
    original = previews.new_figure

    def recording_figure(figsize):
        fig = original(figsize)
        drawn["figure"] = fig
        return fig

    monkeypatch.setattr(previews, "new_figure", recording_figure)
    image = xr.DataArray(np.ones((1030, 1030)), dims=("y", "x"), attrs=_image().attrs)
    write_png(image, tmp_path / "big.png", "t")
    ax = drawn["figure"].axes[0]
    assert ax.images[0].get_array().shape == (343, 343)  # bins of 3; pixel 1029 fills none
    # A binned pixel lies on the sky where the centre of the 3 x 3 pixels it averages does.
    full = WCS(fits_header(image)).celestial
    for binned, original in (((0, 0), (1, 1)), ((342, 100), (1027, 301))):
        a = ax.wcs.pixel_to_world(*binned)
        b = full.pixel_to_world(*original)
        assert a.separation(b).arcsec < 1e-6


def _beam_image(pa_deg: float) -> xr.DataArray:
    return xr.DataArray(
        np.zeros((64, 64)),
        dims=("y", "x"),
        attrs=_image(beam_major_arcsec=8.0, beam_minor_arcsec=2.0, beam_pa_deg=pa_deg).attrs,
    )


@pytest.mark.parametrize(("pa_deg", "along"), [(0.0, "y"), (90.0, "x"), (45.0, "xy")])
def test_the_beam_ellipse_has_the_beams_size_and_position_angle(
    tmp_path, monkeypatch, pa_deg, along
):
    """1" pixels: an 8" x 2" beam is an ellipse 8 x 2 pixels; PA 0 is north (+y), 90 east
    (-x, as RA grows to the left), 45 between north and east (up and to the left)."""
    from matplotlib.patches import Ellipse

    from radps_flows.core import previews

    drawn: dict = {}
    original = previews.new_figure
    monkeypatch.setattr(
        previews, "new_figure", lambda size: drawn.setdefault("figure", original(size))
    )
    write_png(_beam_image(pa_deg), tmp_path / "beam.png", "t")
    (ellipse,) = [p for p in drawn["figure"].axes[0].patches if isinstance(p, Ellipse)]
    assert (ellipse.width, ellipse.height) == pytest.approx((8.0, 2.0))
    # The major axis's direction in pixels (x, y): (-sin PA, cos PA).
    angle = np.radians(ellipse.angle)
    direction = np.array([np.cos(angle), np.sin(angle)])
    expected = np.array([-np.sin(np.radians(pa_deg)), np.cos(np.radians(pa_deg))])
    assert abs(direction @ expected) == pytest.approx(1.0)


def test_a_preview_title_names_the_object_frequency_and_kind():
    image = _image(object="J1008+0730", reference_frequency_hz=36.3085e9)
    assert preview_title(image, "restored image") == (
        "J1008+0730: restored image\n36.3085 GHz, Stokes I"
    )


def test_circular_phase_rms_is_the_scatter_about_the_mean_direction_across_the_wrap():
    """Phases 175, -175, 180, 170 and -170 degrees lie 5, 5, 0, 10 and 10 degrees from their
    mean direction (180): rms sqrt(250 / 5) = 7.07 degrees. np.std of the angles says 170."""
    phases = np.radians([175.0, -175.0, 180.0, 170.0, -170.0])
    gains = 0.05 * np.exp(1j * phases)
    assert circular_phase_rms_deg(gains) == pytest.approx(np.sqrt(50.0))
    assert np.degrees(np.std(np.angle(gains))) > 150  # what the table used to report
    assert circular_phase_rms_deg(np.exp(1j * np.radians([10.0, 20.0]))) == pytest.approx(5.0)
    assert circular_phase_rms_deg(np.array([np.nan, 0.0])) is None


def test_the_gains_plot_has_a_panel_per_antenna_with_the_reference_marked(tmp_path, monkeypatch):
    from radps_flows.core import previews

    drawn: dict = {}
    original = previews.new_figure
    monkeypatch.setattr(
        previews, "new_figure", lambda size: drawn.setdefault("figure", original(size))
    )
    antennas = ["ea01", "ea02", "ea03", "ea04", "ea05", "ea06", "ea07"]
    phases = np.radians([[[[175.0, 0.0]] * 7], [[[-175.0, 0.0]] * 7]])  # time, chan, ant, rec
    table = xr.Dataset(
        {
            "GAIN": (("time", "frequency", "antenna_name", "receptor"), np.exp(1j * phases)),
            "FLAG": (
                ("time", "frequency", "antenna_name", "receptor"),
                np.zeros(phases.shape, bool),
            ),
        },
        coords={
            "time": [0.0, 60.0],
            "frequency": [1e9],
            "antenna_name": antennas,
            "receptor": ["R", "L"],
        },
        attrs={"refant": "ea02"},
    )
    plot_gains({"p0": table}, tmp_path / "gains.png")
    titles = [  # each panel's heading, a text above it
        t.get_text() for ax in drawn["figure"].axes if ax.get_visible() for t in ax.texts
    ]
    assert len(titles) == 7
    assert titles[1].startswith("ea02 (ref)")
    assert "phase rms R 5.0°, L 0.0°" in titles[0]
    assert (tmp_path / "gains.png").read_bytes()[:4] == b"\x89PNG"
