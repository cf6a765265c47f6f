"""Restoring beam: an elliptical Gaussian fitted to the PSF main lobe, and restoring with it.

Convention (CASA's, FITS BMAJ/BMIN/BPA): FWHM major and minor axes, position angle of the
major axis measured from north through east. Our images are ``[y, x]`` with ``y`` north and
``x`` west (RA decreasing), so east is ``-x``.

The fit follows tclean's default (``psfcutoff=0.35``): only the connected main-lobe pixels
above 35% of the peak enter a least-squares fit of a unit-peak Gaussian centred on the peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import ndimage

__all__ = [
    "BEAM_KEYS",
    "Beam",
    "convolve_same",
    "fit_beam",
    "gaussian_image",
    "image_beams",
    "restore",
]

BEAM_KEYS = ("beam_major_arcsec", "beam_minor_arcsec", "beam_pa_deg")
"""Where an image carries its beam: attributes of an MFS image, coordinates along the
frequency axis of a cube (one beam per channel, NaN where a channel has no data)."""

_FWHM_TO_SIGMA = 1.0 / math.sqrt(8 * math.log(2))
ARCSEC = math.pi / (180 * 3600)


@dataclass(frozen=True)
class Beam:
    """Elliptical Gaussian restoring beam: FWHM in arcsec, position angle in degrees east of
    north, in (-90, 90]."""

    major_arcsec: float
    minor_arcsec: float
    pa_deg: float

    def attrs(self) -> dict[str, float]:
        """Image attributes (also what a FITS writer turns into BMAJ/BMIN/BPA in degrees)."""
        return dict(
            zip(BEAM_KEYS, (self.major_arcsec, self.minor_arcsec, self.pa_deg), strict=True)
        )

    @property
    def area_pixels(self) -> float:
        """Integral of the unit-peak beam, in pixels of size 1 arcsec (scale by cell^2)."""
        return math.pi * self.major_arcsec * self.minor_arcsec / (4 * math.log(2))


def image_beams(image: xr.DataArray) -> np.ndarray | None:
    """The beam of each plane of ``image`` as rows (major, minor arcsec, PA deg): one per
    channel of a cube (NaN where a channel has none), one for an MFS image; None for an image
    without a beam (a CLEAN model in Jy/pixel)."""
    if BEAM_KEYS[0] in image.coords:
        return np.stack([np.asarray(image[k].values, dtype=np.float64) for k in BEAM_KEYS], -1)
    if BEAM_KEYS[0] in image.attrs:
        return np.asarray([[float(image.attrs[k]) for k in BEAM_KEYS]])
    return None


def gaussian_image(
    shape: tuple[int, int], beam: Beam, cell_arcsec: float, centre: tuple[float, float]
) -> np.ndarray:
    """Unit-peak elliptical Gaussian ``[y, x]`` centred on pixel ``centre`` = (y, x)."""
    y, x = np.indices(shape, dtype=np.float64)
    return _gauss(
        (y - centre[0]) * cell_arcsec,
        -(x - centre[1]) * cell_arcsec,
        beam.major_arcsec,
        beam.minor_arcsec,
        math.radians(beam.pa_deg),
    )


def _gauss(north, east, fmaj, fmin, pa):
    s, c = math.sin(pa), math.cos(pa)
    along = east * s + north * c  # along the major axis (PA from north through east)
    across = east * c - north * s
    return np.exp(-4 * math.log(2) * ((along / fmaj) ** 2 + (across / fmin) ** 2))


def fit_beam(psf: np.ndarray, cell_arcsec: float, cutoff: float = 0.35) -> Beam:
    """Fit the main lobe of ``psf`` ``[y, x]`` (peak normalised to 1 here)."""
    psf = np.asarray(psf, dtype=np.float64)
    peak = np.unravel_index(np.argmax(psf), psf.shape)
    norm = psf / psf[peak]
    labels, _ = ndimage.label(norm >= cutoff)
    lobe = labels == labels[peak]
    ys, xs = np.nonzero(lobe)
    north = (ys - peak[0]) * cell_arcsec
    east = -(xs - peak[1]) * cell_arcsec
    values = norm[ys, xs]
    # starting point from second moments of the lobe
    w = values
    cov = np.cov(np.stack([east, north]), aweights=w) if len(w) > 2 else np.eye(2)
    evals, evecs = np.linalg.eigh(cov)
    major_vec = evecs[:, 1]
    pa0 = math.atan2(major_vec[0], major_vec[1])  # east, north -> from north through east
    scale = 2.0  # moments of a truncated Gaussian underestimate its width
    f0 = [
        max(math.sqrt(max(evals[1], 1e-12)) * scale / _FWHM_TO_SIGMA / 2, cell_arcsec),
        max(math.sqrt(max(evals[0], 1e-12)) * scale / _FWHM_TO_SIGMA / 2, cell_arcsec),
        pa0,
    ]

    def residual(p):
        return _gauss(north, east, p[0], p[1], p[2]) - values

    from scipy import optimize  # here: with scipy.signal, 0.5-0.9 s of every process's start

    fit = optimize.least_squares(residual, f0, x_scale=[cell_arcsec, cell_arcsec, 0.1])
    fmaj, fmin, pa = (float(v) for v in fit.x)
    fmaj, fmin = abs(fmaj), abs(fmin)
    if fmin > fmaj:
        fmaj, fmin, pa = fmin, fmaj, pa + math.pi / 2
    pa_deg = math.degrees(pa) % 180.0
    if pa_deg > 90.0:
        pa_deg -= 180.0
    return Beam(fmaj, fmin, pa_deg)


def restore(model: np.ndarray, residual: np.ndarray, beam: Beam, cell_arcsec: float) -> np.ndarray:
    """``model`` (Jy/pixel) convolved with the unit-peak beam (-> Jy/beam) plus ``residual``."""
    half = math.ceil(3 * beam.major_arcsec / cell_arcsec) + 1
    size = 2 * half + 1
    kernel = gaussian_image((size, size), beam, cell_arcsec, (half, half))
    if np.count_nonzero(model) * kernel.size <= DIRECT_CONVOLUTION_PIXELS_PER_PIXEL * model.size:
        return add_stamps(model, kernel, residual.copy())
    return convolve_same(model, kernel) + residual


DIRECT_CONVOLUTION_PIXELS_PER_PIXEL = 1
"""Convolve by adding a kernel stamp per model pixel where the stamps cover at most this many
pixels per image pixel; else through FFTs. A Hogbom model is sparse: 1000 components on ~800
pixels of a 2048 x 2048 image, as in the CASA benchmark, with its 33 x 33 beam, take 25 ms as
stamps and 0.15-0.16 s through the FFTs (results 1e-13 apart)."""


def add_stamps(model: np.ndarray, kernel: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out`` plus ``model`` convolved with the odd-sized, centred ``kernel`` (as
    :func:`convolve_same`), one stamp per non-zero pixel of ``model``, cut at the edges."""
    ky, kx = (k // 2 for k in kernel.shape)
    ny, nx = model.shape
    for y, x in zip(*np.nonzero(model), strict=True):
        y0, y1 = max(0, y - ky), min(ny, y + ky + 1)
        x0, x1 = max(0, x - kx), min(nx, x + kx + 1)
        stamp = kernel[y0 - (y - ky) : y1 - (y - ky), x0 - (x - kx) : x1 - (x - kx)]
        out[y0:y1, x0:x1] += model[y, x] * stamp
    return out


def convolve_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``image`` convolved with the odd-sized, centred ``kernel``, the size of ``image`` (as
    ``scipy.signal.fftconvolve(image, kernel, mode="same")``, through scipy.fft: importing
    scipy.signal takes 1.2 s, it brings scipy.stats and pandas, twice this convolution)."""
    from scipy import fft

    full = [n + k - 1 for n, k in zip(image.shape, kernel.shape, strict=True)]
    fast = [fft.next_fast_len(n, real=True) for n in full]
    product = fft.rfft2(image, fast) * fft.rfft2(kernel, fast)
    out = fft.irfft2(product, fast)
    y0, x0 = ((k - 1) // 2 for k in kernel.shape)
    return out[y0 : y0 + image.shape[0], x0 : x0 + image.shape[1]]
