"""The raw VLA dirty image against CASA 6.7's (tclean, standard gridder, natural, MFS, Stokes I).

CASA's outer edge differs from any accurate gridder (its standard gridder), so pixel values
are compared over the inner half only; the peak is a noise peak of the uncalibrated DATA column.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

from radps_flows.core import image_dataset
from radps_flows.core.imager import make_dirty_image
from radps_flows.core.io import InputDataError, open_processing_set
from radps_flows.core.previews import write_png
from radps_flows.core.products import write_fits
from tests.conftest import shared_dir

INNER = slice(128, 384)


@pytest.fixture(scope="module")
def casa() -> dict:
    ref = shared_dir() / "reference"
    if not (ref / "casa-vla.json").is_file():
        pytest.skip(f"CASA reference not found in {ref}")
    meta = json.loads((ref / "casa-vla.json").read_text())
    with fits.open(ref / "vla_dirty.image.fits") as hdul:
        return {"meta": meta, "header": hdul[0].header, "data": hdul[0].data.astype(float)}


@pytest.fixture(scope="module")
def vla_image(vla_ms: Path, tmp_path_factory: pytest.TempPathFactory, casa: dict):
    params = casa["meta"]["imaging_parameters"]
    cache = tmp_path_factory.mktemp("ps-cache")
    t0 = time.perf_counter()
    datasets = open_processing_set(vla_ms, cache_dir=cache)
    t1 = time.perf_counter()
    image = make_dirty_image(datasets, imsize=params["imsize"], cell_arcsec=params["cell_arcsec"])
    t2 = time.perf_counter()
    print(f"\nVLA: open+convert {t1 - t0:.2f} s, image {t2 - t1:.2f} s")
    return image


def test_dirty_image_matches_casa(vla_image: xr.DataArray, casa: dict):
    raw = casa["meta"]["raw_dirty"]
    ours = vla_image.values
    theirs = casa["data"][0, 0]  # FITS [stokes, freq, y, x] -> [y, x]
    assert ours.shape == theirs.shape == (512, 512)
    x, y = raw["peak_pix"][:2]  # CASA (x, y), 0-based
    assert np.unravel_index(ours.argmax(), ours.shape) == (y, x) == (39, 480)
    assert ours.max() == pytest.approx(raw["peak"], rel=0.01)
    corr = np.corrcoef(ours[INNER, INNER].ravel(), theirs[INNER, INNER].ravel())[0, 1]
    print(f"peak {ours.max():.6e} (CASA {raw['peak']:.6e}), inner correlation {corr:.6f}")
    assert corr >= 0.999
    assert vla_image.attrs["nvis"] == 1360 * 64  # 348160 correlations / 4, NaN slots excluded


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")  # CASA's header
def test_fits_wcs_matches_casa(vla_image: xr.DataArray, casa: dict, tmp_path: Path):
    path = write_fits(vla_image, tmp_path / "dirty.fits")
    with fits.open(path) as hdul:
        header, data = hdul[0].header, hdul[0].data
    assert data.shape == casa["data"].shape == (1, 1, 512, 512)
    np.testing.assert_allclose(data[0, 0], vla_image.values, rtol=1e-6, atol=1e-12)
    assert header["BUNIT"] == "Jy/beam"
    assert header["RADESYS"] == casa["header"]["RADESYS"]
    assert header["CDELT1"] < 0
    assert header["TELESCOP"] == "EVLA"
    assert header["DATE-OBS"].startswith("2010-04-26T03:21:56")
    ours, theirs = WCS(header).celestial, WCS(casa["header"]).celestial
    x, y = casa["meta"]["raw_dirty"]["peak_pix"][:2]
    a, b = ours.pixel_to_world(x, y), theirs.pixel_to_world(x, y)
    cell = abs(casa["header"]["CDELT1"]) * 3600
    assert a.separation(b).arcsec < 0.05 * cell
    centre = ours.pixel_to_world(256, 256)
    assert centre.separation(theirs.pixel_to_world(256, 256)).arcsec < 1e-3


def test_dirty_beam_matches_casa(vla_image: xr.DataArray, casa: dict):
    """The dirty image carries the beam fitted to its own PSF (gridded beside it on a small
    grid), as CASA's niter=0 tclean does: within 1% of CASA's, the PA within 0.5 degree."""
    header = casa["header"]
    assert vla_image.attrs["beam_major_arcsec"] == pytest.approx(header["BMAJ"] * 3600, rel=0.01)
    assert vla_image.attrs["beam_minor_arcsec"] == pytest.approx(header["BMIN"] * 3600, rel=0.01)
    assert vla_image.attrs["beam_pa_deg"] == pytest.approx(header["BPA"], abs=0.5)


def test_png_and_zarr(vla_image: xr.DataArray, tmp_path: Path):
    from xradio.image import open_image

    png = write_png(vla_image, tmp_path / "dirty.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    xds = image_dataset.image_dataset({"base": vla_image})
    store = image_dataset.write(xds, str(tmp_path / "dirty.img.zarr"), "zarr")
    back = open_image(store)
    np.testing.assert_array_equal(
        back["SKY"].values[0, 0, 0], vla_image.values.T.astype(np.float32)
    )


def test_conversion_is_reused(vla_ms: Path, tmp_path: Path):
    first = open_processing_set(vla_ms, cache_dir=tmp_path)
    stores = sorted(p.name for p in tmp_path.glob("*.ps.zarr"))
    stamp = (tmp_path / stores[0]).stat().st_mtime_ns
    again = open_processing_set(vla_ms, cache_dir=tmp_path)
    assert (tmp_path / stores[0]).stat().st_mtime_ns == stamp
    assert [d.attrs["partition_name"] for d in again] == [d.attrs["partition_name"] for d in first]
    pc = again[0].attrs["phase_center"]
    assert pc["frame"] == "fk5"
    assert np.degrees(pc["ra"]) == pytest.approx(152.0000666676, abs=1e-8)


def test_input_errors(tmp_path: Path):
    with pytest.raises(InputDataError, match="no such file"):
        open_processing_set(tmp_path / "missing.ms")
    (tmp_path / "plain.ms").write_text("not a table")
    with pytest.raises(InputDataError, match=re.escape("plain.ms")):
        open_processing_set(tmp_path / "plain.ms")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputDataError, match="neither"):
        open_processing_set(tmp_path / "empty")
    bad = tmp_path / "bad.ps.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text("{ corrupt")
    with pytest.raises(InputDataError, match=re.escape("bad.ps.zarr")):
        open_processing_set(bad)
    fake = tmp_path / "fake.ms"
    for sub in ("ANTENNA", "SPECTRAL_WINDOW", "FIELD"):
        (fake / sub).mkdir(parents=True)
    (fake / "table.dat").write_bytes(b"\0" * 64)
    with pytest.raises(InputDataError, match=re.escape("fake.ms")):
        open_processing_set(fake, cache_dir=tmp_path / "cache")
