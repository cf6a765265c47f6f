"""Previews astronomers read: images on RA/Dec axes, gain solutions per antenna.

Pure plotting (numpy/xarray in, PNG out) on matplotlib's object API (:func:`new_figure`), so
worker threads can draw without touching a global backend.

An image preview (:func:`write_png`) is drawn with astropy's WCSAxes on the image's own FITS
WCS (:func:`radps_flows.core.products.fits_header`): sexagesimal RA/Dec, east to the left. A
radio image is mostly noise around a few bright sources, so a linear scale shows only the
peak; the preview uses an asinh stretch between a low percentile and the peak, which shows
the noise, sidelobes and faint sources around it. The colour bar is in the image's unit; the
restoring beam is drawn as an ellipse in the lower left corner.
"""

from __future__ import annotations

import io
import math
import os
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .beam import image_beams
from .products import fits_header

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


STRETCH_LOW_PERCENTILE = 0.5
"""The colour scale starts at this percentile of the pixels (the deepest negative sidelobes
and noise spikes below it are clipped) and ends at the peak."""
ASINH_SOFTENING = 0.02
"""astropy's AsinhStretch ``a``: the fraction of the range that stays about linear; below a
twentieth of the peak the scale turns logarithmic-like, so the noise shows."""


def write_png(image: xr.DataArray, path: str | os.PathLike, kind: str = "image") -> Path:
    """A preview of ``image`` (``(y, x)``, or a cube ``(frequency, y, x)``: the mean of its
    channels with data), titled with the object, frequency and ``kind`` (``dirty image``,
    ``restored``, ...)."""
    from astropy.visualization import AsinhStretch, ImageNormalize, ManualInterval
    from astropy.wcs import WCS

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "frequency" in image.dims:
        n_chan = image.sizes["frequency"]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
            data = np.nanmean(image.transpose("frequency", "y", "x").values, axis=0)
        kind = f"{kind}, mean of {n_chan} channels"
    else:
        data = np.asarray(image.transpose("y", "x").values, dtype=float)
    shown, factor = binned_for_preview(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a header without DATE-OBS or OBSGEO is fine here
        wcs = WCS(fits_header(image)).celestial
    if factor > 1:
        wcs = wcs[::factor, ::factor]
    finite = data[np.isfinite(data)]
    low, high = (
        (float(np.percentile(finite, STRETCH_LOW_PERCENTILE)), float(finite.max()))
        if finite.size
        else (0.0, 1.0)
    )
    norm = ImageNormalize(
        interval=ManualInterval(low, high if high > low else low + 1.0),
        stretch=AsinhStretch(ASINH_SOFTENING),
    )
    fig = new_figure((6.4, 5.6))
    # A fixed layout: matplotlib's constrained layout took 0.15 of the 0.3 s of a preview.
    fig.subplots_adjust(left=0.18, right=0.95, bottom=0.08, top=0.92)
    ax = fig.add_subplot(projection=wcs)
    im = ax.imshow(shown, origin="lower", cmap="inferno", norm=norm, interpolation="nearest")
    ra, dec = ax.coords[0], ax.coords[1]
    ra.set_axislabel("Right ascension")
    dec.set_axislabel("Declination")
    ra.set_major_formatter("hh:mm:ss.s")
    dec.set_major_formatter("dd:mm:ss")
    ax.coords.grid(color="white", alpha=0.25, linestyle=":")
    _draw_beam(ax, image, factor)
    ax.set_title(preview_title(image, kind), fontsize=10)
    fig.colorbar(im, ax=ax, label=str(image.attrs.get("bunit", "")), shrink=0.85, pad=0.03)
    return save_png(fig, path)


def preview_title(image: xr.DataArray, kind: str) -> str:
    """Two lines: the object and what the image is; the frequency and Stokes."""
    obj = str(image.attrs.get("object") or "").strip()
    freq = image.attrs.get("reference_frequency_hz")
    second = f"Stokes {image.attrs.get('stokes', 'I')}"
    if freq:
        second = f"{float(freq) / 1e9:.4f} GHz, {second}"
    return f"{obj}: {kind}\n{second}" if obj else f"{kind}\n{second}"


def beam_of(image: xr.DataArray) -> tuple[float, float, float] | None:
    """The image's restoring beam (major, minor arcsec, PA deg); for a cube, the beam of the
    middle one of its channels that have one. None for an image without one (a CLEAN model
    in Jy/pixel)."""
    beams = image_beams(image)
    if beams is None:
        return None
    good = np.flatnonzero(np.isfinite(beams[:, 0]))
    if not good.size:
        return None
    major, minor, pa = (float(v) for v in beams[good[good.size // 2]])
    return (major, minor, pa)


def _draw_beam(ax: Any, image: xr.DataArray, factor: int) -> None:
    from matplotlib.patches import Ellipse

    beam = beam_of(image)
    if beam is None:
        return
    major, minor, pa = beam
    cell = math.degrees(float(image.attrs["cell_rad"])) * 3600 * factor
    # x grows to the west: a PA (east of north) of 0 is along +y, of 90 deg along -x.
    width, height = major / cell, minor / cell
    pad = max(width, height) / 2 + 4
    ax.add_patch(
        Ellipse(
            (pad, pad),
            width,
            height,
            angle=90.0 + pa,
            facecolor="none",
            edgecolor="white",
            linewidth=1.2,
            transform=ax.get_transform("pixel"),
        )
    )


GAIN_COLUMNS = 6


def plot_gains(tables: Mapping[str, xr.Dataset], path: str | os.PathLike) -> Path:
    """One panel per antenna: gain amplitude (filled, left axis) and phase (open, right axis,
    degrees) against time, one colour per receptor, the reference antenna marked. Each panel's
    title gives each receptor's circular phase rms (see
    :func:`radps_flows.core.calibration.circular_phase_rms_deg`)."""
    from matplotlib.lines import Line2D

    from .calibration import circular_phase_rms_deg

    panels = [(name, ds, a) for name, ds in tables.items() for a in range(ds.sizes["antenna_name"])]
    columns = min(GAIN_COLUMNS, max(1, len(panels)))
    rows = math.ceil(len(panels) / columns)
    height = 1.9 * rows + 0.8
    fig = new_figure((2.3 * columns, height))
    # A fixed layout: matplotlib's constrained layout took 3 of the 4 s of 18 antennas.
    fig.subplots_adjust(
        left=0.05, right=0.95, bottom=0.45 / height, top=1 - 0.75 / height, wspace=0.55, hspace=0.6
    )
    axes = np.atleast_1d(fig.subplots(rows, columns, sharex=True, squeeze=False)).ravel()
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    receptors: list[str] = []
    for ax, (name, ds, a) in zip(axes, panels, strict=False):
        t = np.asarray(ds["time"].values, dtype=float)
        t = (t - t.min()) / 60.0
        gain = np.where(ds["FLAG"].values, np.nan, ds["GAIN"].values)[:, 0, a, :]
        antenna = str(ds["antenna_name"].values[a])
        phase_ax = ax.twinx()
        for r, receptor in enumerate(ds["receptor"].values):
            colour = colours[r % len(colours)]
            ax.plot(t, np.abs(gain[:, r]), "o", ms=2.5, color=colour)
            phase_ax.plot(t, np.degrees(np.angle(gain[:, r])), "o", ms=3, mfc="none", color=colour)
            if str(receptor) not in receptors:
                receptors.append(str(receptor))
        phase_ax.set_ylim(-180, 180)
        phase_ax.set_yticks([-180, 0, 180])
        phase_ax.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
        scatter = []
        for r, receptor in enumerate(ds["receptor"].values):
            rms = circular_phase_rms_deg(gain[:, r])
            scatter.append(f"{receptor} {rms:.1f}°" if rms is not None else f"{receptor} -")
        reference = antenna == str(ds.attrs.get("refant", ""))
        label = f"{antenna}{' (ref)' if reference else ''}"
        if len(tables) > 1:
            label = f"{name}: {label}"
        rms_text = "phase rms " + ", ".join(scatter)
        # as a text above the panel, not a title: placing 2 titles per panel (the phase
        # axis has its own) against their tick labels took 0.9 of 1.4 s for 27 antennas
        ax.text(
            0.5,
            1.04,
            f"{label}\n{rms_text}",
            transform=ax.transAxes,
            ha="center",
            va="bottom",
            fontsize=8,
            fontweight="bold" if reference else None,
        )
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * columns :]:
        ax.set_xlabel("minutes", fontsize=7)
    handles = [
        Line2D([], [], ls="", marker="o", color=colours[i % len(colours)], label=f"{rec} |g|")
        for i, rec in enumerate(receptors)
    ] + [
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            mfc="none",
            color=colours[i % len(colours)],
            label=f"{rec} phase (deg, right axis)",
        )
        for i, rec in enumerate(receptors)
    ]
    fig.legend(handles=handles, loc="upper center", ncols=len(handles), fontsize=8, frameon=False)
    return save_png(fig, Path(path))
