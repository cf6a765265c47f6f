"""Dirty imaging: Stokes I, natural weighting, multi-frequency synthesis, ducc0 wgridder.

Conventions (measured, see docs/architecture.md, "The array core's conventions"):

* Textbook sign: ``V = S exp(-2 pi i (u l + v m + w (n - 1)))`` with ``l`` towards east (RA
  increasing) and ``m`` towards north. ducc0 needs ``flip_w=True`` for it.
* xradio's UVW (as converted from CASA MeasurementSets, and what anything written with
  xradio's schema must follow) is the *negative* of the textbook vector: imaging the VLA set
  with textbook signs gives CASA's image point-reflected; with the sign turned it matches CASA
  (same peak pixel, correlation 0.99999). :data:`MSV4_UVW_SIGN` records that.
* Images are numpy ``[y, x]`` in FITS/CASA orientation: ``x`` increases towards the west (RA
  decreases, ``l = -(x - N/2) * cell``), ``y`` towards the north (``m = (y - N/2) * cell``);
  the phase centre is pixel ``(N/2, N/2)``.
* Natural weighting normalised by the sum of weights: a 1 Jy point source gives 1.0 at its
  pixel (no 1/n factor: ``divide_by_n=False``).

Several partitions combine by summing their un-normalised images and weight sums
(:class:`DirtySum`), which is also what a Dask map-reduce over chunks will do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import ducc0
import numpy as np
import xarray as xr

from radps_flows.parameter_rules import GRIDDER_MIN_PIXELS

from .beam import fit_beam
from .conventions import MSV4_UVW_SIGN, SINGLE_PRECISION_EPSILON, ducc0_flips
from .io import data_variable_names

#: Parallel-hand correlations that estimate Stokes I, in order of preference.
_STOKES_I_PAIRS = (("RR", "LL"), ("XX", "YY"))
_SINGLE_HANDS = ("I", "RR", "LL", "XX", "YY")


@dataclass
class DirtySum:
    """Un-normalised dirty image and what normalising and describing it needs.

    ``image`` is ``sum_k w_k Re(V_k exp(+2 pi i (u l + v m + w (n-1))))`` on the ``[y, x]``
    grid; dividing by ``weight_sum`` gives the natural-weighted dirty image. Sums add.

    ``psf``, where gridded, is the same samples' un-normalised PSF on a small grid of the same
    cells around the phase centre (:data:`PSF_FIT_PIXELS`): what the restoring beam of a dirty
    image is fitted to (:func:`dirty_image_from_sums`), since a Jy/beam image must say which
    beam. A sum holds it only when every part does.
    """

    image: np.ndarray
    weight_sum: float = 0.0
    nvis: int = 0
    freq_low: float = math.inf
    freq_high: float = -math.inf
    psf: np.ndarray | None = None

    @classmethod
    def empty(cls, imsize: int) -> DirtySum:
        return cls(image=np.zeros((imsize, imsize)))

    def __add__(self, other: DirtySum) -> DirtySum:
        return DirtySum(
            image=self.image + other.image,
            weight_sum=self.weight_sum + other.weight_sum,
            nvis=self.nvis + other.nvis,
            freq_low=min(self.freq_low, other.freq_low),
            freq_high=max(self.freq_high, other.freq_high),
            psf=add_psfs(self.psf, other.psf, self.nvis, other.nvis),
        )


PSF_FIT_PIXELS = 256
"""Width of the PSF gridded beside a dirty image for its beam fit. The fit uses the main lobe
above 0.35 of the peak, so it needs the PSF only near the centre: 256 pixels hold main lobes
up to ~100 pixels wide. On a small grid, in 2-D (a PSF with and without w-terms differ by
2e-5 of the peak in the main lobe, see :func:`radps_flows.core.blocks.psf_block`), it costs a
fraction of the image's own gridding."""


def add_psfs(
    a: np.ndarray | None, b: np.ndarray | None, a_nvis: int, b_nvis: int
) -> np.ndarray | None:
    """The sum of two parts' PSFs; a part with no samples counts as zero, and a part with
    samples but no PSF makes the sum have none (its beam would be wrong)."""
    if a is None and not a_nvis:
        return b
    if b is None and not b_nvis:
        return a
    if a is None or b is None:
        return None
    return a + b


def check_geometry(imsize: int, cell_rad: float) -> None:
    """ValueError unless ducc0's wgridder can make an ``imsize`` image of ``cell_rad`` cells
    (the same bound the pipelines' parameter rules check before a run starts)."""
    if imsize < GRIDDER_MIN_PIXELS or imsize % 2:
        raise ValueError(
            f"imsize must be even and at least {GRIDDER_MIN_PIXELS} (ducc0 wgridder), got {imsize}"
        )
    if not cell_rad > 0:
        raise ValueError(f"cell size must be positive, got {cell_rad} rad")
    if imsize * cell_rad / 2 >= 1:
        raise ValueError("the image extends beyond the horizon (imsize * cell too large)")


def dirty_sum_from_arrays(
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
    w_terms: bool = True,
) -> DirtySum:
    """Grid one block of Stokes I visibilities (no normalisation).

    ``uvw`` (nrow, 3) in metres, ``freq`` (nchan,) Hz, ``vis`` (nrow, nchan) complex,
    ``weight`` (nrow, nchan) with 0 for anything not to image. ``uvw_sign`` is +1 for textbook
    UVW, :data:`MSV4_UVW_SIGN` for xradio's (no default: a wrong guess mirrors the image);
    instead of negating the array, the matching ducc0 flips are chosen. Rows with non-finite
    UVW or no positive weight are dropped first. ``w_terms=False`` grids in 2-D (no
    w-stacking): about a third of the cost, for a PSF (see :func:`blocks.psf_block`).
    """
    check_geometry(imsize, cell_rad)
    uvw = np.asarray(uvw, dtype=np.float64)
    freq = np.asarray(freq, dtype=np.float64).ravel()
    weight = np.where(np.isfinite(weight), weight, 0)
    rows = np.isfinite(uvw).all(axis=1) & (weight > 0).any(axis=1)
    out = DirtySum.empty(imsize)
    if not rows.any():
        return out
    single = np.asarray(vis).dtype == np.complex64 and epsilon >= SINGLE_PRECISION_EPSILON
    cdt, rdt = (np.complex64, np.float32) if single else (np.complex128, np.float64)
    every = bool(rows.all())  # the usual case: no row copies
    wgt = np.ascontiguousarray(weight if every else weight[rows], dtype=rdt)
    used = wgt > 0
    vis_r = np.ascontiguousarray(np.where(used, vis if every else vis[rows], 0), dtype=cdt)
    mask = used.view(np.uint8)
    dirty = ducc0.wgridder.vis2dirty(
        uvw=np.ascontiguousarray(uvw if every else uvw[rows]),
        freq=freq,
        vis=vis_r,
        wgt=wgt,
        mask=mask,
        npix_x=imsize,
        npix_y=imsize,
        pixsize_x=cell_rad,
        pixsize_y=cell_rad,
        epsilon=epsilon,
        do_wgridding=w_terms,
        divide_by_n=False,
        nthreads=nthreads,
        **ducc0_flips(uvw_sign),
    )
    chans = used.any(axis=0)
    out.image = np.ascontiguousarray(dirty.T, dtype=np.float64)  # ducc [-l, m] -> [y, x]
    out.weight_sum = float(wgt.sum(dtype=np.float64))
    out.nvis = int(used.sum())
    out.freq_low = float(freq[chans].min())
    out.freq_high = float(freq[chans].max())
    return out


def stokes_i(
    vis: np.ndarray, flag: np.ndarray | None, weight: np.ndarray | None, pols: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Stokes I visibilities and weights from the parallel hands (last axis = polarization).

    Each valid parallel-hand sample is an estimate of I: ``I = sum_p w_p V_p / sum_p w_p`` with
    weight ``sum_p w_p`` (CASA grids RR and LL onto one Stokes I plane the same way). That is
    ``(RR+LL)/2`` for equal weights, the other hand alone where one is flagged, and the single
    hand when only one exists. Invalid samples (FLAG set, NaN visibility or weight, weight <= 0;
    xradio pads missing time x baseline slots with NaN and FLAG False) get weight 0.
    """
    pols = [str(p) for p in pols]
    use = next(
        ([pols.index(a), pols.index(b)] for a, b in _STOKES_I_PAIRS if a in pols and b in pols),
        None,
    )
    if use is None:
        singles = [i for i, p in enumerate(pols) if p in _SINGLE_HANDS]
        if not singles:
            raise ValueError(f"cannot form Stokes I from correlations {pols}")
        use = singles[:1]
    # Few passes, in the data's own precision, no full-size temporaries beyond the outputs:
    # this runs on every visibility before gridding (it was a third of the gridder's time).
    double = vis.dtype == np.complex128
    real, cplx = (np.float64, np.complex128) if double else (np.float32, np.complex64)
    num: np.ndarray | None = None
    den: np.ndarray | None = None
    for p in use:
        v = vis[..., p]
        w = np.ones(v.shape, real) if weight is None else weight[..., p].astype(real)
        ok = np.isfinite(v)
        ok &= w > 0  # False for NaN weights too
        ok &= w < np.inf
        if flag is not None:
            np.greater(ok, flag[..., p], out=ok)  # ok and not flagged
        np.multiply(w, ok, out=w)
        weighted = np.where(ok, v, 0).astype(cplx, copy=False)
        weighted *= w
        if num is None or den is None:
            num, den = weighted, w
        else:
            num += weighted
            den += w
    assert num is not None and den is not None
    vis_i = np.zeros_like(num)
    np.divide(num, den, out=vis_i, where=den > 0)
    return vis_i, den


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


def _phase_center_of(ds: xr.Dataset) -> dict[str, Any]:
    pc = ds.attrs.get("phase_center")
    if pc is None:
        name = ds.attrs.get("partition_name", "?")
        if "phase_centers" in ds.attrs:
            raise ValueError(
                f"partition {name} has several phase centres ({sorted(ds.attrs['phase_centers'])});"
                " image one field at a time"
            )
        raise ValueError(
            f"partition {name} has no phase_center attribute: open the data with "
            "radps_flows.core.io.open_processing_set"
        )
    return pc


def channel_width(ds: xr.Dataset) -> float:
    cw = ds["frequency"].attrs.get("channel_width")
    if isinstance(cw, dict) and "data" in cw:
        return abs(float(np.asarray(cw["data"]).ravel()[0]))
    if ds.sizes["frequency"] > 1:
        return float(np.median(np.abs(np.diff(ds["frequency"].values))))
    return 0.0


def _date_obs(datasets: Sequence[xr.Dataset]) -> str | None:
    starts = []
    for ds in datasets:
        if "time" not in ds.coords or ds.sizes["time"] == 0:
            continue
        starts.append(float(np.nanmin(ds["time"].values)))  # first time centroid, as CASA
    if not starts:
        return None
    return datetime.fromtimestamp(min(starts), tz=UTC).replace(tzinfo=None).isoformat()


def common_phase_center(datasets: Sequence[xr.Dataset]) -> dict[str, Any]:
    """The phase centre the datasets share (``phase_center`` attribute); ValueError if they
    do not share one."""
    centres = [_phase_center_of(ds) for ds in datasets]
    ref = centres[0]
    for ds, pc in zip(datasets, centres, strict=True):
        same_frame = str(pc.get("frame")).lower() == str(ref.get("frame")).lower()
        if not same_frame or abs(pc["ra"] - ref["ra"]) > 1e-8 or abs(pc["dec"] - ref["dec"]) > 1e-8:
            raise ValueError(
                f"partition {ds.attrs.get('partition_name', '?')} has another phase centre "
                f"({pc}) than the first ({ref}); image them separately"
            )
    return ref


def dirty_image_from_sums(
    datasets: Sequence[xr.Dataset],
    parts: Sequence[DirtySum],
    *,
    cell_arcsec: float,
    epsilon: float = 1e-4,
    weighting: str = "natural",
) -> xr.DataArray:
    """The Stokes I MFS dirty image of ``datasets`` (sharing one phase centre) from one
    :class:`DirtySum` per dataset, however they were computed (block by block, on Dask
    workers: see :func:`radps_flows.core.imager.dirty_image`).

    Returns dims ``(y, x)`` in FITS orientation (see the module docstring) normalised by the
    sum of weights, with coords ``l`` (along x) and ``m`` (along y) in radians and attrs
    carrying what a FITS WCS and a report need: ``phase_center_ra_rad``,
    ``phase_center_dec_rad``, ``phase_center_frame``, ``cell_rad``, ``cell_arcsec``,
    ``reference_pixel`` (0-based [x, y]), ``reference_frequency_hz``, ``bandwidth_hz``,
    ``spectral_frame``, ``bunit``, ``nvis`` ((row, channel) Stokes I samples gridded),
    ``sum_weights``, ``stokes``, ``weighting`` (only recorded), and when known ``date_obs``,
    ``telescope``, ``observer``, ``object``."""
    if len(parts) != len(datasets):
        raise ValueError("one DirtySum per dataset expected")
    cell_rad = math.radians(cell_arcsec / 3600.0)
    imsize = parts[0].image.shape[0]
    total = DirtySum.empty(imsize)
    half_width = 0.0
    spectral_frames = set()
    for ds, part in zip(datasets, parts, strict=True):
        if part.nvis:
            half_width = max(half_width, channel_width(ds) / 2)
            spectral_frames.add(str(ds["frequency"].attrs.get("observer", "TOPO")).upper())
        total = total + part
    if total.weight_sum <= 0:
        names = [ds.attrs.get("partition_name", "?") for ds in datasets]
        raise ValueError(f"no unflagged visibilities with positive weight in {names}")
    attrs = image_attrs(
        datasets,
        imsize=imsize,
        cell_arcsec=cell_arcsec,
        low=total.freq_low - half_width,
        high=total.freq_high + half_width,
        nvis=total.nvis,
        weight_sum=total.weight_sum,
        epsilon=epsilon,
        weighting=weighting,
        spectral_frames=spectral_frames,
    )
    if total.psf is not None:
        attrs.update(fit_beam(total.psf / total.weight_sum, cell_arcsec).attrs())
    n = imsize // 2
    offsets = (np.arange(imsize) - n) * cell_rad
    return xr.DataArray(
        total.image / total.weight_sum,
        dims=("y", "x"),
        coords={
            "l": ("x", -offsets, {"units": "rad", "long_name": "direction cosine towards east"}),
            "m": ("y", offsets, {"units": "rad", "long_name": "direction cosine towards north"}),
        },
        name="dirty",
        attrs=attrs,
    )


def _descriptive_attrs(datasets: Sequence[xr.Dataset], ref: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    date = _date_obs(datasets)
    if date:
        out["date_obs"] = date
    first = datasets[0].attrs
    if first.get("telescope_name"):
        out["telescope"] = str(first["telescope_name"])
    observer = (first.get("observation_info") or {}).get("observer")
    if observer:
        out["observer"] = str(observer[0] if isinstance(observer, list | tuple) else observer)
    source = first.get("source_name")
    # xradio names the source "Unknown" where the SOURCE table has none (pyuvdata's MSs)
    obj = source if source and source != "Unknown" else ref.get("field_name")
    if obj:
        creator = first.get("creator") or {}
        converted = isinstance(creator, dict) and creator.get("software_name") == "xradio"
        out["object"] = object_name(str(obj)) if converted else str(obj)
    for key in ("telescope_position_m", "rest_frequency_hz"):
        if key in first:
            out[key] = first[key]
    return out


def object_name(name: str) -> str:
    """The source's own name in a set xradio converted from an MSv2: the conversion makes
    field and source names unique by appending ``_<id>`` (``J1008+0730_0``), which no
    catalogue or CASA image carries. (Only there: a set written otherwise, such as
    `synthesize`'s, keeps its names as they are, ``NGC_1234`` among them.)"""
    return re.sub(r"_\d+$", "", name) or name


def image_attrs(
    datasets: Sequence[xr.Dataset],
    *,
    imsize: int,
    cell_arcsec: float,
    low: float,
    high: float,
    nvis: int,
    weight_sum: float,
    epsilon: float,
    weighting: str = "natural",
    specmode: str = "mfs",
    spectral_frames: set[str] | None = None,
) -> dict[str, Any]:
    """What a FITS WCS and a report need about an image of ``datasets`` covering the band
    ``low..high`` Hz (see :func:`dirty_image_from_sums` for the keys)."""
    ref = _phase_center_of(datasets[0])
    frames = (
        set(spectral_frames)
        if spectral_frames
        else {str(ds["frequency"].attrs.get("observer", "TOPO")).upper() for ds in datasets}
    )
    attrs: dict[str, Any] = {
        "phase_center_ra_rad": float(ref["ra"]),
        "phase_center_dec_rad": float(ref["dec"]),
        "phase_center_frame": str(ref.get("frame", "fk5")),
        "cell_rad": math.radians(cell_arcsec / 3600.0),
        "cell_arcsec": float(cell_arcsec),
        "reference_pixel": [imsize // 2, imsize // 2],
        "reference_frequency_hz": (low + high) / 2,
        "bandwidth_hz": high - low,
        "spectral_frame": frames.pop() if len(frames) == 1 else "TOPO",
        "bunit": "Jy/beam",
        "nvis": nvis,
        "sum_weights": weight_sum,
        "stokes": "I",
        "weighting": weighting,
        "specmode": specmode,
        "gridder": f"ducc0.wgridder {ducc0.__version__} epsilon={epsilon}",
    }
    attrs.update(_descriptive_attrs(datasets, ref))
    return attrs
