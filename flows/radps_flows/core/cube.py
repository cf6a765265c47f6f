"""Per-channel dirty cubes (CASA's ``specmode='cube'``): one Stokes I image per channel.

Each channel is gridded on its own (ducc0 wgridder, one frequency at a time) and normalised
by its own weight sum, so a line or a spectral index shows up channel by channel where the
MFS image averages it away. Partial cubes of blocks of visibilities sum like
:class:`~radps_flows.core.imaging.DirtySum`; channels with no weight are NaN in the image.
All partitions of a cube share one frequency axis (one spectral window); cubes over several
spectral windows would need regridding in frequency, which is not done here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass

import numpy as np
import xarray as xr

from .beam import BEAM_KEYS, Beam, fit_beam
from .conventions import MSV4_UVW_SIGN
from .imaging import add_psfs, channel_width, dirty_sum_from_arrays, image_attrs


@dataclass
class CubeSum:
    """Un-normalised per-channel images ``(nchan, y, x)`` of channels ``start..start+nchan``
    and their weight sums and sample counts. Sums add."""

    image: np.ndarray
    weight_sum: np.ndarray
    nvis: np.ndarray
    start: int = 0
    psf: np.ndarray | None = None
    """Per-channel un-normalised PSFs on the beam-fit grid (see
    :class:`~radps_flows.core.imaging.DirtySum`)."""

    @classmethod
    def empty(cls, nchan: int, imsize: int, start: int = 0) -> CubeSum:
        return cls(
            image=np.zeros((nchan, imsize, imsize)),
            weight_sum=np.zeros(nchan),
            nvis=np.zeros(nchan, dtype=np.int64),
            start=start,
        )

    def __add__(self, other: CubeSum) -> CubeSum:
        if (self.start, self.image.shape) != (other.start, other.image.shape):
            raise ValueError("cube sums of different channels do not add")
        return CubeSum(
            self.image + other.image,
            self.weight_sum + other.weight_sum,
            self.nvis + other.nvis,
            self.start,
            add_psfs(self.psf, other.psf, int(self.nvis.sum()), int(other.nvis.sum())),
        )

    def beams(self, cell_arcsec: float) -> list[Beam | None]:
        """The beam fitted to each channel's PSF; None for a channel with no weight."""
        if self.psf is None:
            return [None] * len(self.weight_sum)
        return [
            fit_beam(psf / w, cell_arcsec) if w > 0 else None
            for psf, w in zip(self.psf, self.weight_sum, strict=True)
        ]

    def normalised(self, dtype: type = np.float32) -> np.ndarray:
        """Each channel divided by its weight sum; NaN where a channel has no weight."""
        out = np.full(self.image.shape, np.nan, dtype=dtype)
        has = self.weight_sum > 0
        out[has] = self.image[has] / self.weight_sum[has, None, None]
        return out


def cube_sum_from_arrays(
    uvw: np.ndarray,
    freq: np.ndarray,
    vis: np.ndarray,
    weight: np.ndarray,
    *,
    imsize: int,
    cell_rad: float,
    epsilon: float = 1e-4,
    nthreads: int = 1,
    uvw_sign: int = MSV4_UVW_SIGN,
    start: int = 0,
    w_terms: bool = True,
) -> CubeSum:
    """Grid each channel of one block of Stokes I visibilities (arguments as
    :func:`~radps_flows.core.imaging.dirty_sum_from_arrays`; ``start`` is the index of the
    first channel of ``freq`` in the whole cube)."""
    freq = np.asarray(freq, dtype=np.float64).ravel()
    out = CubeSum.empty(len(freq), imsize, start)
    for c in range(len(freq)):
        part = dirty_sum_from_arrays(
            uvw,
            freq[c : c + 1],
            vis[:, c : c + 1],
            weight[:, c : c + 1],
            imsize=imsize,
            cell_rad=cell_rad,
            epsilon=epsilon,
            nthreads=nthreads,
            uvw_sign=uvw_sign,
            w_terms=w_terms,
        )
        out.image[c] = part.image
        out.weight_sum[c] = part.weight_sum
        out.nvis[c] = part.nvis
    return out


def common_frequencies(datasets: Sequence[xr.Dataset]) -> np.ndarray:
    """The channel frequencies all partitions share; ValueError naming the odd one out."""
    ref = np.asarray(datasets[0]["frequency"].values, dtype=np.float64)
    for ds in datasets[1:]:
        freq = np.asarray(ds["frequency"].values, dtype=np.float64)
        if freq.shape != ref.shape or not np.allclose(freq, ref, rtol=0, atol=1.0):
            raise ValueError(
                f"a cube needs one frequency axis: partition "
                f"{ds.attrs.get('partition_name', '?')} has {freq.size} channels from "
                f"{freq[0] if freq.size else '-'} Hz, the first {ref.size} from {ref[0]} Hz "
                "(image one spectral window at a time, or use specmode mfs)"
            )
    return ref


def cube_image(
    datasets: Sequence[xr.Dataset],
    image: np.ndarray,
    weight_sum: np.ndarray,
    nvis: np.ndarray,
    *,
    cell_arcsec: float,
    epsilon: float = 1e-4,
    beams: Sequence[Beam | None] | None = None,
) -> xr.DataArray:
    """The normalised cube ``(frequency, y, x)`` with the attributes of an MFS image
    (:func:`~radps_flows.core.imaging.dirty_image_from_sums`) plus the channel axis, and
    with ``beams`` (one per channel, None where it has no data) the per-channel restoring
    beams as coordinates along it (``beam_major_arcsec``, ``beam_minor_arcsec``,
    ``beam_pa_deg``; NaN where None), as CASA gives a cube a beam per plane."""
    freq = common_frequencies(datasets)
    if not np.any(weight_sum > 0):
        names = [ds.attrs.get("partition_name", "?") for ds in datasets]
        raise ValueError(f"no unflagged visibilities with positive weight in {names}")
    imsize = image.shape[-1]
    cell_rad = math.radians(cell_arcsec / 3600.0)
    width = channel_width(datasets[0])
    increment = float(freq[1] - freq[0]) if freq.size > 1 else width or 1.0
    attrs = image_attrs(
        datasets,
        imsize=imsize,
        cell_arcsec=cell_arcsec,
        low=float(freq[0]) - width / 2,
        high=float(freq[-1]) + width / 2,
        nvis=int(nvis.sum()),
        weight_sum=float(weight_sum.sum()),
        epsilon=epsilon,
        specmode="cube",
    )
    attrs["reference_frequency_hz"] = float(freq[0])
    attrs["channel_increment_hz"] = increment
    attrs["channel_width_hz"] = width
    n = imsize // 2
    offsets = (np.arange(imsize) - n) * cell_rad
    beam_coords = {}
    if beams is not None and any(b is not None for b in beams):
        for index, key in enumerate(BEAM_KEYS):
            values = [np.nan if b is None else astuple(b)[index] for b in beams]
            beam_coords[key] = ("frequency", np.asarray(values, dtype=np.float64))
    return xr.DataArray(
        image,
        dims=("frequency", "y", "x"),
        coords={
            **beam_coords,
            "frequency": ("frequency", freq, {"units": "Hz"}),
            "weight_sum": ("frequency", np.asarray(weight_sum, dtype=np.float64)),
            "l": ("x", -offsets, {"units": "rad", "long_name": "direction cosine towards east"}),
            "m": ("y", offsets, {"units": "rad", "long_name": "direction cosine towards north"}),
        },
        name="cube",
        attrs=attrs,
    )
