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
    """Hogbom minor cycle: subtract ``gain * peak * PSF`` at the peak of ``|residual|`` until
    the peak is below ``threshold`` or ``niter`` components were taken.

    Components are looked for among the candidate pixels: those inside ``mask`` whose
    ``|residual|`` is at least ``floor`` to begin with (a window around the emission; a pixel
    that rises above the others only during the cycle is found by the next major cycle, which
    images the residual from the visibilities). The work per component is proportional to the
    candidates, not to the image: vectorised over them, with no Python loop over pixels.

    ``psf`` has its peak (1) at ``(shape[0] // 2, shape[1] // 2)``; where it is smaller than
    twice the image (as CASA's, the image's own size), a component reaches as far as the PSF.
    Returns the model increment (Jy/pixel), the residual (updated at the candidates; elsewhere
    as given) and the number of components.
    """
    res = np.array(residual, dtype=np.float64, copy=True)
    model = np.zeros_like(res)
    candidates = np.abs(res) >= floor
    if mask is not None:
        candidates &= np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(candidates)
    if ys.size == 0:
        return model, res, 0
    values = res[ys, xs]
    p_y, p_x = psf.shape
    cy, cx = p_y // 2, p_x // 2
    padded = np.zeros((p_y + 1, p_x + 1))  # index -1 (the last row/column) reads 0
    padded[:p_y, :p_x] = psf
    done = 0
    while done < niter:
        j = int(np.argmax(np.abs(values)))
        peak = values[j]
        if abs(peak) < threshold:
            break
        step = gain * peak
        model[ys[j], xs[j]] += step
        dy = ys - ys[j] + cy
        dx = xs - xs[j] + cx
        dy[(dy < 0) | (dy >= p_y)] = -1  # beyond the PSF: no change
        dx[(dx < 0) | (dx >= p_x)] = -1
        values -= step * padded[dy, dx]
        done += 1
    res[ys, xs] = values
    return model, res, done
