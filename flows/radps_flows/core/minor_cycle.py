"""Hogbom CLEAN's component loop, compiled with numba when this module is imported (by
:func:`radps_flows.core.clean.hogbom` on first use: numba's import and the compilation take
about 5 s, which only a process that CLEANs pays, while its first pass over the data runs;
the warm `radps server` pays it once).

Why compiled: each component subtracts the PSF from every pixel of the window it reaches (at
2048 x 2048 pixels with an image-sized PSF, up to 4 M pixels) and then needs the window's new
peak. Written with numpy that is seven passes over memory per component (a temporary for
the scaled PSF, the subtraction, the absolute values, the argmax over the whole window); here
it is one pass over the rows the PSF reaches, which also refreshes those rows' peaks, and an
argmax over one value per row.

Why float32 and threads: a component's cost is memory traffic (read the PSF, read and write
the window). The residual only serves to pick the components (the next major cycle images
the true residual from the visibilities), so single precision is enough and halves that
traffic; the rows are split over ``threads``. On the CASA benchmark's last cycle (757
components over the whole 2048 x 2048 image) each halves the time.

Threads come from numba's ``workqueue`` layer, chosen here because it is the one that is
fork-safe on Linux (the warm `radps server` compiles this and forks a process per run; GNU
OpenMP, numba's default where present, aborts a forked child). It is not thread-safe: two
threads launching at once abort the process, so calls are serialised by a lock.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

numba.config.THREADING_LAYER = "workqueue"  # before the first parallel compilation below
_LAUNCH = threading.Lock()


MAGNITUDE = np.uint32(0x7FFFFFFF)
"""The bits of a float32 but its sign: for finite values (the residual's), their order as
unsigned integers is the order of the magnitudes."""


@numba.njit(nogil=True, cache=False)
def _row_peak(bits: np.ndarray, allowed: np.ndarray, masked: bool) -> np.int64:
    """The bits of the largest |value| of a row (its float32 ``bits``) among its allowed
    pixels, -1 if none. In integers because the compiler vectorises an integer maximum, and
    not a float one (2.3 ms a 2048 x 2048 pass against 0.3 ms)."""
    best = np.uint32(0)
    if masked:
        seen = False
        for x in range(bits.shape[0]):
            if allowed[x]:
                best = max(best, bits[x] & MAGNITUDE)
                seen = True
        return np.int64(best) if seen else np.int64(-1)
    for x in range(bits.shape[0]):
        best = max(best, bits[x] & MAGNITUDE)
    return np.int64(best)


@numba.njit(
    # One signature, compiled on import: a window is C-contiguous (see components).
    "int64(float32[:, ::1], float64[:, ::1], float32[:, ::1], boolean[:, ::1], boolean, "
    "float64, float64, int64, int64, int64)",
    nogil=True,
    cache=False,
    parallel=True,
)
def _components(
    window: np.ndarray,
    model: np.ndarray,
    psf: np.ndarray,
    allowed: np.ndarray,
    masked: bool,
    gain: float,
    threshold: float,
    niter: int,
    top: int,
    left: int,
) -> int:
    n_y, n_x = window.shape
    p_y, p_x = psf.shape
    cy, cx = p_y // 2, p_x // 2
    bits = window.view(np.uint32)
    peaks = np.empty(n_y, dtype=np.int64)
    for y in numba.prange(n_y):
        peaks[y] = _row_peak(bits[y], allowed[y % allowed.shape[0]], masked)
    done = 0
    while done < niter:
        y0 = np.argmax(peaks)
        best = peaks[y0]
        if best < 0:
            break
        row, ok = bits[y0], allowed[y0 % allowed.shape[0]]
        x0 = 0
        for x in range(n_x):
            if (row[x] & MAGNITUDE) == best and (not masked or ok[x]):
                x0 = x
                break
        peak = window[y0, x0]
        if abs(peak) < threshold:
            break
        step = np.float32(gain * peak)
        model[top + y0, left + x0] += step
        # the window's rows/columns the shifted PSF covers, and where they are in the PSF
        ya, yb = max(0, y0 - cy), min(n_y, y0 - cy + p_y)
        xa, xb = max(0, x0 - cx), min(n_x, x0 - cx + p_x)
        shift = cx - x0
        for y in numba.prange(ya, yb):
            # Slices, and an index from 0: numba checks every index for a negative value to
            # wrap around, and one it cannot prove positive (x + shift) kept the loop from
            # being vectorised (3x the time).
            target = window[y, xa:xb]
            source = psf[y - y0 + cy, xa + shift : xb + shift]
            for i in range(target.shape[0]):
                target[i] -= step * source[i]
            peaks[y] = _row_peak(bits[y], allowed[y % allowed.shape[0]], masked)
        done += 1
    return done


def components(
    window: np.ndarray,
    model: np.ndarray,
    psf: np.ndarray,
    allowed: np.ndarray | None,
    *,
    gain: float,
    threshold: float,
    niter: int,
    top: int = 0,
    left: int = 0,
    threads: int = 1,
) -> int:
    """Take up to ``niter`` components from ``window`` (float32, updated in place; a view of
    the residual at ``top``, ``left``), adding them to ``model`` (float64, the whole image),
    until the peak of ``|window|`` among ``allowed`` pixels (all without a mask) is below
    ``threshold``. ``psf`` is float32. The first of equal peaks in row-major order is taken, as
    ``np.argmax``; each component is ``float32(gain * peak)``, subtracted in float32 (the
    arithmetic of ``tests.oracles.hogbom_reference``). Returns the number of components."""
    masked = allowed is not None
    if allowed is None:
        allowed = np.ones((1, 1), dtype=bool)
    # a copy where the window is a view: its rows contiguous, the loops vectorise
    work = window if window.flags.c_contiguous else np.ascontiguousarray(window)
    with _LAUNCH:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
        done = int(
            _components(
                work,
                model,
                psf,
                allowed,
                masked,
                float(gain),
                float(threshold),
                int(niter),
                int(top),
                int(left),
            )
        )
    if work is not window:
        window[...] = work
    return done
