"""RFI flagging: robust median/MAD clipping per baseline over time x frequency.

For each baseline and correlation, visibility amplitudes over the whole time x frequency
plane are compared with their median; samples deviating by more than ``threshold`` robust
standard deviations (1.4826 x MAD) are flagged, and the statistics are recomputed without
them until nothing new is flagged (strong RFI inflates the first MAD; clipping it reveals the
weaker RFI). Median and MAD ignore the RFI itself as long as it covers less than half of a
baseline's samples. NaN samples (xradio's padding for missing time x baseline slots) and
non-finite weights are always flagged; existing flags are kept.

Why amplitudes on the raw plane: calibrator-like fields have nearly constant amplitude per
baseline, and RFI adds power. AOFlagger's SumThreshold over a smooth-surface fit is better for
structured fields and line-like RFI: ``method="aoflagger"`` (:func:`aoflagger_flags`, with
AOFlagger's generic default strategy; it sets its own thresholds). :func:`plane_flags` is
the one entry both the pipelines' block flagging and :func:`flag_dataset` call.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from .io import data_variable_names

__all__ = ["FLAGGERS", "aoflagger_available", "aoflagger_flags", "flag_dataset", "mad_flags"]

FLAGGERS = ("mad", "aoflagger")

_MAD_TO_SIGMA = 1.4826


def mad_flags(
    vis: np.ndarray,
    flag: np.ndarray | None = None,
    *,
    threshold: float = 5.0,
    max_iter: int = 10,
    extend_polarizations: bool = True,
    floor: float = 1e-6,
) -> np.ndarray:
    """Flags for ``vis`` (ntime, nbl, nchan, npol).

    ``flag``: existing flags (kept). ``extend_polarizations``: a sample flagged in one
    correlation (new, existing or NaN) is flagged in all, since Stokes I needs both hands and
    RFI is rarely confined to one. ``floor``:
    the robust sigma is at least ``floor`` times the median amplitude, so noise-free data
    do not flag rounding errors.
    """
    vis = np.asarray(vis)
    out = ~np.isfinite(vis)
    if flag is not None:
        out |= np.asarray(flag, dtype=bool)
    amp = np.abs(np.where(np.isfinite(vis), vis, 0)).astype(np.float64)
    for _ in range(max_iter):
        masked = np.where(out, np.nan, amp)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            # a fully flagged baseline gives an all-NaN slice: expected, not worth a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(masked, axis=(0, 2), keepdims=True)
            mad = np.nanmedian(np.abs(masked - med), axis=(0, 2), keepdims=True)
        sigma = np.maximum(_MAD_TO_SIGMA * mad, floor * np.abs(med))
        new = np.abs(amp - med) > threshold * sigma
        new &= np.isfinite(sigma)
        if extend_polarizations:
            new |= new.any(axis=-1, keepdims=True)
        added = new & ~out
        out |= new
        if not added.any():
            break
    if extend_polarizations:
        out |= out.any(axis=-1, keepdims=True)
    return out


def plane_flags(
    vis: np.ndarray, flag: np.ndarray | None, *, method: str = "mad", threshold: float = 5.0
) -> np.ndarray:
    """Flags for ``vis`` (ntime, nbl, nchan, npol), existing ``flag`` kept, by ``method``:
    ``mad`` (:func:`mad_flags`, at ``threshold``) or ``aoflagger`` (:func:`aoflagger_flags`)."""
    if method == "mad":
        return mad_flags(vis, flag, threshold=threshold)
    if method == "aoflagger":
        return aoflagger_flags(vis, flag)
    raise ValueError(f"unknown flagger {method!r} (known: {', '.join(FLAGGERS)})")


def flag_dataset(
    ds: xr.Dataset,
    *,
    data_group: str = "base",
    threshold: float = 5.0,
    method: str = "mad",
) -> xr.DataArray:
    """A new FLAG for one MSv4 dataset (same dims as its FLAG), lazily when it is Dask-backed:
    the work is split by baseline (each baseline needs its whole time x frequency plane)."""
    names = data_variable_names(ds, data_group)
    vname = names["vis"]
    fname = names["flag"]
    wname = names["weight"]
    order = ("time", "baseline_id", "frequency", "polarization")
    vis = ds[vname].transpose(*order)
    flag = ds[fname].transpose(*order) if fname in ds else xr.zeros_like(vis, dtype=bool)
    if wname in ds and ds[wname].ndim == 4:
        flag = flag | ~np.isfinite(ds[wname].transpose(*order))
    if vis.chunks is not None:
        vis = vis.chunk({"time": -1, "frequency": -1, "polarization": -1})
        flag = flag.chunk(vis.chunksizes)

    def _block(v: np.ndarray, f: np.ndarray) -> np.ndarray:
        # apply_ufunc moves core dims last: (baseline, time, frequency, polarization)
        v4 = np.moveaxis(v, 0, 1)
        f4 = np.moveaxis(f, 0, 1)
        out = plane_flags(v4, f4, method=method, threshold=threshold)
        return np.moveaxis(out, 1, 0)

    core = ["time", "frequency", "polarization"]
    out = xr.apply_ufunc(
        _block,
        vis,
        flag,
        input_core_dims=[core, core],
        output_core_dims=[core],
        dask="parallelized",
        output_dtypes=[bool],
    )
    dims = ds[fname].dims if fname in ds else vis.dims
    return out.transpose(*dims).rename("FLAG")


def aoflagger_available() -> bool:
    """Whether the AOFlagger Python module can be imported (it is an optional dependency)."""
    try:
        import aoflagger  # noqa: F401
    except ImportError:
        return False
    return True


def aoflagger_flags(vis: np.ndarray, flag: np.ndarray | None = None) -> np.ndarray:
    """SumThreshold flags from AOFlagger's generic default strategy, per baseline, for ``vis``
    (ntime, nbl, nchan, npol), existing flags and non-finite samples kept; a sample it flags
    is flagged in every correlation (as :func:`mad_flags` does).

    AOFlagger 3.5 (the registry's) finds a strategy by telescope:
    ``find_strategy_file(TelescopeId.Generic)``; its older no-argument form is gone."""
    import aoflagger

    nt, nbl, nf, npol = vis.shape
    flagger = aoflagger.AOFlagger()
    strategy = flagger.load_strategy_file(flagger.find_strategy_file(aoflagger.TelescopeId.Generic))
    out = ~np.isfinite(vis)
    if flag is not None:
        out |= flag
    for b in range(nbl):
        data = flagger.make_image_set(nt, nf, 2 * npol)
        for p in range(npol):
            plane = np.nan_to_num(vis[:, b, :, p])
            data.set_image_buffer(2 * p, np.ascontiguousarray(plane.real.T, dtype=np.float32))
            data.set_image_buffer(2 * p + 1, np.ascontiguousarray(plane.imag.T, dtype=np.float32))
        result = strategy.run(data)
        out[:, b, :, :] |= np.asarray(result.get_buffer(), dtype=bool).T[:, :, None]
    return out
