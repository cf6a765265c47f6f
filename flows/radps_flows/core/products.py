"""Image products: FITS (as CASA writes them), PNG preview, zarr.

All take the ``(y, x)`` DataArray of :func:`radps_flows.core.imaging.make_dirty_image` (FITS
orientation, attrs describing the WCS) and return the path written. The FITS file has CASA's
four axes (RA---SIN, DEC--SIN, FREQ, STOKES) so viewers and CASA-based comparisons treat both
alike.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.time import Time

from .beam import image_beams

#: MSv4 frame names -> FITS RADESYS and EQUINOX (None: keyword not written).
_RADESYS = {"fk5": ("FK5", 2000.0), "icrs": ("ICRS", None), "fk4": ("FK4", 1950.0)}
#: MSv4 spectral frames (astropy names, CASA's TOPO) -> FITS SPECSYS.
_SPECSYS = {
    "topo": "TOPOCENT",
    "lsrk": "LSRK",
    "lsrd": "LSRD",
    "bary": "BARYCENT",
    "barycentric": "BARYCENT",
    "icrs": "BARYCENT",
    "geo": "GEOCENTR",
    "gcrs": "GEOCENTR",
}


def _required(image: xr.DataArray, key: str) -> float:
    if key not in image.attrs:
        raise ValueError(f"image lacks the {key!r} attribute (made by make_dirty_image?)")
    return float(image.attrs[key])


def fits_header(image: xr.DataArray, history: Sequence[str] = ()) -> fits.Header:
    """CASA-like primary header for ``image``: 4 axes, SIN projection, phase centre at CRPIX;
    ``history`` (the run's software, input and parameters) as HISTORY cards after the
    image's own."""
    ny, nx = image.sizes["y"], image.sizes["x"]
    cell_deg = math.degrees(_required(image, "cell_rad"))
    ra = math.degrees(_required(image, "phase_center_ra_rad")) % 360.0
    dec = math.degrees(_required(image, "phase_center_dec_rad"))
    ref_x, ref_y = image.attrs.get("reference_pixel", [nx // 2, ny // 2])
    frame = str(image.attrs.get("phase_center_frame", "fk5")).lower()
    if frame not in _RADESYS:
        raise ValueError(f"cannot write a FITS celestial frame for {frame!r}")
    radesys, equinox = _RADESYS[frame]
    h = fits.Header()
    h["BUNIT"] = (str(image.attrs.get("bunit", "Jy/beam")), "Brightness (pixel) unit")
    h["BTYPE"] = "Intensity"
    per_beam = h["BUNIT"].strip().lower() == "jy/beam"  # a model (Jy/pixel) has no beam
    if per_beam and "beam_major_arcsec" in image.attrs:  # CASA's convention (deg, PA E of N)
        h["BMAJ"] = float(image.attrs["beam_major_arcsec"]) / 3600.0
        h["BMIN"] = float(image.attrs["beam_minor_arcsec"]) / 3600.0
        h["BPA"] = float(image.attrs["beam_pa_deg"])
    if "frequency" in image.dims:  # a cube: one plane per channel, the first at CRPIX 1
        freq_step = float(image.attrs.get("channel_increment_hz", 0.0)) or 1.0
        freq_ref = float(image["frequency"].values[0])
    else:  # MFS: one plane as wide as the band
        freq_step = float(image.attrs.get("bandwidth_hz", 0.0)) or 1.0
        freq_ref = _required(image, "reference_frequency_hz")
    axes = [
        ("RA---SIN", ra, -cell_deg, ref_x + 1, "deg"),
        ("DEC--SIN", dec, cell_deg, ref_y + 1, "deg"),
        ("FREQ", freq_ref, freq_step, 1.0, "Hz"),
        ("STOKES", 1.0, 1.0, 1.0, ""),  # 1 = I
    ]
    for i, (ctype, crval, cdelt, crpix, cunit) in enumerate(axes, start=1):
        h[f"CTYPE{i}"] = ctype
        h[f"CRVAL{i}"] = crval
        h[f"CDELT{i}"] = cdelt
        h[f"CRPIX{i}"] = float(crpix)
        h[f"CUNIT{i}"] = cunit
    h["RADESYS"] = radesys
    if equinox is not None:
        h["EQUINOX"] = equinox
    h["LONPOLE"] = 180.0
    h["LATPOLE"] = dec
    spec = str(image.attrs.get("spectral_frame", "TOPO")).lower()
    h["SPECSYS"] = (_SPECSYS.get(spec, "TOPOCENT"), "Spectral reference frame")
    # As CASA: the line's rest frequency where known, else the reference frequency.
    rest = image.attrs.get("rest_frequency_hz") or _required(image, "reference_frequency_hz")
    h["RESTFRQ"] = (float(rest), "Rest Frequency (Hz)")
    for key, attr in (("TELESCOP", "telescope"), ("OBSERVER", "observer"), ("OBJECT", "object")):
        if image.attrs.get(attr):
            h[key] = str(image.attrs[attr])
    if image.attrs.get("date_obs"):
        h["DATE-OBS"] = str(image.attrs["date_obs"])
        h["MJD-OBS"] = Time(str(image.attrs["date_obs"]), scale="utc").mjd
        h["TIMESYS"] = "UTC"
    h["OBSRA"] = (ra, "Phase centre RA (deg)")
    h["OBSDEC"] = (dec, "Phase centre Dec (deg)")
    if image.attrs.get("telescope_position_m"):
        for key, value, comment in _observatory(image.attrs["telescope_position_m"]):
            h[key] = (value, comment)
    if "nvis" in image.attrs:
        h["NVIS"] = (int(image.attrs["nvis"]), "Stokes I (row, channel) samples gridded")
    if "sum_weights" in image.attrs:
        h["SUMWT"] = (float(image.attrs["sum_weights"]), "Sum of natural weights")
    h["DATE"] = (datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S"), "Date FITS file was written")
    h["ORIGIN"] = "radps"
    for key in ("weighting", "specmode", "gridder"):
        if key in image.attrs:
            h.add_history(f"{key} = {image.attrs[key]}")
    for line in history:
        h.add_history(line)
    return h


def channel_beams(image: xr.DataArray) -> fits.BinTableHDU | None:
    """A cube's per-channel beams as CASA's ``BEAMS`` table (arcsec, arcsec, deg; CASA sets
    ``CASAMBM`` in the primary header and reads it back as a beam per plane), or None for an
    image with one beam."""
    beams = image_beams(image) if "frequency" in image.dims else None
    if beams is None:
        return None
    nchan = image.sizes["frequency"]
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column("BMAJ", "1E", "arcsec", array=beams[:, 0]),
            fits.Column("BMIN", "1E", "arcsec", array=beams[:, 1]),
            fits.Column("BPA", "1E", "deg", array=beams[:, 2]),
            fits.Column("CHAN", "1J", array=np.arange(nchan, dtype=np.int32)),
            fits.Column("POL", "1J", array=np.zeros(nchan, dtype=np.int32)),
        ],
        name="BEAMS",
    )
    table.header["NCHAN"] = nchan
    table.header["NPOL"] = 1
    return table


def _observatory(position_m: Sequence[float]) -> list[tuple[str, float, str]]:
    """OBSGEO-X/Y/Z (the antenna centroid, ITRS) and the geodetic OBSGEO-L/B/H of the same
    point: with only one of the two, astropy's WCS fills in the other and warns, and it warns
    too where they disagree by more than its tolerance, so L/B/H come from wcslib itself
    (its ellipsoid is not WGS84: astropy's geodetic values differ by 3 m there)."""
    from astropy.wcs import WCS

    x, y, z = (float(v) for v in position_m)
    wcs = WCS(naxis=2)
    wcs.wcs.obsgeo = [x, y, z, math.nan, math.nan, math.nan]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the change it reports is the one asked for
        wcs.fix()
    lon, lat, height = (float(v) for v in wcs.wcs.obsgeo[3:])
    return [
        ("OBSGEO-X", x, "[m] antenna centroid, ITRS"),
        ("OBSGEO-Y", y, "[m] antenna centroid, ITRS"),
        ("OBSGEO-Z", z, "[m] antenna centroid, ITRS"),
        ("OBSGEO-L", lon, "[deg] its geodetic longitude"),
        ("OBSGEO-B", lat, "[deg] its geodetic latitude"),
        ("OBSGEO-H", height, "[m] its height"),
    ]


def _prepare(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_fits(image: xr.DataArray, path: str | os.PathLike, history: Sequence[str] = ()) -> Path:
    """Write ``image`` as a 4-axis float32 FITS image ``[stokes, freq, y, x]`` like CASA's
    (a cube, dims ``(frequency, y, x)``, fills the frequency axis, with its per-channel
    beams in a ``BEAMS`` table)."""
    path = _prepare(path)
    if "frequency" in image.dims:
        data = np.asarray(image.transpose("frequency", "y", "x").values, dtype=np.float32)[None]
    else:
        data = np.asarray(image.transpose("y", "x").values, dtype=np.float32)[None, None]
    header = fits_header(image, history)
    beams = channel_beams(image)
    if beams is not None:
        header["CASAMBM"] = (True, "per-plane beams in the BEAMS table")
    hdus: list[fits.hdu.base.ExtensionHDU | fits.PrimaryHDU] = [
        fits.PrimaryHDU(data=data, header=header)
    ]
    if beams is not None:
        hdus.append(beams)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


class ModelImageError(ValueError):
    """A model image the calibration cannot use as it is; the message says why."""


def read_model_image(path: str | os.PathLike) -> xr.DataArray:
    """A model image ``(y, x)`` in Jy/pixel from a FITS file (the ``model.fits`` of a CLEAN
    run, or CASA's), in the imager's orientation with ``cell_rad`` and the phase centre in
    its attrs, as :func:`radps_flows.core.calibration.solve_gains` takes it.

    Only what the predictor can use is accepted: a SIN projection with square pixels, RA
    decreasing along x, the phase centre at pixel N/2 (as the imager puts it), Jy/pixel, one
    Stokes I plane; anything else is a :class:`ModelImageError` naming the keyword."""
    try:
        with fits.open(path) as hdus:
            header, data = hdus[0].header, hdus[0].data
    except (OSError, ValueError, TypeError) as exc:  # TypeError: a truncated data unit
        raise ModelImageError(f"{path}: not a readable FITS image: {exc}") from exc
    if data is None or data.ndim < 2:
        raise ModelImageError(f"{path}: no image in the primary HDU")
    if any(n != 1 for n in data.shape[:-2]):
        raise ModelImageError(
            f"{path}: model must be one plane (Stokes I, MFS), got shape {data.shape}"
        )
    plane = np.asarray(data.reshape(data.shape[-2:]), dtype=np.float64)
    ny, nx = plane.shape

    def need(condition: bool, what: str) -> None:
        if not condition:
            raise ModelImageError(f"{path}: {what}")

    need(
        header.get("CTYPE1", "").startswith("RA") and header.get("CTYPE1", "").endswith("SIN"),
        f"CTYPE1 must be RA---SIN, not {header.get('CTYPE1')!r}",
    )
    need(
        header.get("CTYPE2", "").startswith("DEC") and header.get("CTYPE2", "").endswith("SIN"),
        f"CTYPE2 must be DEC--SIN, not {header.get('CTYPE2')!r}",
    )
    cdelt1, cdelt2 = float(header.get("CDELT1", 0)), float(header.get("CDELT2", 0))
    need(
        cdelt1 < 0 < cdelt2 and math.isclose(-cdelt1, cdelt2, rel_tol=1e-6),
        f"pixels must be square with RA decreasing along x (CDELT1 {cdelt1}, CDELT2 {cdelt2})",
    )
    crpix = (float(header.get("CRPIX1", 0)), float(header.get("CRPIX2", 0)))
    need(
        crpix == (nx // 2 + 1, ny // 2 + 1),
        f"the phase centre must be at pixel N/2 (CRPIX1/2 = {nx // 2 + 1}, {ny // 2 + 1}), "
        f"not {crpix}",
    )
    unit = str(header.get("BUNIT", "")).strip().lower().replace(" ", "")
    need(unit == "jy/pixel", f"BUNIT must be Jy/pixel (a CLEAN model), not {unit!r}")
    return xr.DataArray(
        plane,
        dims=("y", "x"),
        name="model",
        attrs={
            "cell_rad": math.radians(cdelt2),
            "phase_center_ra_rad": math.radians(float(header["CRVAL1"])),
            "phase_center_dec_rad": math.radians(float(header["CRVAL2"])),
            "bunit": "Jy/pixel",
        },
    )


def read_mask_image(path: str | os.PathLike, imsize: int) -> np.ndarray:
    """A CLEAN mask ``[y, x]`` from a FITS image of the image's size (one plane): True where
    its pixels are non-zero (NaN is outside). The imager's orientation is the FITS file's, as
    :func:`write_fits` writes it, so a mask made from a run's own image.fits fits it.
    Anything else is a :class:`ModelImageError` saying why."""
    try:
        with fits.open(path) as hdus:
            data = hdus[0].data
    except (OSError, ValueError, TypeError) as exc:
        raise ModelImageError(f"{path}: not a readable FITS image: {exc}") from exc
    if data is None or data.ndim < 2 or any(n != 1 for n in data.shape[:-2]):
        shape = None if data is None else data.shape
        raise ModelImageError(f"{path}: a mask must be one image plane, got shape {shape}")
    plane = np.asarray(data.reshape(data.shape[-2:]))
    if plane.shape != (imsize, imsize):
        raise ModelImageError(
            f"{path}: a mask must be {imsize} x {imsize} pixels (imsize), got "
            f"{plane.shape[1]} x {plane.shape[0]}"
        )
    return np.isfinite(plane) & (plane != 0)
