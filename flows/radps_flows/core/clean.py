"""Hogbom CLEAN with major and minor cycles, through the same ducc0 gridder as the dirty image.

Major cycle: residual visibilities ``V - predict(model)`` are imaged with
:func:`radps_flows.core.imaging.dirty_sum_from_arrays` (same flips, w-gridding, weights) and
the model is predicted with :func:`radps_flows.core.calibration.image_model_visibilities`
(ducc0 ``dirty2vis``, its adjoint), so model and residual always agree with the visibilities
instead of accumulating PSF-subtraction errors. Minor cycle: Hogbom on the residual image with
a PSF of twice the image size (any shift stays inside it), stopping at the cycle threshold
``max(threshold, min(0.8, max(0.05, cyclefactor * psf_sidelobe)) * peak)`` as tclean does.

Images are ``[y, x]`` in FITS orientation (see :mod:`radps_flows.core.imaging`); the model is
in Jy/pixel, the residual and restored images in Jy/beam.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from scipy import ndimage

from .beam import Beam, fit_beam, restore
from .calibration import image_model_visibilities
from .conventions import MSV4_UVW_SIGN
from .imaging import dirty_sum_from_arrays, make_dirty_image, stokes_i
from .io import data_variable_names

__all__ = [
    "CleanResult",
    "StokesIVisibilities",
    "clean_visibilities",
    "gather_stokes_i",
    "hogbom",
    "make_clean_image",
    "psf_sidelobe",
]


@dataclass
class StokesIVisibilities:
    """Stokes I samples ready for imaging: ``uvw`` (nrow, 3) m, ``freq`` (nchan,) Hz,
    ``vis`` and ``weight`` (nrow, nchan) (weight 0 = not imaged), ``uvw_sign`` as in
    :func:`radps_flows.core.imaging.dirty_sum_from_arrays`."""

    uvw: np.ndarray
    freq: np.ndarray
    vis: np.ndarray
    weight: np.ndarray
    uvw_sign: int = MSV4_UVW_SIGN


@dataclass
class CleanResult:
    """Images ``[y, x]``: ``model`` (Jy/pixel), ``residual`` and ``restored`` (Jy/beam),
    ``psf`` (image size, peak 1); the fitted ``beam``; iterations and major cycles done."""

    model: np.ndarray
    residual: np.ndarray
    restored: np.ndarray
    psf: np.ndarray
    beam: Beam
    iterations: int
    major_cycles: int
    peak_residual: float
    history: list[dict] = field(default_factory=list)


def gather_stokes_i(ds: xr.Dataset, data_group: str = "base") -> StokesIVisibilities:
    """Stokes I visibilities of one MSv4 dataset (in memory), the way the imager forms them:
    parallel hands combined with their weights, flagged/NaN samples and autocorrelations
    weighted 0."""
    names = data_variable_names(ds, data_group)
    vname = names["vis"]
    fname = names["flag"]
    wname = names["weight"]
    uname = names["uvw"]
    order = ("time", "baseline_id", "frequency", "polarization")
    vis = ds[vname].transpose(*order).values
    flag = ds[fname].transpose(*order).values if fname in ds else None
    weight = ds[wname].values if wname in ds else None
    if weight is not None and weight.ndim == 2:
        weight = np.broadcast_to(weight[:, :, None, None], vis.shape)
    elif weight is not None:
        weight = ds[wname].transpose(*order).values
    vis_i, w_i = stokes_i(vis, flag, weight, [str(p) for p in ds["polarization"].values])
    if "baseline_antenna1_name" in ds.coords:
        auto = np.asarray(
            ds["baseline_antenna1_name"].values == ds["baseline_antenna2_name"].values
        )
        w_i[:, auto, :] = 0
    uvw = ds[uname].transpose("time", "baseline_id", "uvw_label").values
    nt, nb, nf = vis_i.shape
    uvw = uvw.reshape(nt * nb, 3)
    w_i = w_i.reshape(nt * nb, nf)
    w_i[~np.isfinite(uvw).all(axis=1)] = 0
    return StokesIVisibilities(
        uvw=np.where(np.isfinite(uvw), uvw, 0.0),
        freq=np.asarray(ds["frequency"].values, dtype=np.float64),
        vis=vis_i.reshape(nt * nb, nf),
        weight=w_i,
    )


def _dirty(
    v: StokesIVisibilities, vis: np.ndarray, imsize: int, cell_rad: float, eps: float, nthreads: int
) -> np.ndarray:
    total = dirty_sum_from_arrays(
        v.uvw,
        v.freq,
        vis,
        v.weight,
        imsize=imsize,
        cell_rad=cell_rad,
        epsilon=eps,
        nthreads=nthreads,
        uvw_sign=v.uvw_sign,
    )
    if total.weight_sum <= 0:
        raise ValueError("no visibilities with positive weight to image")
    return total.image / total.weight_sum


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


def clean_visibilities(
    v: StokesIVisibilities,
    *,
    imsize: int,
    cell_rad: float,
    niter: int = 1000,
    gain: float = 0.1,
    threshold: float = 0.0,
    mask: np.ndarray | None = None,
    cyclefactor: float = 1.0,
    max_major: int = 50,
    epsilon: float = 1e-6,
    nthreads: int = 1,
) -> CleanResult:
    """Hogbom CLEAN of Stokes I visibilities (see the module docstring).

    ``threshold`` in Jy/beam on the residual peak; ``mask`` ``[y, x]`` bool restricts where
    components go. ``epsilon`` is the gridder accuracy of both directions (the residual is a
    difference of nearly equal numbers, so tighter than for a dirty image).
    """
    cell_arcsec = math.degrees(cell_rad) * 3600
    vis = np.asarray(v.vis, dtype=np.complex128)
    ones = np.ones_like(vis)
    psf2 = _dirty(v, ones, 2 * imsize, cell_rad, epsilon, nthreads)
    q = imsize // 2
    psf = psf2[q : q + imsize, q : q + imsize]
    beam = fit_beam(psf, cell_arcsec)
    sidelobe = psf_sidelobe(psf)
    model = np.zeros((imsize, imsize))
    residual = _dirty(v, vis, imsize, cell_rad, epsilon, nthreads)
    done, cycles, history = 0, 0, []
    while done < niter and cycles < max_major:
        region = residual if mask is None else np.where(mask, residual, 0)
        peak = float(np.abs(region).max())
        if peak < threshold:
            break
        frac = min(0.8, max(0.05, cyclefactor * sidelobe))
        cycle_threshold = max(threshold, frac * peak)
        delta, _, n = hogbom(
            residual, psf2, gain=gain, threshold=cycle_threshold, niter=niter - done, mask=mask
        )
        if n == 0:
            break
        done += n
        model += delta
        predicted = image_model_visibilities(
            model,
            v.uvw,
            v.freq,
            cell_rad=cell_rad,
            uvw_sign=v.uvw_sign,
            epsilon=epsilon,
            nthreads=nthreads,
        )
        residual = _dirty(v, vis - predicted, imsize, cell_rad, epsilon, nthreads)
        cycles += 1
        history.append({"cycle": cycles, "components": n, "cycle_threshold": cycle_threshold})
    region = residual if mask is None else np.where(mask, residual, 0)
    return CleanResult(
        model=model,
        residual=residual,
        restored=restore(model, residual, beam, cell_arcsec),
        psf=psf,
        beam=beam,
        iterations=done,
        major_cycles=cycles,
        peak_residual=float(np.abs(region).max()),
        history=history,
    )


def make_clean_image(
    datasets: Sequence[xr.Dataset],
    *,
    imsize: int,
    cell_arcsec: float,
    niter: int = 1000,
    gain: float = 0.1,
    threshold: float = 0.0,
    mask: np.ndarray | None = None,
    cyclefactor: float = 1.0,
    data_group: str = "base",
    epsilon: float = 1e-6,
    nthreads: int = 1,
) -> xr.Dataset:
    """Natural-weighted Stokes I MFS CLEAN of MSv4 datasets sharing a phase centre.

    Returns a Dataset of ``(y, x)`` images ``model``, ``residual``, ``restored``, ``psf`` with
    the attributes :func:`radps_flows.core.imaging.make_dirty_image` gives its image plus the
    beam (``beam_major_arcsec``, ``beam_minor_arcsec``, ``beam_pa_deg``) and
    ``clean_iterations``, ``clean_major_cycles``, ``clean_threshold``, ``clean_gain``.
    """
    dirty = make_dirty_image(
        datasets, imsize=imsize, cell_arcsec=cell_arcsec, data_group=data_group, epsilon=1e-4
    )
    parts = [gather_stokes_i(ds, data_group) for ds in datasets]
    v = StokesIVisibilities(
        uvw=np.concatenate([p.uvw for p in parts]),
        freq=parts[0].freq,
        vis=np.concatenate([p.vis for p in parts]),
        weight=np.concatenate([p.weight for p in parts]),
    )
    if any(p.freq.shape != v.freq.shape or not np.allclose(p.freq, v.freq) for p in parts):
        raise ValueError("make_clean_image needs the same channels in every dataset")
    result = clean_visibilities(
        v,
        imsize=imsize,
        cell_rad=math.radians(cell_arcsec / 3600),
        niter=niter,
        gain=gain,
        threshold=threshold,
        mask=mask,
        cyclefactor=cyclefactor,
        epsilon=epsilon,
        nthreads=nthreads,
    )
    attrs = {
        **dirty.attrs,
        **result.beam.attrs(),
        "clean_iterations": result.iterations,
        "clean_major_cycles": result.major_cycles,
        "clean_threshold": float(threshold),
        "clean_gain": float(gain),
        "deconvolver": "hogbom",
    }
    coords = dirty.coords

    def da(values: np.ndarray, name: str, bunit: str) -> xr.DataArray:
        return xr.DataArray(
            values, dims=("y", "x"), coords=coords, name=name, attrs={**attrs, "bunit": bunit}
        )

    return xr.Dataset(
        {
            "model": da(result.model, "model", "Jy/pixel"),
            "residual": da(result.residual, "residual", "Jy/beam"),
            "restored": da(result.restored, "restored", "Jy/beam"),
            "psf": da(result.psf, "psf", ""),
        },
        attrs=attrs,
    )
