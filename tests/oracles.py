"""Test-only references: readable or convenience versions of what production computes in
batches or blocks, kept beside the tests that compare against them (never imported by
radps_flows)."""

from __future__ import annotations

import math

import numpy as np

from radps_flows.core.clean import search_window
from radps_flows.core.conventions import MSV4_UVW_SIGN
from radps_flows.core.cube import cube_sum_from_arrays
from radps_flows.core.imaging import dirty_sum_from_arrays


def dirty_image_from_arrays(
    uvw: np.ndarray,
    freq: np.ndarray,
    vis: np.ndarray,
    weight: np.ndarray,
    *,
    imsize: int,
    cell_rad: float,
    epsilon: float = 1e-4,
    uvw_sign: int,
    nthreads: int = 1,
) -> np.ndarray:
    """Natural-weighted dirty image ``[y, x]`` (FITS orientation) of visibilities in one
    piece: the gridding kernel every block runs, normalised. A 1 Jy source at ``(l, m)``
    (``l`` east) lands on pixel ``x = N/2 - l/cell``, ``y = N/2 + m/cell`` with value 1."""
    total = dirty_sum_from_arrays(
        uvw,
        freq,
        vis,
        weight,
        imsize=imsize,
        cell_rad=cell_rad,
        epsilon=epsilon,
        nthreads=nthreads,
        uvw_sign=uvw_sign,
    )
    if total.weight_sum <= 0:
        raise ValueError("no visibilities with positive weight to image")
    return total.image / total.weight_sum


def stefcal_reference(
    vis: np.ndarray, model: np.ndarray, *, max_iter: int = 200, tol: float = 1e-10
) -> np.ndarray:
    """Textbook StEFCal (Salvini & Wijnholds 2014, Algorithm 1) on dense matrices, plain numpy.

    ``vis`` and ``model`` (nant, nant), Hermitian, diagonal ignored, for one interval and
    receptor. Solves ``R ~ G M G^H`` column by column; the readable reference that
    the batched :func:`radps_flows.core.calibration.stefcal` and the benchmark compare against.
    """
    r = np.array(vis, dtype=np.complex128)
    m = np.array(model, dtype=np.complex128)
    np.fill_diagonal(r, 0)
    np.fill_diagonal(m, 0)
    n = r.shape[0]
    g = np.ones(n, dtype=np.complex128) * math.sqrt(np.abs(r).sum() / max(np.abs(m).sum(), 1e-300))
    for i in range(1, max_iter + 1):
        old = g.copy()
        for p in range(n):
            z = old * m[:, p]  # z_q = g_q M_qp; R[:, p] = z conj(g_p)
            zz = np.vdot(z, z).real
            g[p] = np.conj(np.vdot(z, r[:, p]) / zz) if zz > 0 else 0
        if i % 2 == 0:
            g = 0.5 * (g + old)
        if np.linalg.norm(g - old) <= tol * np.linalg.norm(g):
            break
    return g


def psf_image(
    uvw: np.ndarray,
    freq: np.ndarray,
    weight: np.ndarray,
    *,
    imsize: int,
    cell_rad: float,
    uvw_sign: int = MSV4_UVW_SIGN,
    epsilon: float = 1e-5,
    nthreads: int = 1,
) -> np.ndarray:
    """Point spread function ``[y, x]`` (peak 1 at pixel N/2) of samples with ``weight``:
    the dirty image of unit visibilities."""
    return dirty_image_from_arrays(
        uvw,
        freq,
        np.ones(np.shape(weight), dtype=np.complex128),
        weight,
        imsize=imsize,
        cell_rad=cell_rad,
        epsilon=epsilon,
        nthreads=nthreads,
        uvw_sign=uvw_sign,
    )


def dirty_cube(
    uvw: np.ndarray,
    freq: np.ndarray,
    vis: np.ndarray,
    weight: np.ndarray,
    *,
    imsize: int,
    cell_rad: float,
    uvw_sign: int = MSV4_UVW_SIGN,
    epsilon: float = 1e-4,
    nthreads: int = 1,
) -> np.ndarray:
    """Per-channel dirty images (nchan, y, x), each normalised by its own weight sum
    (channels with no weight are NaN), the ``specmode='cube'`` counterpart of the MFS image."""
    total = cube_sum_from_arrays(
        uvw,
        freq,
        vis,
        weight,
        imsize=imsize,
        cell_rad=cell_rad,
        epsilon=epsilon,
        nthreads=nthreads,
        uvw_sign=uvw_sign,
    )
    return total.normalised(np.float64)


def hogbom_reference(
    residual: np.ndarray,
    psf: np.ndarray,
    *,
    gain: float,
    threshold: float,
    niter: int,
    mask: np.ndarray | None = None,
    floor: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`radps_flows.core.clean.hogbom` written plainly in numpy, component by component
    (its compiled loop must give the same model, residual and count)."""
    res = np.array(residual, dtype=np.float32, copy=True)  # the compiled loop's precision
    psf = np.asarray(psf, dtype=np.float32)
    model = np.zeros(res.shape)
    search = None if mask is None else np.asarray(mask, dtype=bool)
    box = search_window(res, search, floor)  # the same window: the loop is what is checked
    if box is None:
        return model, res, 0
    window = res[box]
    allowed = None if search is None else search[box]
    top, left = box[0].start, box[1].start
    n_y, n_x = window.shape
    p_y, p_x = psf.shape
    cy, cx = p_y // 2, p_x // 2
    done = 0
    while done < niter:
        absres = np.abs(window)
        if allowed is not None:
            absres[~allowed] = -1.0
        k = int(np.argmax(absres))
        y0, x0 = divmod(k, n_x)
        peak = window[y0, x0]
        if absres[y0, x0] < 0 or abs(peak) < threshold:
            break
        step = np.float32(gain * float(peak))
        model[top + y0, left + x0] += step
        ya, yb = max(0, y0 - cy), min(n_y, y0 - cy + p_y)
        xa, xb = max(0, x0 - cx), min(n_x, x0 - cx + p_x)
        window[ya:yb, xa:xb] -= step * psf[ya - y0 + cy : yb - y0 + cy, xa - x0 + cx : xb - x0 + cx]
        done += 1
    return model, res, done
