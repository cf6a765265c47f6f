"""Averaging visibilities in time and frequency with their weights and flags.

Each output cell is the weighted mean of its valid inputs (not flagged, finite, positive
weight) and carries the sum of their weights, so a natural-weighted image of the averaged data
equals that of the original up to smearing. A cell is flagged only when none of its inputs is
valid; it then holds the weighted mean of its finite inputs (or NaN when there are none, as
xradio pads missing slots). The last bin along an axis may be partial. UVW and times are
plain means over the bin (rows present), frequencies the mean of the channel centres, and the
channel width is multiplied by ``chanbin``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from .io import data_variable_names

__all__ = ["average_arrays", "average_dataset"]


def _bin_sum(x: np.ndarray, axis: int, n: int) -> np.ndarray:
    if n == 1:
        return x
    starts = np.arange(0, x.shape[axis], n)
    return np.add.reduceat(x, starts, axis=axis)


def _sum2(x: np.ndarray, timebin: int, chanbin: int, t_axis: int = 0, f_axis: int = 2):
    return _bin_sum(_bin_sum(x, t_axis, timebin), f_axis, chanbin)


def average_arrays(
    vis: np.ndarray,
    weight: np.ndarray,
    flag: np.ndarray,
    *,
    timebin: int = 1,
    chanbin: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average ``vis``, ``weight``, ``flag`` (ntime, nbl, nchan, npol) over ``timebin``
    integrations and ``chanbin`` channels. Returns the averaged vis (complex), weight
    (float64: summed weights of the valid inputs, or of the finite inputs for a flagged
    cell) and flag."""
    if timebin < 1 or chanbin < 1:
        raise ValueError("timebin and chanbin must be at least 1")
    vis = np.asarray(vis)
    w = np.asarray(weight, dtype=np.float64)
    finite = np.isfinite(vis) & np.isfinite(w)
    valid = finite & ~np.asarray(flag, dtype=bool) & (w > 0)
    wv = np.where(valid, w, 0.0)
    wsum = _sum2(wv, timebin, chanbin)
    vsum = _sum2(np.where(valid, vis, 0) * wv, timebin, chanbin)
    nvalid = _sum2(valid.astype(np.int64), timebin, chanbin)
    # fallback for cells with no valid input: the weighted mean of the finite ones
    wf = np.where(finite, np.where(w > 0, w, 0.0), 0.0)
    wf_sum = _sum2(wf, timebin, chanbin)
    vf_sum = _sum2(np.where(finite, vis, 0) * wf, timebin, chanbin)
    nfinite = _sum2(finite.astype(np.int64), timebin, chanbin)
    vf_plain = _sum2(np.where(finite, vis, 0), timebin, chanbin)
    out_flag = nvalid == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        good_mean = vsum / wsum
        fallback = np.where(wf_sum > 0, vf_sum / wf_sum, vf_plain / nfinite)
    out_vis = np.where(out_flag, fallback, good_mean)
    out_vis = np.where(out_flag & (nfinite == 0), np.nan, out_vis)
    out_weight = np.where(out_flag, np.where(nfinite > 0, wf_sum, np.nan), wsum)
    return out_vis.astype(np.result_type(vis.dtype, np.complex64)), out_weight, out_flag


def _bin_mean(values: np.ndarray, axis: int, n: int) -> np.ndarray:
    finite = np.isfinite(values)
    total = _bin_sum(np.where(finite, values, 0.0), axis, n)
    count = _bin_sum(finite.astype(np.int64), axis, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def average_dataset(
    ds: xr.Dataset, *, timebin: int = 1, chanbin: int = 1, data_group: str = "base"
) -> xr.Dataset:
    """Averaged copy of one MSv4 dataset (loaded into memory): its data group's visibilities,
    weights and flags, UVW, time and frequency coordinates. Other per-(time, baseline)
    variables are averaged like UVW; the result keeps the attrs."""
    names = data_variable_names(ds, data_group)
    vname = names["vis"]
    fname = names["flag"]
    wname = names["weight"]
    uname = names["uvw"]
    order = ("time", "baseline_id", "frequency", "polarization")
    vis = ds[vname].transpose(*order).values
    flag = ds[fname].transpose(*order).values if fname in ds else np.zeros(vis.shape, bool)
    if wname in ds and ds[wname].ndim == 4:
        weight = ds[wname].transpose(*order).values
    elif wname in ds:
        weight = np.broadcast_to(ds[wname].values[:, :, None, None], vis.shape)
    else:
        weight = np.ones(vis.shape, dtype=np.float32)
    v, w, f = average_arrays(vis, weight, flag, timebin=timebin, chanbin=chanbin)
    times = _bin_mean(np.asarray(ds["time"].values, dtype=np.float64), 0, timebin)
    freqs = _bin_mean(np.asarray(ds["frequency"].values, dtype=np.float64), 0, chanbin)
    time_attrs = dict(ds["time"].attrs)
    freq_attrs = dict(ds["frequency"].attrs)
    cw = freq_attrs.get("channel_width")
    if isinstance(cw, dict) and "data" in cw:
        freq_attrs["channel_width"] = {**cw, "data": float(cw["data"]) * chanbin}
    it = time_attrs.get("integration_time")
    if isinstance(it, dict) and "data" in it:
        time_attrs["integration_time"] = {**it, "data": float(it["data"]) * timebin}
    data_vars = {
        vname: (order, v.astype(ds[vname].dtype), ds[vname].attrs),
        fname: (order, f, ds[fname].attrs if fname in ds else {}),
        wname: (order, w.astype(np.float32), ds[wname].attrs if wname in ds else {}),
    }
    for name, var in ds.data_vars.items():
        if name in data_vars or var.dims[:2] != ("time", "baseline_id"):
            continue
        if var.ndim == 4:
            continue  # other correlated data groups: average them with their own group
        if np.issubdtype(var.dtype, np.number):
            data_vars[name] = (var.dims, _bin_mean(var.values.astype(np.float64), 0, timebin))
    if uname in ds and uname not in data_vars:
        u = ds[uname].transpose("time", "baseline_id", "uvw_label").values
        data_vars[uname] = (("time", "baseline_id", "uvw_label"), _bin_mean(u, 0, timebin))
    coords = {
        name: c
        for name, c in ds.coords.items()
        if "time" not in c.dims and "frequency" not in c.dims
    }
    coords["time"] = ("time", times, time_attrs)
    coords["frequency"] = ("frequency", freqs, freq_attrs)
    for name, c in ds.coords.items():
        if c.dims == ("time",) and name != "time":
            coords[name] = ("time", np.asarray(c.values)[::timebin], c.attrs)
    out = xr.Dataset(data_vars, coords=coords, attrs=dict(ds.attrs))
    for name in (uname,):
        if name in ds:
            out[name].attrs = ds[name].attrs
    return out
