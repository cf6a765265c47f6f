"""What an astronomer checks first in an image: its science summary.

The peak and where it is on the sky, the noise, the beam, how much data was flagged, and for
CLEAN the components and the flux they hold. One function of the images (numpy/xarray in, a
dict out) that the imaging pipeline publishes as a Prefect table artifact and `radps run`
prints at the end.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import xarray as xr

from .clean import box_rms


def image_summary(
    image: xr.DataArray,
    *,
    residual: xr.DataArray | None = None,
    model: xr.DataArray | None = None,
) -> dict[str, Any]:
    """The science summary of ``image`` (a dirty image, a cube, or CLEAN's restored image with
    its ``residual`` and ``model``): keys in the order a reader wants them, values rounded for
    reading. The rms is the residual's where there is one (the noise CLEAN left), else the
    image's robust rms; for a cube, over all its channels."""
    from astropy.wcs import WCS

    from .previews import beam_of
    from .products import fits_header

    planes = image.transpose(..., "y", "x").values
    data = np.asarray(planes, dtype=np.float64)
    out: dict[str, Any] = {}
    if image.attrs.get("object"):
        out["object"] = str(image.attrs["object"])
    freq = image.attrs.get("reference_frequency_hz")
    if freq:
        out["frequency_ghz"] = round(float(freq) / 1e9, 6)
    if np.isfinite(data).any():
        index = np.unravel_index(np.nanargmax(data), data.shape)
        y, x = int(index[-2]), int(index[-1])
        peak = float(data[index])
        out["peak_jy_per_beam"] = _significant(peak)
        out["peak_pixel_xy"] = [x, y]
        if len(index) == 3:
            out["peak_channel"] = int(index[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a header without DATE-OBS or OBSGEO is fine here
            sky = WCS(fits_header(image)).celestial.pixel_to_world(x, y)
        out["peak_ra"] = sky.ra.to_string(unit="hourangle", sep=":", precision=3, pad=True)
        out["peak_dec"] = sky.dec.to_string(sep=":", precision=2, alwayssign=True, pad=True)
        # without a residual, the image's robust (MAD) rms, which its sources barely move
        noise = (
            box_rms(data[np.isfinite(data)], None) if residual is None else _rms(residual.values)
        )
        out["rms_jy_per_beam"] = _significant(noise)
        if noise > 0:
            out["dynamic_range"] = round(peak / noise, 1)
    beam = beam_of(image)
    if beam is not None:
        major, minor, pa = beam
        out["beam"] = f'{major:.3f}" x {minor:.3f}" at {pa:.1f} deg'
    if "flagged_fraction" in image.attrs:
        out["flagged_pct"] = round(100 * float(image.attrs["flagged_fraction"]), 2)
    for key, name in (("clean_iterations", "clean_components"), ("clean_major_cycles", None)):
        if key in image.attrs:
            out[name or key] = int(image.attrs[key])
    if model is not None:
        out["model_flux_jy"] = _significant(float(np.nansum(model.values)))
    return out


def _rms(values: np.ndarray) -> float:
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(np.sqrt(np.mean(finite**2))) if finite.size else math.nan


def _significant(value: float, digits: int = 5) -> float:
    """``value`` to ``digits`` significant figures (a Jy/beam value spans decades)."""
    if not math.isfinite(value) or value == 0:
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))
