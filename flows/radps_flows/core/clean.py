"""Hogbom CLEAN's minor cycle and what the major-cycle driver needs beside it.

The major cycles, through the visibilities and the same gridder as the dirty image, are
:func:`radps_flows.core.imager.clean_image`. Images are ``[y, x]`` in FITS orientation (see
:mod:`radps_flows.core.imaging`); the model is in Jy/pixel, the residual in Jy/beam.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "CleanSettings",
    "box_mask",
    "box_rms",
    "compile_minor_cycle_in_background",
    "cycle_epsilon",
    "hogbom",
    "intermediate_epsilon",
    "psf_sidelobe",
    "search_window",
]


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
    epsilon: float | None = None
    """Gridder accuracy of the major cycles; None: :func:`cycle_epsilon` of the dirty image
    (the first pass, PSF and dirty image, is at the grid's own accuracy either way)."""


def cycle_epsilon(peak: float, rms: float, first_pass: float) -> float:
    """The gridder accuracy CLEAN's major cycles need: ducc0's error is relative to the
    whole result, which the brightest emission dominates, so a tenth of the dirty image's
    rms over its peak keeps it a tenth of the noise; never coarser than the first pass,
    never finer than 1e-7. A dirty image of dynamic range 350 (the VLA set of the CASA
    benchmark) gets 1e-4, as its dirty image; one of 1e5, 1e-6."""
    if peak <= 0 or not np.isfinite(peak) or not np.isfinite(rms):
        return first_pass
    return float(min(first_pass, max(1e-7, 0.1 * rms / peak)))


INTERMEDIATE_EPSILON = 1e-2
"""The gridder accuracy of a major cycle whose residual only serves the next minor cycle.

ducc0's epsilon bounds the error of a whole result relative to its norm, and the error it
leaves in a residual image is far below that bound: on the CASA benchmark's VLA set (5.4 M
Stokes I samples, a 1.3 Jy model), the residual at 1e-2 differs from the one at 1e-4 by
5.7e-6 Jy/beam rms, 4 % of the thermal noise (1e-3: 1.3e-6), and a degrid plus grid takes
1.0-1.05 s to 1e-3's 1.2-1.36 s and 1e-4's 1.56-1.74 s. A minor cycle takes components above
its cycle threshold, many times the noise in every cycle but the last; the last cycle's
residual, the one CLEAN returns, is imaged at :func:`cycle_epsilon`."""


def intermediate_epsilon(last: float) -> float:
    """The accuracy of a major cycle before the last: :data:`INTERMEDIATE_EPSILON`, or the
    last cycle's ``last`` where that is rougher."""
    return max(last, INTERMEDIATE_EPSILON)


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
    threads: int = 1,
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
    Returns the model increment (Jy/pixel, float64), the residual (float32, updated inside
    the window) and the number of components. The loop itself is compiled, in single
    precision, its rows split over ``threads`` (:mod:`radps_flows.core.minor_cycle`);
    ``tests.oracles.hogbom_reference`` is the same loop in numpy.
    """
    from radps_flows.core import minor_cycle  # numba: only a process that CLEANs needs it

    res = np.array(residual, dtype=np.float32, copy=True)
    model = np.zeros(res.shape)
    search = None if mask is None else np.asarray(mask, dtype=bool)
    box = search_window(res, search, floor)
    if box is None:
        return model, res, 0
    rows, cols = box
    window = res[rows, cols]  # a view: res is updated in place
    done = minor_cycle.components(
        window,
        model,
        np.ascontiguousarray(psf, dtype=np.float32),
        None if search is None else np.ascontiguousarray(search[box]),
        gain=gain,
        threshold=threshold,
        niter=niter,
        top=rows.start,
        left=cols.start,
        threads=threads,
    )
    return model, res, done


def compile_minor_cycle_in_background() -> None:
    """Start compiling the minor cycle's loop in a thread (numba, about 4 s the first time in
    a process), so that it overlaps the first pass over the data, which runs in the gridder
    without the GIL, instead of following it. A warm `radps server` compiled it already."""
    name = "radps_flows.core.minor_cycle"
    if name not in sys.modules:
        threading.Thread(
            target=importlib.import_module, args=(name,), name="radps-compile", daemon=True
        ).start()


def search_window(
    residual: np.ndarray, mask: np.ndarray | None, floor: float
) -> tuple[slice, slice] | None:
    """The rows and columns of the smallest box holding every pixel (inside ``mask``) whose
    ``|residual|`` is at least ``floor``: where :func:`hogbom` works; None if none is."""
    inside = np.abs(residual) >= floor
    if mask is not None:
        inside &= mask
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
