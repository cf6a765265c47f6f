"""Image products: FITS (as CASA writes them), PNG preview, zarr.

All take the ``(y, x)`` DataArray of :func:`radps_flows.core.imaging.make_dirty_image` (FITS
orientation, attrs describing the WCS) and return the path written. The FITS file has CASA's
four axes (RA---SIN, DEC--SIN, FREQ, STOKES) so viewers and CASA-based comparisons treat both
alike.
"""

from __future__ import annotations

import io
import math
import os
import threading
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from astropy.io import fits
from astropy.time import Time

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


def fits_header(image: xr.DataArray) -> fits.Header:
    """CASA-like primary header for ``image``: 4 axes, SIN projection, phase centre at CRPIX."""
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
    if "beam_major_arcsec" in image.attrs:  # restoring beam, CASA's convention (deg, PA E of N)
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
    h["RESTFRQ"] = (_required(image, "reference_frequency_hz"), "Rest Frequency (Hz)")
    for key, attr in (("TELESCOP", "telescope"), ("OBSERVER", "observer"), ("OBJECT", "object")):
        if image.attrs.get(attr):
            h[key] = str(image.attrs[attr])
    if image.attrs.get("date_obs"):
        h["DATE-OBS"] = str(image.attrs["date_obs"])
        h["MJD-OBS"] = Time(str(image.attrs["date_obs"]), scale="utc").mjd
        h["TIMESYS"] = "UTC"
    if "nvis" in image.attrs:
        h["NVIS"] = (int(image.attrs["nvis"]), "Stokes I (row, channel) samples gridded")
    if "sum_weights" in image.attrs:
        h["SUMWT"] = (float(image.attrs["sum_weights"]), "Sum of natural weights")
    h["DATE"] = (datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S"), "Date FITS file was written")
    h["ORIGIN"] = "radps"
    for key in ("weighting", "specmode", "gridder"):
        if key in image.attrs:
            h.add_history(f"{key} = {image.attrs[key]}")
    return h


def _prepare(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_fits(image: xr.DataArray, path: str | os.PathLike) -> Path:
    """Write ``image`` as a 4-axis float32 FITS image ``[stokes, freq, y, x]`` like CASA's
    (a cube, dims ``(frequency, y, x)``, fills the frequency axis)."""
    path = _prepare(path)
    if "frequency" in image.dims:
        data = np.asarray(image.transpose("frequency", "y", "x").values, dtype=np.float32)[None]
    else:
        data = np.asarray(image.transpose("y", "x").values, dtype=np.float32)[None, None]
    fits.PrimaryHDU(data=data, header=fits_header(image)).writeto(path, overwrite=True)
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


def _offset_unit(half_width_arcsec: float) -> tuple[str, float]:
    if half_width_arcsec < 600:
        return "arcsec", 1.0
    if half_width_arcsec < 36000:
        return "arcmin", 60.0
    return "deg", 3600.0


_warm_up: threading.Thread | None = None
_warm_up_lock = threading.Lock()
_warm_up_at_gridding = False


def _draw_throwaway_figure() -> None:
    fig = new_figure((2, 2))
    ax = fig.add_subplot()
    ax.imshow(np.zeros((2, 2)))
    ax.set_title("warm-up")
    fig.colorbar(ax.images[0], ax=ax, label="Jy")
    fig.savefig(io.BytesIO(), format="png")


def warm_up_plotting(*, at_gridding: bool = False, wait: bool = False) -> None:
    """Import matplotlib and draw a throwaway figure in a background thread, once per process.

    A process's first figure costs 0.3-1 s (imports, font list, first text layout); later ones
    about 0.1 s. Done while the flow process waits for its blocks, that time goes unseen;
    :func:`new_figure` waits for it, so two threads never draw at once.

    ``at_gridding``: wait for this process's next gridding (:func:`gridding_starts`). Workers
    that are threads of this process (a local run) read their blocks holding the GIL much of
    the time, and the warm-up's imports next to a read slowed it by as much as they took;
    ducc0 grids without the GIL for about a second per block.

    ``wait``: return when it is drawn (`radps server`'s warm process, so that the runs it forks
    start with plotting warm and no thread running at the fork)."""
    global _warm_up, _warm_up_at_gridding
    with _warm_up_lock:
        if _warm_up is None:
            if at_gridding:
                _warm_up_at_gridding = True
                return
            _warm_up = threading.Thread(
                target=_draw_throwaway_figure, name="radps-warm-up-plotting", daemon=True
            )
            _warm_up.start()
        warming = _warm_up
    if wait:
        warming.join()


def gridding_starts() -> None:
    """Called as this process starts a gridding: the moment a warm-up asked for with
    ``at_gridding`` begins."""
    if _warm_up_at_gridding and _warm_up is None:
        warm_up_plotting()


def new_figure(figsize: tuple[float, float]):  # -> matplotlib Figure
    """A Figure on an Agg canvas: matplotlib's object API, so no global backend is touched and
    no figure leaks when called from worker threads. Waits for the warm-up (unless this is
    the warm-up)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    warming = _warm_up
    if warming is not None and warming is not threading.current_thread():
        warming.join()
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def write_png(image: xr.DataArray, path: str | os.PathLike, title: str | None = None) -> Path:
    """Preview with RA/Dec offset axes (east to the left) and a colourbar."""
    path = _prepare(path)
    if "frequency" in image.dims:  # a cube: preview its mean over the channels with data
        n_chan = image.sizes["frequency"]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
            data = np.nanmean(image.transpose("frequency", "y", "x").values, axis=0)
        title = f"{title or image.attrs.get('object', '')} (mean of {n_chan} channels)".strip()
    else:
        data = np.asarray(image.transpose("y", "x").values, dtype=float)
    ny, nx = data.shape
    cell = math.degrees(_required(image, "cell_rad")) * 3600.0
    ref_x, ref_y = image.attrs.get("reference_pixel", [nx // 2, ny // 2])
    unit, scale = _offset_unit(max(nx, ny) * cell / 2)
    shown, factor = binned_for_preview(data)
    used_y, used_x = (n * factor for n in shown.shape)
    # Pixel edges in offsets from the phase centre; RA offset grows to the left.
    extent = (
        (ref_x + 0.5) * cell / scale,
        -(used_x - 0.5 - ref_x) * cell / scale,
        -(ref_y + 0.5) * cell / scale,
        (used_y - 0.5 - ref_y) * cell / scale,
    )
    finite = data[np.isfinite(data)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig = new_figure((6.4, 5.6))
    ax = fig.add_subplot()
    im = ax.imshow(
        shown,
        origin="lower",
        extent=extent,
        cmap="inferno",
        vmin=vmin,
        vmax=vmax,
        aspect="equal",
    )
    ax.set_xlabel(f"RA offset ({unit})")
    ax.set_ylabel(f"Dec offset ({unit})")
    if title is None:
        obj = image.attrs.get("object", "")
        freq = image.attrs.get("reference_frequency_hz")
        ghz = f" {float(freq) / 1e9:.4g} GHz" if freq else ""
        title = f"{obj} Stokes {image.attrs.get('stokes', 'I')}{ghz}".strip()
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=str(image.attrs.get("bunit", "")))
    return save_png(fig, path)


PNG_COMPRESS_LEVEL = 1
"""zlib level of preview PNGs: at the default (6) encoding took 70 ms of a 2048 x 2048 image's
0.19 s preview; at 1, 30 ms, for a file 6 % larger."""


def save_png(fig: Any, path: Path) -> Path:
    """Write a figure of :func:`new_figure` as a PNG."""
    fig.savefig(path, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return path


PREVIEW_PIXELS = 512
"""The most pixels a preview draws along an axis: its axes are about 450 pixels wide."""


def binned_for_preview(data: np.ndarray, pixels: int = PREVIEW_PIXELS) -> tuple[np.ndarray, int]:
    """``data`` averaged over square bins of the smallest whole size that leaves at most
    ``pixels`` along each axis (NaN ignored; the last rows and columns that do not fill a
    bin are left out), and that size.

    matplotlib would smooth a larger image down to its axes anyway, but first resamples the
    whole of it: a 2048 x 2048 preview took 0.35 s to draw, most of it on pixels the figure
    cannot show. The colour scale stays that of the full image."""
    factor = min(math.ceil(max(data.shape) / pixels), *data.shape)
    if factor <= 1:
        return data, 1
    ny, nx = (n // factor for n in data.shape)
    bins = data[: ny * factor, : nx * factor].reshape(ny, factor, nx, factor)
    if np.isfinite(bins).all():
        return bins.mean(axis=(1, 3)), factor
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins stay NaN
        return np.nanmean(bins, axis=(1, 3)), factor


def png_thumbnail(path: str | os.PathLike, max_pixels: int = 320) -> bytes:
    """A PNG preview shrunk to fit ``max_pixels`` (tens of kB): small enough to embed where
    the file itself cannot be reached, such as a Prefect artifact viewed far from the data."""
    from PIL import Image

    with Image.open(path) as image:
        image.thumbnail((max_pixels, max_pixels))
        out = io.BytesIO()
        image.save(out, format="PNG")  # optimize=True: 3x the time for 2% fewer bytes
    return out.getvalue()


def write_zarr(image: xr.DataArray, path: str | os.PathLike) -> str:
    """Write ``image`` (data, coords, attrs) as a zarr store, replacing any existing one;
    ``path`` may be an ``s3://`` URL (zarr writes it through fsspec)."""
    name = image.name if isinstance(image.name, str) and image.name else "image"
    ds = image.to_dataset(name=name)
    ds.attrs = dict(image.attrs)
    return write_zarr_images(ds, path)


def write_zarr_images(images: xr.Dataset, path: str | os.PathLike) -> str:
    """Write the images of ``images`` as a zarr store, replacing any existing one, each
    compressed with blosc lz4 and byte shuffle: zarr's default (zstd) took 1.05 s for
    CLEAN's five 2048 x 2048 images, this 0.32 s, for a store 12 % larger."""
    from zarr.codecs import BloscCodec

    path = str(path) if "://" in str(path) else str(_prepare(path))
    codec = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    encoding = {name: {"compressors": (codec,)} for name in images.data_vars}
    images.to_zarr(path, mode="w", consolidated=False, encoding=encoding, write_empty_chunks=True)
    return path
