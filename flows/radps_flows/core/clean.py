"""Hogbom CLEAN's minor cycle and what the major-cycle driver needs beside it.

The major cycles, through the visibilities and the same gridder as the dirty image, are
:func:`radps_flows.core.imager.clean_image`. Images are ``[y, x]`` in FITS orientation (see
:mod:`radps_flows.core.imaging`); the model is in Jy/pixel, the residual in Jy/beam.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["CleanSettings", "box_mask", "box_rms", "hogbom", "psf_sidelobe"]


@dataclass(frozen=True)
class CleanSettings:
    """What steers CLEAN, as the imaging pipeline's parameters of the same names (``gain`` is
    its ``clean_gain``, ``visibilities`` its ``clean_visibilities``).

    Boxes are ``[x0, y0, x1, y1]`` in pixels, inclusive, as CASA's. CLEAN stops at
    ``max(threshold_jy, threshold_rms * rms)`` on the residual peak (Jy/beam), the rms
    measured in ``rms_box`` (default: a robust estimate over the whole dirty image)."""

    niter: int = 1000
    gain: float = 0.1
    threshold_jy: float = 0.0
    threshold_rms: float = 0.0
    rms_box: Sequence[int] | None = None
    mask: Sequence[Sequence[int]] | None = None
    cyclefactor: float = 1.0
    max_major: int = 50
    weighting: str = "natural"
    robust: float = 0.5
    visibilities: str = "auto"
    """Between major cycles: keep the Stokes I samples, reread the blocks, or auto."""


def box_rms(image: np.ndarray, box: Sequence[int] | None) -> float:
    """rms in a CASA-style box [x0, y0, x1, y1] (inclusive), else a robust estimate over the
    whole image (1.4826 x median absolute deviation)."""
    if box:
        x0, y0, x1, y1 = box
        region = image[y0 : y1 + 1, x0 : x1 + 1]
        return float(np.sqrt(np.mean(region**2)))
    return float(1.4826 * np.median(np.abs(image - np.median(image))))


def box_mask(boxes: Sequence[Sequence[int]] | None, imsize: int) -> np.ndarray | None:
    """The ``[y, x]`` mask of the union of ``boxes``, or None (CLEAN anywhere) without any."""
    if not boxes:
        return None
    mask = np.zeros((imsize, imsize), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def psf_sidelobe(psf: np.ndarray) -> float:
    """Largest |PSF| outside the main lobe (the connected region around the peak above 0)."""
    peak = np.unravel_index(np.argmax(psf), psf.shape)
    labels, _ = ndimage.label(psf > 0)
    outside = labels != labels[peak]
    return float(np.abs(psf[outside]).max()) if outside.any() else 0.0


def hogbom(
    residual: np.ndarray,
    psf: np.ndarray,
    *,
    gain: float,
    threshold: float,
    niter: int,
    mask: np.ndarray | None = None,
    floor: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Hogbom minor cycle: subtract ``gain * peak * PSF`` at the peak of ``|residual|`` (inside
    ``mask``) until the peak is below ``threshold`` or ``niter`` components were taken.

    The cycle works in a window around the emission: the smallest box holding every pixel
    (inside ``mask``) whose ``|residual|`` is at least ``floor`` to begin with. Components are
    looked for, and the PSF subtracted, inside it only, so a component costs the window's
    area, not the image's (a pixel outside that would rise above the others during the cycle
    is found by the next major cycle, which images the residual from the visibilities).

    ``psf`` has its peak (1) at ``(shape[0] // 2, shape[1] // 2)``; where it is smaller than
    twice the image (as CASA's, the image's own size), a component reaches as far as the PSF.
    Returns the model increment (Jy/pixel), the residual (updated inside the window) and the
    number of components.
    """
    res = np.array(residual, dtype=np.float64, copy=True)
    model = np.zeros_like(res)
    search = None if mask is None else np.asarray(mask, dtype=bool)
    inside = np.abs(res) >= floor
    if search is not None:
        inside &= search
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return model, res, 0
    top, left = int(rows[0]), int(cols[0])
    window = res[top : rows[-1] + 1, left : cols[-1] + 1]  # a view: res is updated in place
    allowed = None if search is None else search[top : rows[-1] + 1, left : cols[-1] + 1]
    n_y, n_x = window.shape
    p_y, p_x = psf.shape
    cy, cx = p_y // 2, p_x // 2
    absres = np.abs(window)
    if allowed is not None:
        absres[~allowed] = -1.0
    done = 0
    while done < niter:
        k = int(np.argmax(absres))
        y0, x0 = divmod(k, n_x)
        peak = window[y0, x0]
        if absres[y0, x0] < 0 or abs(peak) < threshold:
            break
        step = gain * peak
        model[top + y0, left + x0] += step
        # the window's rows/columns the shifted PSF covers, and where they are in the PSF
        ya, yb = max(0, y0 - cy), min(n_y, y0 - cy + p_y)
        xa, xb = max(0, x0 - cx), min(n_x, x0 - cx + p_x)
        part = window[ya:yb, xa:xb]
        part -= step * psf[ya - y0 + cy : yb - y0 + cy, xa - x0 + cx : xb - x0 + cx]
        np.abs(part, out=absres[ya:yb, xa:xb])
        if allowed is not None:
            absres[ya:yb, xa:xb][~allowed[ya:yb, xa:xb]] = -1.0
        done += 1
    return model, res, done
