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
    psf2: np.ndarray,
    *,
    gain: float,
    threshold: float,
    niter: int,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Hogbom minor cycle: subtract ``gain * peak * PSF`` at the peak of ``|residual|`` (inside
    ``mask``) until the peak is below ``threshold`` or ``niter`` components were taken.

    ``psf2`` is ``(2N, 2N)`` with its peak (1) at ``(N, N)``. Returns the model increment
    (Jy/pixel), the new residual and the number of components.
    """
    res = np.array(residual, dtype=np.float64, copy=True)
    n_y, n_x = res.shape
    cy, cx = psf2.shape[0] // 2, psf2.shape[1] // 2
    model = np.zeros_like(res)
    search = None if mask is None else np.asarray(mask, dtype=bool)
    done = 0
    while done < niter:
        absres = np.abs(res) if search is None else np.where(search, np.abs(res), -1.0)
        k = int(np.argmax(absres))
        y0, x0 = divmod(k, n_x)
        peak = res[y0, x0]
        if abs(peak) < threshold or absres[y0, x0] < 0:
            break
        step = gain * peak
        model[y0, x0] += step
        res -= step * psf2[cy - y0 : cy - y0 + n_y, cx - x0 : cx - x0 + n_x]
        done += 1
    return model, res, done
