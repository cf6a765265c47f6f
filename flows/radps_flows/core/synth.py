"""Synthetic MSv4 processing sets: exact point-source visibilities written as xradio writes them.

:func:`synthesize_processing_set` writes a processing set (zarr v3) with the structure that
``xradio.measurement_set.convert_msv2_to_processing_set`` (xradio 1.3) gives a real MSv2, so real
and simulated data go through the same reader and imager code:

``<name>.ps.zarr/``  (root attrs ``{"type": "processing_set"}``, consolidated metadata)
    ``<name>_0/``  one MSv4 partition (``type: visibility``), dims ``time``, ``baseline_id``,
    ``frequency``, ``polarization``, ``uvw_label``; data variables ``VISIBILITY`` (complex64,
    Jy), ``FLAG`` (bool, all False), ``WEIGHT`` (float32), ``UVW`` (float64, metres),
    ``TIME_CENTROID``, ``EFFECTIVE_INTEGRATION_TIME``; one data group ``base``.
        ``antenna_xds/``  antenna names, ITRS geocentric positions, dish diameters, receptors.
        ``field_and_source_base_xds/``  ``FIELD_PHASE_CENTER_DIRECTION`` (field_name,
        sky_dir_label=[ra, dec]) in rad, frame ``fk5``: the phase centre.

Conventions (those of xradio's conversion of CASA MeasurementSets):

* UVW (metres) of baseline (antenna1, antenna2) is the projection of ``X_ant1 - X_ant2``
  (ITRS positions) onto the (u, v, w) axes of the phase centre at hour angle H (w towards the
  source, v towards the north pole, u east; Thompson, Moran & Swenson eq. 4.1). That is the sign
  CASA's UVW have: on the converted ALMA test set (``shared/data``) ``X_ant1 - X_ant2``
  reproduces the stored UVW to 0.3 m of 67 m (precession) and ``X_ant2 - X_ant1`` misses by
  twice the baseline. The MSv4 schema's docstring says "POSITION2 - POSITION1"; the data do not
  follow it. (The VLA test set cannot tell: its UVW belong to a direction 10 degrees from its
  recorded phase centre.) Baselines are antenna1 < antenna2 in antenna order, no
  autocorrelations.
* ``V_pq(u, v, w) = sum_k S_k(nu) exp(-2 pi i (u l_k + v m_k + w (n_k - 1)))`` with u, v, w in
  wavelengths of the *textbook* baseline, which is the stored UVW times ``MSV4_UVW_SIGN`` (see
  ``core/conventions.py``: measured against CASA, real data have this relation), and direction
  cosines from the SIN projection about the phase centre. Gains enter as ``g_p V_pq conj(g_q)``.
* Linear feeds, unpolarised sources: ``XX = YY = I`` and ``XY = YX = 0`` before gains, so Stokes
  ``I = (XX + YY) / 2``. Polarisation labels are ``["XX"]``, ``["XX", "YY"]`` or
  ``["XX", "XY", "YX", "YY"]``.
* Hour angles use GMST from the IAU 1982 formula with UT1 = UTC and the J2000 phase centre
  taken as the direction of date (no precession, nutation or aberration): the stored UVW are a
  realistic Earth-rotation track, rotated by a few tenths of a degree from what CASA would
  compute, but the visibilities are exact for the UVW that are stored, which is what matters
  to an imager. No primary beam, no horizon or shadowing, no time or bandwidth smearing.

Data are computed and written in blocks of whole zarr chunks along time (bounded memory; every
random draw is seeded per time step, so the data do not depend on the block size).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from radps_flows import locations
from radps_flows.provenance import software_version

from .conventions import MSV4_UVW_SIGN

__all__ = [
    "PointSource",
    "SynthesisResult",
    "SynthesisSpec",
    "antenna_positions_itrs",
    "baseline_antennas",
    "compute_uvw",
    "point_source_visibilities",
    "polarization_labels",
    "source_directions",
    "synthesize_processing_set",
]

#: Speed of light (m/s).
C_M_S = 299_792_458.0
#: Default site: the VLA (WGS84 longitude, latitude in degrees, height in metres).
VLA_SITE = (-107.6184, 34.0784, 2124.0)
#: The MSv4 schema version xradio 1.3 writes.
MSV4_SCHEMA_VERSION = "4.0.1"
#: Uncompressed bytes of VISIBILITY per time block when ``chunk_times`` is None.
DEFAULT_CHUNK_BYTES = 16 * 2**20
#: Channels per block of the phase recurrence in :func:`point_source_visibilities` (the
#: recurrence is re-anchored with an exact exponential at the start of every block).
_RECURRENCE_BLOCK = 128
# 2025-01-01T00:00:00 UTC: default observing date (the first transit of the phase centre after).
_DEFAULT_EPOCH_UNIX = 1_735_689_600.0
_SIDEREAL_DEG_PER_DAY = 360.98564736629
# Random streams (seeded as [seed, stream] or [seed, stream, time index]).
_STREAM_GAINS, _STREAM_RFI_MASK, _STREAM_RFI, _STREAM_NOISE, _STREAM_LAYOUT = range(5)


@dataclass(frozen=True)
class PointSource:
    """An unpolarised point source.

    The offsets are angles on the sky from the phase centre: ``offset_ra_arcsec`` east
    (the l direction), ``offset_dec_arcsec`` north (m). The absolute position is
    ``RA = RA0 + offset_ra / cos(Dec0)``, ``Dec = Dec0 + offset_dec``, from which l, m, n follow
    exactly (SIN projection); for small offsets l ~ offset_ra and m ~ offset_dec.
    ``S(nu) = flux_jy * (nu / ref_freq) ** spectral_index``.
    """

    flux_jy: float
    offset_ra_arcsec: float = 0.0
    offset_dec_arcsec: float = 0.0
    spectral_index: float = 0.0


@dataclass(frozen=True)
class SynthesisSpec:
    """What to simulate. The defaults give 120 baselines x 60 times x 32 channels x 2
    polarisations = 460,800 visibilities of a 1 Jy source at the phase centre, noise-free.

    Layout: ``"y"`` is a VLA-like Y (arms at azimuths 5, 125 and 245 degrees, antennas at
    radii ``array_radius_m * (k / n_arm) ** 1.716`` with a 1% jitter), ``"random"`` uniform in
    a disc of radius ``array_radius_m`` (1.5 dish diameters apart where possible); both at
    ``site`` (WGS84 lon, lat in degrees, height in m), VLA by default. ``start_time_unix``:
    start of the first integration (``time`` holds the mid-points); None puts the middle of
    the observation at the first transit of the phase centre after 2025-01-01T00:00 UTC.
    ``ref_freq_hz`` (spectral-index reference, also the ``reference_frequency`` attribute of the
    frequency axis): None is the band centre.

    Corruptions: complex gains per antenna and receptor (X, Y), constant in time, amplitude
    ``max(0.05, 1 + gain_amplitude_rms * N(0,1))`` and phase ``gain_phase_rms_deg * N(0,1)``;
    RFI in ``round(rfi_fraction * n_times * n_channels)`` (time, channel) cells, placed as
    rectangular bursts, added on every baseline and polarisation with amplitude
    ``rfi_amplitude_jy * U(0.5, 1.5)`` and a random phase; Gaussian noise of standard deviation
    ``noise_jy`` on the real and on the imaginary part of every visibility (``WEIGHT`` is then
    ``1 / noise_jy**2``, else 1). Order: ``g_p V conj(g_q) + RFI + noise``.
    ``chunk_times``: time steps per zarr chunk and per computed block; None aims at
    ``DEFAULT_CHUNK_BYTES`` of VISIBILITY per block.
    """

    n_antennas: int = 16
    n_times: int = 60
    n_channels: int = 32
    n_polarizations: int = 2
    integration_s: float = 10.0
    start_freq_hz: float = 1.4e9
    channel_width_hz: float = 1.0e6
    ref_freq_hz: float | None = None
    phase_centre_ra_deg: float = 150.0
    phase_centre_dec_deg: float = 30.0
    array_radius_m: float = 1000.0
    layout: Literal["y", "random"] = "y"
    site: tuple[float, float, float] = VLA_SITE
    start_time_unix: float | None = None
    dish_diameter_m: float = 25.0
    sources: tuple[PointSource, ...] = (PointSource(1.0),)
    gain_amplitude_rms: float = 0.0
    gain_phase_rms_deg: float = 0.0
    noise_jy: float = 0.0
    rfi_fraction: float = 0.0
    rfi_amplitude_jy: float = 50.0
    seed: int = 0
    chunk_times: int | None = None
    field_name: str = "SIM"
    telescope_name: str = "RADPS-SIM"

    def __post_init__(self) -> None:
        problems = []
        if self.n_antennas < 2:
            problems.append("n_antennas must be at least 2")
        if self.n_times < 1 or self.n_channels < 1:
            problems.append("n_times and n_channels must be at least 1")
        if self.n_polarizations not in (1, 2, 4):
            problems.append("n_polarizations must be 1, 2 or 4")
        if not self.integration_s > 0:
            problems.append("integration_s must be positive")
        if not self.start_freq_hz > 0 or not self.channel_width_hz > 0:
            problems.append("start_freq_hz and channel_width_hz must be positive")
        if self.ref_freq_hz is not None and not self.ref_freq_hz > 0:
            problems.append("ref_freq_hz must be positive")
        if not abs(self.phase_centre_dec_deg) < 90:
            problems.append("phase_centre_dec_deg must be within (-90, 90)")
        if not self.array_radius_m > 0:
            problems.append("array_radius_m must be positive")
        if self.layout not in ("y", "random"):
            problems.append("layout must be 'y' or 'random'")
        if self.gain_amplitude_rms < 0 or self.gain_phase_rms_deg < 0 or self.noise_jy < 0:
            problems.append("gain rms and noise_jy must be >= 0")
        if not 0 <= self.rfi_fraction <= 1:
            problems.append("rfi_fraction must be within [0, 1]")
        if self.chunk_times is not None and self.chunk_times < 1:
            problems.append("chunk_times must be at least 1")
        if not all(isinstance(s, PointSource) for s in self.sources):
            problems.append("sources must be PointSource instances")
        if problems:
            raise ValueError("invalid SynthesisSpec: " + "; ".join(problems))
        object.__setattr__(self, "sources", tuple(self.sources))

    @property
    def n_baselines(self) -> int:
        return self.n_antennas * (self.n_antennas - 1) // 2

    @property
    def n_rows(self) -> int:
        """MSv2 rows: time x baseline."""
        return self.n_times * self.n_baselines

    @property
    def n_visibilities(self) -> int:
        """Complex correlations: time x baseline x channel x polarisation."""
        return self.n_rows * self.n_channels * self.n_polarizations

    @property
    def frequencies_hz(self) -> np.ndarray:
        """Channel centres."""
        return self.start_freq_hz + self.channel_width_hz * np.arange(self.n_channels)

    @property
    def reference_frequency_hz(self) -> float:
        if self.ref_freq_hz is not None:
            return float(self.ref_freq_hz)
        return float(self.start_freq_hz + self.channel_width_hz * (self.n_channels - 1) / 2)

    @property
    def block_times(self) -> int:
        """Time steps per zarr chunk and per computed block."""
        if self.chunk_times is not None:
            return min(self.chunk_times, self.n_times)
        per_time = self.n_baselines * self.n_channels * self.n_polarizations * 8
        return int(min(self.n_times, max(1, DEFAULT_CHUNK_BYTES // per_time)))

    def times_unix(self) -> np.ndarray:
        """Mid-points of the integrations (the MSv4 ``time`` coordinate), UTC unix seconds."""
        start = self.start_time_unix
        if start is None:
            start = _transit_start(self)
        return start + self.integration_s * (np.arange(self.n_times) + 0.5)


@dataclass(frozen=True)
class SynthesisResult:
    """What was written, with the truth needed to check processing.

    ``path`` is the processing-set store actually written (``.ps.zarr`` appended when the
    requested name lacks it, as xradio does); ``partition`` the name of its one MSv4.
    ``gains`` (n_antennas, 2) complex128, receptor X then Y, or None if no gains were applied;
    ``rfi_mask`` (n_times, n_channels) bool, True where RFI was added (on every baseline and
    polarisation), or None without RFI. ``source_ra_dec_rad`` (n_sources, 2) and
    ``source_lmn`` (n_sources, 3) are the exact positions used.
    """

    path: Path | str
    """A Path, or the URL of a store written on an object store."""
    partition: str
    n_visibilities: int
    n_rows: int
    gains: np.ndarray | None
    rfi_mask: np.ndarray | None
    antenna_names: tuple[str, ...]
    polarizations: tuple[str, ...]
    source_ra_dec_rad: np.ndarray
    source_lmn: np.ndarray
    elapsed_s: float
    spec: SynthesisSpec = field(repr=False)

    @property
    def visibilities_per_s(self) -> float:
        return self.n_visibilities / self.elapsed_s if self.elapsed_s > 0 else math.inf


# ------------------------------------------------------------------------------------------
# Geometry


def polarization_labels(n_polarizations: int) -> tuple[str, ...]:
    """Correlation labels for 1, 2 or 4 linear-feed polarisations."""
    labels = {1: ("XX",), 2: ("XX", "YY"), 4: ("XX", "XY", "YX", "YY")}
    if n_polarizations not in labels:
        raise ValueError("n_polarizations must be 1, 2 or 4")
    return labels[n_polarizations]


def baseline_antennas(n_antennas: int) -> tuple[np.ndarray, np.ndarray]:
    """Antenna indices (antenna1 < antenna2) in MS order: (0,1), (0,2), ..., (1,2), ..."""
    a1, a2 = np.triu_indices(n_antennas, 1)
    return a1.astype(np.int64), a2.astype(np.int64)


def _layout_enu(spec: SynthesisSpec) -> tuple[np.ndarray, list[str]]:
    """Local east, north, up offsets (m) and station names."""
    n = spec.n_antennas
    rng = np.random.default_rng([spec.seed, _STREAM_LAYOUT])
    if spec.layout == "random":
        # uniform in the disc, at least 1.5 dish diameters apart where that is possible
        min_sep = 1.5 * spec.dish_diameter_m
        points = np.zeros((n, 2))
        for k in range(n):
            for _attempt in range(100):
                r = spec.array_radius_m * math.sqrt(rng.uniform(0, 1))
                az = rng.uniform(0, 2 * np.pi)
                points[k] = r * math.sin(az), r * math.cos(az)
                gaps = np.hypot(*(points[:k] - points[k]).T)
                if k == 0 or gaps.min() >= min_sep:
                    break
        radius, azimuth = np.hypot(*points.T), np.arctan2(*points.T)
        stations = [f"P{k + 1:02d}" for k in range(n)]
    else:
        arms = np.arange(n) % 3
        rank = np.arange(n) // 3 + 1
        n_arm = np.array([np.count_nonzero(arms == a) for a in range(3)])
        radius = spec.array_radius_m * (rank / n_arm[arms]) ** 1.716
        radius = radius * (1 + 0.01 * rng.standard_normal(n))
        azimuth = np.radians(np.array([5.0, 125.0, 245.0])[arms]) + 0.01 * rng.standard_normal(n)
        stations = [f"{'NEW'[a]}{r:02d}" for a, r in zip(arms, rank, strict=True)]
    east = radius * np.sin(azimuth)
    north = radius * np.cos(azimuth)
    up = rng.normal(0.0, 1e-3 * spec.array_radius_m, n)
    return np.stack([east, north, up], axis=-1), stations


def antenna_positions_itrs(spec: SynthesisSpec) -> tuple[np.ndarray, list[str], list[str]]:
    """ITRS geocentric positions (n_antennas, 3) in m, antenna names and station names."""
    enu, stations = _layout_enu(spec)
    lon_deg, lat_deg, height = spec.site
    lon, lat = math.radians(lon_deg), math.radians(lat_deg)
    # WGS84 geodetic -> geocentric
    a, f = 6_378_137.0, 1 / 298.257223563
    e2 = f * (2 - f)
    nu = a / math.sqrt(1 - e2 * math.sin(lat) ** 2)
    centre = np.array(
        [
            (nu + height) * math.cos(lat) * math.cos(lon),
            (nu + height) * math.cos(lat) * math.sin(lon),
            (nu * (1 - e2) + height) * math.sin(lat),
        ]
    )
    sl, cl, sp, cp = math.sin(lon), math.cos(lon), math.sin(lat), math.cos(lat)
    enu_to_xyz = np.array(
        [
            [-sl, -sp * cl, cp * cl],
            [cl, -sp * sl, cp * sl],
            [0.0, cp, sp],
        ]
    )
    positions = centre + enu @ enu_to_xyz.T
    width = max(2, len(str(spec.n_antennas - 1)))
    names = [f"A{k:0{width}d}_{s}" for k, s in enumerate(stations)]
    return positions, names, stations


def _gmst_rad(unix: np.ndarray) -> np.ndarray:
    """Greenwich mean sidereal time (IAU 1982, UT1 = UTC), radians."""
    days = np.asarray(unix, dtype=np.float64) / 86400.0 + 2440587.5 - 2451545.0
    centuries = days / 36525.0
    deg = (
        280.46061837
        + _SIDEREAL_DEG_PER_DAY * days
        + 0.000387933 * centuries**2
        - centuries**3 / 38_710_000.0
    )
    return np.radians(np.mod(deg, 360.0))


def _transit_start(spec: SynthesisSpec) -> float:
    """Start time putting the middle of the observation at the phase centre's transit."""
    lon_deg = spec.site[0]
    gmst0 = math.degrees(float(_gmst_rad(np.array(_DEFAULT_EPOCH_UNIX))))
    wanted = (spec.phase_centre_ra_deg - lon_deg - gmst0) % 360.0
    transit = _DEFAULT_EPOCH_UNIX + wanted / _SIDEREAL_DEG_PER_DAY * 86400.0
    return transit - spec.n_times * spec.integration_s / 2


def compute_uvw(
    positions_itrs: np.ndarray,
    antenna1: np.ndarray,
    antenna2: np.ndarray,
    times_unix: np.ndarray,
    ra_rad: float,
    dec_rad: float,
) -> np.ndarray:
    """UVW (time, baseline, 3) in metres of ``X_ant1 - X_ant2`` (the MS/xradio sign).

    ``u = sin H bx + cos H by``, ``v = -sin d cos H bx + sin d sin H by + cos d bz``,
    ``w = cos d cos H bx - cos d sin H by + sin d bz`` with the Greenwich hour angle
    ``H = GMST - RA`` and ``b`` the ITRS baseline vector.
    """
    b = positions_itrs[antenna1] - positions_itrs[antenna2]  # (nbl, 3)
    h = _gmst_rad(times_unix) - ra_rad  # (nt,)
    sh, ch = np.sin(h)[:, None], np.cos(h)[:, None]
    sd, cd = math.sin(dec_rad), math.cos(dec_rad)
    bx, by, bz = b[:, 0][None, :], b[:, 1][None, :], b[:, 2][None, :]
    uvw = np.empty((len(h), len(b), 3), dtype=np.float64)
    uvw[..., 0] = sh * bx + ch * by
    uvw[..., 1] = -sd * ch * bx + sd * sh * by + cd * bz
    uvw[..., 2] = cd * ch * bx - cd * sh * by + sd * bz
    return uvw


def source_directions(spec: SynthesisSpec) -> tuple[np.ndarray, np.ndarray]:
    """Absolute (RA, Dec) in rad (n_sources, 2) and exact (l, m, n) (n_sources, 3)."""
    ra0 = math.radians(spec.phase_centre_ra_deg)
    dec0 = math.radians(spec.phase_centre_dec_deg)
    arcsec = math.pi / (180 * 3600)
    radec = np.array(
        [
            (
                ra0 + s.offset_ra_arcsec * arcsec / math.cos(dec0),
                dec0 + s.offset_dec_arcsec * arcsec,
            )
            for s in spec.sources
        ],
        dtype=np.float64,
    ).reshape(-1, 2)
    ra, dec = radec[:, 0], radec[:, 1]
    d_ra = ra - ra0
    lmn = np.stack(
        [
            np.cos(dec) * np.sin(d_ra),
            np.sin(dec) * math.cos(dec0) - np.cos(dec) * math.sin(dec0) * np.cos(d_ra),
            np.sin(dec) * math.sin(dec0) + np.cos(dec) * math.cos(dec0) * np.cos(d_ra),
        ],
        axis=-1,
    )
    return radec, lmn


def _source_spectra(spec: SynthesisSpec) -> np.ndarray:
    """Flux density (n_sources, n_channels) in Jy."""
    ratio = spec.frequencies_hz / spec.reference_frequency_hz
    return np.array(
        [s.flux_jy * ratio**s.spectral_index for s in spec.sources], dtype=np.float64
    ).reshape(len(spec.sources), spec.n_channels)


def point_source_visibilities(
    uvw_m: np.ndarray,
    frequencies_hz: np.ndarray,
    lmn: np.ndarray,
    spectra_jy: np.ndarray,
    uvw_sign: int = MSV4_UVW_SIGN,
) -> np.ndarray:
    """Exact DFT ``sum_k S_k(nu) exp(-2 pi i (u l_k + v m_k + w (n_k - 1)) nu / c)``, with
    ``(u, v, w) = uvw_sign * uvw_m`` (default: stored MSv4 UVW in, as real data behave).

    ``uvw_m`` (..., 3) metres, ``frequencies_hz`` (n_chan,), ``lmn`` (n_src, 3),
    ``spectra_jy`` (n_src, n_chan). Returns complex64 (..., n_chan). Phases are computed in
    float64 (delay times frequency, reduced to a fraction of a turn before the exponential).
    On a uniform frequency grid the per-channel phase factor is a float64 complex recurrence,
    re-anchored with an exact exponential every 128 channels (error below 1e-13, 4-5x faster
    than one exponential per channel); otherwise one exponential per channel.
    """
    uvw_m = uvw_sign * np.asarray(uvw_m, dtype=np.float64)
    freqs = np.asarray(frequencies_hz, dtype=np.float64)
    lead = uvw_m.shape[:-1]
    n_chan = freqs.size
    flat = uvw_m.reshape(-1, 3)
    out = np.zeros((flat.shape[0], n_chan), dtype=np.complex64 if len(lmn) <= 1 else np.complex128)
    # uniform: on a line to within float64 rounding (the phase error it allows is below
    # 1e-8 turns for a 30 km baseline at 100 GHz)
    step = (freqs[-1] - freqs[0]) / (n_chan - 1) if n_chan > 1 else 0.0
    line = freqs[0] + step * np.arange(n_chan)
    uniform = n_chan > 1 and np.abs(freqs - line).max() <= 8 * np.spacing(np.abs(freqs).max())
    for (l_, m_, n_), spectrum in zip(np.asarray(lmn, dtype=np.float64), spectra_jy, strict=True):
        delay = (flat[:, 0] * l_ + flat[:, 1] * m_ + flat[:, 2] * (n_ - 1.0)) / C_M_S  # s
        for c0 in range(0, n_chan, _RECURRENCE_BLOCK if uniform else 1):
            c1 = min(n_chan, c0 + (_RECURRENCE_BLOCK if uniform else 1))
            turns = delay * freqs[c0]
            z = np.exp(-2j * np.pi * (turns - np.rint(turns)))
            if c1 - c0 > 1:
                dturns = delay * step
                dz = np.exp(-2j * np.pi * (dturns - np.rint(dturns)))
            for c in range(c0, c1):
                out[:, c] += spectrum[c] * z
                if c + 1 < c1:
                    z = z * dz
    return out.astype(np.complex64, copy=False).reshape(*lead, n_chan)


# ------------------------------------------------------------------------------------------
# Corruptions


def _draw_gains(spec: SynthesisSpec) -> np.ndarray | None:
    if spec.gain_amplitude_rms == 0 and spec.gain_phase_rms_deg == 0:
        return None
    rng = np.random.default_rng([spec.seed, _STREAM_GAINS])
    shape = (spec.n_antennas, 2)
    amplitude = np.maximum(0.05, 1.0 + spec.gain_amplitude_rms * rng.standard_normal(shape))
    phase = np.radians(spec.gain_phase_rms_deg) * rng.standard_normal(shape)
    return amplitude * np.exp(1j * phase)


def _draw_rfi_mask(spec: SynthesisSpec) -> np.ndarray | None:
    """(n_times, n_channels) mask with exactly round(fraction * cells) cells set, in bursts."""
    n_t, n_c = spec.n_times, spec.n_channels
    target = round(spec.rfi_fraction * n_t * n_c)
    if target == 0:
        return None
    mask = np.zeros((n_t, n_c), dtype=bool)
    if target == n_t * n_c:
        mask[:] = True
        return mask
    rng = np.random.default_rng([spec.seed, _STREAM_RFI_MASK])
    max_dt, max_dc = max(1, n_t // 8), max(1, n_c // 16)
    count = 0
    while count < target:
        dt = int(rng.integers(1, max_dt + 1))
        dc = int(rng.integers(1, max_dc + 1))
        t0 = int(rng.integers(0, n_t - dt + 1))
        c0 = int(rng.integers(0, n_c - dc + 1))
        new = np.argwhere(~mask[t0 : t0 + dt, c0 : c0 + dc])[: target - count]
        mask[t0 + new[:, 0], c0 + new[:, 1]] = True
        count += len(new)
    return mask


def _receptor_pairs(n_polarizations: int) -> list[tuple[int, int]]:
    labels = polarization_labels(n_polarizations)
    index = {"X": 0, "Y": 1}
    return [(index[p[0]], index[p[1]]) for p in labels]


@dataclass(frozen=True)
class _Plan:
    """Everything a block needs, derived once from the spec."""

    times: np.ndarray  # (n_times,) unix s, mid-points
    positions: np.ndarray  # (n_antennas, 3) ITRS m
    antenna_names: list[str]
    stations: list[str]
    antenna1: np.ndarray  # (n_baselines,)
    antenna2: np.ndarray
    radec: np.ndarray  # (n_sources, 2) rad
    lmn: np.ndarray  # (n_sources, 3)
    spectra: np.ndarray  # (n_sources, n_channels) Jy
    gains: np.ndarray | None  # (n_antennas, 2)
    gain_factor: np.ndarray | None  # (n_baselines, n_pol): g_p[rx] conj(g_q[ry])
    rfi_mask: np.ndarray | None  # (n_times, n_channels)

    @classmethod
    def from_spec(cls, spec: SynthesisSpec) -> _Plan:
        positions, names, stations = antenna_positions_itrs(spec)
        antenna1, antenna2 = baseline_antennas(spec.n_antennas)
        radec, lmn = source_directions(spec)
        gains = _draw_gains(spec)
        gain_factor = None
        if gains is not None:
            gain_factor = np.stack(
                [
                    gains[antenna1, rx] * np.conj(gains[antenna2, ry])
                    for rx, ry in _receptor_pairs(spec.n_polarizations)
                ],
                axis=-1,
            ).astype(np.complex64)
        return cls(
            times=spec.times_unix(),
            positions=positions,
            antenna_names=names,
            stations=stations,
            antenna1=antenna1,
            antenna2=antenna2,
            radec=radec,
            lmn=lmn,
            spectra=_source_spectra(spec),
            gains=gains,
            gain_factor=gain_factor,
            rfi_mask=_draw_rfi_mask(spec),
        )


def _compute_block(
    spec: SynthesisSpec, plan: _Plan, t0: int, t1: int
) -> tuple[np.ndarray, np.ndarray]:
    """UVW (tb, nbl, 3) and VISIBILITY (tb, nbl, nchan, npol) of time steps [t0, t1)."""
    ra0 = math.radians(spec.phase_centre_ra_deg)
    dec0 = math.radians(spec.phase_centre_dec_deg)
    uvw = compute_uvw(plan.positions, plan.antenna1, plan.antenna2, plan.times[t0:t1], ra0, dec0)
    stokes_i = point_source_visibilities(uvw, spec.frequencies_hz, plan.lmn, plan.spectra)
    n_pol = spec.n_polarizations
    vis = np.zeros((*stokes_i.shape, n_pol), dtype=np.complex64)
    for p, (rx, ry) in enumerate(_receptor_pairs(n_pol)):
        if rx == ry:
            vis[..., p] = stokes_i
    del stokes_i
    if plan.gain_factor is not None:
        vis *= plan.gain_factor[None, :, None, :]
    n_bl = len(plan.antenna1)
    for i, t in enumerate(range(t0, t1)):
        if plan.rfi_mask is not None and plan.rfi_mask[t].any():
            channels = np.flatnonzero(plan.rfi_mask[t])
            rng = np.random.default_rng([spec.seed, _STREAM_RFI, t])
            shape = (n_bl, channels.size, n_pol)
            amplitude = spec.rfi_amplitude_jy * rng.uniform(0.5, 1.5, shape)
            phase = rng.uniform(0, 2 * np.pi, shape)
            vis[i][:, channels, :] += (amplitude * np.exp(1j * phase)).astype(np.complex64)
        if spec.noise_jy > 0:
            rng = np.random.default_rng([spec.seed, _STREAM_NOISE, t])
            parts = vis[i].view(np.float32)  # (nbl, nchan, 2 * npol): re, im interleaved
            noise = rng.standard_normal(parts.shape, dtype=np.float32)
            noise *= np.float32(spec.noise_jy)
            parts += noise
    return uvw, vis


# ------------------------------------------------------------------------------------------
# Writing


def store_path(output: str | os.PathLike) -> Path:
    text = os.fspath(output)
    if not text.endswith("ps.zarr"):  # xradio's own rule
        text += ".ps.zarr"
    return Path(text)


def store_location(output: str | os.PathLike) -> str | Path:
    """:func:`store_path`, or for an ``s3://`` URL the URL with xradio's suffix."""
    if locations.is_url(output):
        text = str(output).rstrip("/")
        return text if text.endswith("ps.zarr") else text + ".ps.zarr"
    return store_path(output)


def _partition_name(store: str | Path) -> str:
    name = str(store).rstrip("/").rsplit("/", 1)[-1]
    stem = name[: -len("ps.zarr")].rstrip("._") or "synthetic"
    return f"{stem}_0"


def _iso(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _quantity(value: float, units: str) -> dict:
    return {"data": float(value), "dims": [], "attrs": {"units": units, "type": "quantity"}}


def _build_tree(spec: SynthesisSpec, plan: _Plan) -> xr.DataTree:
    """The MSv4 DataTree, with never-computed Dask placeholders for the large variables (their
    zarr chunks: ``block_times`` along time, whole along the other axes)."""
    times, positions, stations = plan.times, plan.positions, plan.stations
    antenna_names, antenna1, antenna2 = plan.antenna_names, plan.antenna1, plan.antenna2
    n_t, n_bl, n_c = spec.n_times, spec.n_baselines, spec.n_channels
    pols = list(polarization_labels(spec.n_polarizations))
    n_p = len(pols)
    tb = spec.block_times
    field_name = f"{spec.field_name}_0"
    names = np.array(antenna_names)
    width = max(len(n) for n in antenna_names)
    time_attrs = {
        "type": "time",
        "units": "s",
        "scale": "utc",
        "format": "unix",
        "integration_time": _quantity(spec.integration_s, "s"),
    }
    freq_attrs = {
        "type": "spectral_coord",
        "units": "Hz",
        "observer": "TOPO",
        "spectral_window_name": "spw_0",
        "spectral_window_intents": ["UNSPECIFIED"],
        "reference_frequency": {
            "attrs": {"units": "Hz", "observer": "TOPO", "type": "spectral_coord"},
            "data": spec.reference_frequency_hz,
            "dims": [],
        },
        "channel_width": _quantity(spec.channel_width_hz, "Hz"),
    }
    coords = {
        "time": ("time", times, time_attrs),
        "field_name": ("time", np.full(n_t, field_name, dtype="<U32")),
        "scan_name": (
            "time",
            np.full(n_t, "1", dtype="<U21"),
            {"scan_intents": ["OBSERVE_TARGET#ON_SOURCE"]},
        ),
        "baseline_id": ("baseline_id", np.arange(n_bl, dtype=np.int64)),
        "baseline_antenna1_name": ("baseline_id", names[antenna1].astype(f"<U{width}")),
        "baseline_antenna2_name": ("baseline_id", names[antenna2].astype(f"<U{width}")),
        "frequency": ("frequency", spec.frequencies_hz, freq_attrs),
        "polarization": ("polarization", np.array(pols, dtype="<U2")),
        "uvw_label": ("uvw_label", np.array(["u", "v", "w"], dtype="<U1")),
    }
    main_dims = ("time", "baseline_id", "frequency", "polarization")
    shapes = {
        "EFFECTIVE_INTEGRATION_TIME": ((n_t, n_bl), np.float64, ("time", "baseline_id")),
        "FLAG": ((n_t, n_bl, n_c, n_p), np.bool_, main_dims),
        "TIME_CENTROID": ((n_t, n_bl), np.float64, ("time", "baseline_id")),
        "UVW": ((n_t, n_bl, 3), np.float64, ("time", "baseline_id", "uvw_label")),
        "VISIBILITY": ((n_t, n_bl, n_c, n_p), np.complex64, main_dims),
        "WEIGHT": ((n_t, n_bl, n_c, n_p), np.float32, main_dims),
    }
    var_attrs = {
        "EFFECTIVE_INTEGRATION_TIME": {"type": "quantity", "units": "s"},
        "FLAG": {},
        "TIME_CENTROID": {"type": "time", "units": "s", "scale": "utc", "format": "unix"},
        "UVW": {"type": "uvw", "units": "m", "frame": "fk5"},
        "VISIBILITY": {"type": "quanta", "units": "Jy"},
        "WEIGHT": {},
    }
    compressor = zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")
    data_vars = {}
    chunks = {}
    for name, (shape, dtype, dims) in shapes.items():
        chunk = (tb, *shape[1:])
        chunks[name] = chunk
        placeholder = da.zeros(shape, dtype=dtype, chunks=chunk)
        data_vars[name] = xr.Variable(dims, placeholder, var_attrs[name])
    now = _now()
    attrs = {
        "schema_version": MSV4_SCHEMA_VERSION,
        "creator": {"software_name": "radps", "version": software_version()},
        "creation_date": now,
        "type": "visibility",
        "data_groups": {
            "base": {
                "correlated_data": "VISIBILITY",
                "flag": "FLAG",
                "weight": "WEIGHT",
                "field_and_source": "field_and_source_base_xds",
                "description": "Simulated point-source visibilities (radps_flows.core.synth)",
                "date": now,
                "uvw": "UVW",
            }
        },
        "observation_info": {
            "observer": ["radps synthesizer"],
            "release_date": _iso(float(times[0])),
            "project_UID": "",
            "observing_log": "",
        },
        "processor_info": {"type": "CORRELATOR", "sub_type": "SIMULATOR"},
    }
    main = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    for name, chunk in chunks.items():
        main[name].encoding = {"compressors": (compressor,), "chunks": list(chunk)}

    n_a = spec.n_antennas
    antenna = xr.Dataset(
        {
            "ANTENNA_DISH_DIAMETER": (
                "antenna_name",
                np.full(n_a, spec.dish_diameter_m),
                {"type": "quantity", "units": "m"},
            ),
            "ANTENNA_POSITION": (
                ("antenna_name", "cartesian_pos_label"),
                positions,
                {
                    "type": "location",
                    "units": "m",
                    "frame": "ITRS",
                    "coordinate_system": "geocentric",
                    "origin_object_name": "earth",
                },
            ),
            "ANTENNA_RECEPTOR_ANGLE": (
                ("antenna_name", "receptor_label"),
                np.tile([0.0, np.pi / 2], (n_a, 1)),
                {"type": "quantity", "units": "rad"},
            ),
        },
        coords={
            "antenna_name": ("antenna_name", names),
            "mount": ("antenna_name", np.full(n_a, "ALT-AZ", dtype="<U6")),
            "station_name": ("antenna_name", np.array(stations)),
            "telescope_name": ("antenna_name", np.full(n_a, spec.telescope_name)),
            "cartesian_pos_label": ("cartesian_pos_label", np.array(["x", "y", "z"])),
            "receptor_label": ("receptor_label", np.array(["pol_0", "pol_1"])),
            "polarization_type": (
                ("antenna_name", "receptor_label"),
                np.tile(np.array(["X", "Y"], dtype="<U1"), (n_a, 1)),
            ),
        },
        attrs={
            "type": "antenna",
            "relocatable_antennas": False,
            "overall_telescope_name": spec.telescope_name,
        },
    )
    direction = np.radians([[spec.phase_centre_ra_deg, spec.phase_centre_dec_deg]])
    sky = {"type": "sky_coord", "units": "rad", "frame": "fk5"}
    field_and_source = xr.Dataset(
        {
            "FIELD_PHASE_CENTER_DIRECTION": (("field_name", "sky_dir_label"), direction, sky),
            "LINE_REST_FREQUENCY": (
                ("field_name", "line_label"),
                np.zeros((1, 1)),
                {"type": "spectral_coord", "units": "Hz", "observer": "lsrk"},
            ),
            "LINE_SYSTEMIC_VELOCITY": (
                ("field_name", "line_label"),
                np.zeros((1, 1)),
                {"type": "quantity", "units": "m/s"},
            ),
            "SOURCE_DIRECTION": (("field_name", "sky_dir_label"), direction.copy(), sky),
        },
        coords={
            "field_name": ("field_name", np.array([field_name], dtype="<U32")),
            "source_name": ("field_name", np.array([field_name], dtype="<U32")),
            "sky_dir_label": ("sky_dir_label", np.array(["ra", "dec"], dtype="<U3")),
            "line_label": ("line_label", np.array(["0"], dtype="<U21")),
            "line_name": (("field_name", "line_label"), np.array([[""]], dtype="<U1")),
        },
        attrs={"type": "field_and_source"},
    )
    tree = xr.DataTree(main)
    tree["antenna_xds"] = antenna
    tree["field_and_source_base_xds"] = field_and_source
    return tree


def _write_block(arrays: dict, t0: int, t1: int, values: dict[str, np.ndarray]) -> None:
    for name, value in values.items():
        arrays[name][t0:t1] = value


@contextlib.contextmanager
def _quiet_zarr():
    """Silence the warnings zarr gives for what xradio writes on purpose (fixed-length
    unicode arrays, consolidated metadata); xradio filters them globally on import."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        # a folder of an object store that deletes emptied a moment ago (SeaweedFS lists it
        # for minutes), seen while the new store's first group is created
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        yield


def _remove_existing(store: Path) -> None:
    if store.is_dir() and ((store / "zarr.json").exists() or not any(store.iterdir())):
        shutil.rmtree(store)
    else:
        raise FileExistsError(
            f"{store} exists and does not look like a zarr store: not removing it"
        )


_LARGE_VARIABLES = (
    "VISIBILITY",
    "FLAG",
    "WEIGHT",
    "UVW",
    "TIME_CENTROID",
    "EFFECTIVE_INTEGRATION_TIME",
)


def _remove_created(store: str | Path) -> None:
    if isinstance(store, Path):
        shutil.rmtree(store, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        locations.filesystem().rm(locations.key_of(store), recursive=True)


def _write_store(
    store: str | Path,
    partition: str,
    spec: SynthesisSpec,
    plan: _Plan,
    created: list[str | Path],
) -> None:
    """Write the processing set as xradio's streamed conversion does: metadata first (no
    consolidated metadata, so an interrupted write opens as incomplete), then the large data
    variables block by block straight into their zarr arrays, then the consolidated metadata
    of the MSv4 and of the root."""
    tree = _build_tree(spec, plan)
    # "w-" refuses a store already there; on an object store its emptiness test also sees a
    # folder that deletes emptied a moment ago (SeaweedFS lists those for minutes), so there
    # the caller (a run's claimed output, radps_flows.object_output) vouches for the place
    create = "w" if isinstance(store, str) else "w-"
    xr.DataTree().to_zarr(str(store), mode=create, zarr_format=3)
    created.append(store)
    part_path = f"{store}/{partition}"
    tree.to_zarr(part_path, mode=create, zarr_format=3, compute=False, consolidated=False)
    group = zarr.open_group(part_path, mode="r+", zarr_format=3, use_consolidated=False)
    arrays = {name: group[name] for name in _LARGE_VARIABLES}
    weight = np.float32(1.0 / spec.noise_jy**2 if spec.noise_jy > 0 else 1.0)
    n_bl = spec.n_baselines
    # Block k+1 is computed while block k is written (numpy and the compressors release the
    # GIL); at most two blocks are in memory.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-write") as pool:
        pending = None
        for t0 in range(0, spec.n_times, spec.block_times):
            t1 = min(spec.n_times, t0 + spec.block_times)
            uvw, vis = _compute_block(spec, plan, t0, t1)
            values = {
                "VISIBILITY": vis,
                "UVW": uvw,
                "FLAG": np.zeros(vis.shape, dtype=bool),
                "WEIGHT": np.full(vis.shape, weight, dtype=np.float32),
                "TIME_CENTROID": np.repeat(plan.times[t0:t1, None], n_bl, axis=1),
                "EFFECTIVE_INTEGRATION_TIME": np.full((t1 - t0, n_bl), spec.integration_s),
            }
            del uvw, vis
            if pending is not None:
                pending.result()
            pending = pool.submit(_write_block, arrays, t0, t1, values)
            del values
        if pending is not None:
            pending.result()
    zarr.consolidate_metadata(str(part_path), zarr_format=3)
    root = zarr.open_group(str(store), mode="r+", zarr_format=3)
    root.attrs["type"] = "processing_set"
    zarr.consolidate_metadata(str(store), zarr_format=3)


def synthesize_processing_set(
    output: str | os.PathLike, spec: SynthesisSpec | None = None, *, overwrite: bool = False
) -> SynthesisResult:
    """Simulate ``spec`` (default: ``SynthesisSpec()``) and write it as an MSv4 processing set.

    ``.ps.zarr`` is appended to ``output`` unless it already ends with ``ps.zarr`` (xradio's
    rule); the result's ``path`` is the store written. The partition is named after the store
    (``sim.ps.zarr`` -> ``sim_0``). An existing store raises FileExistsError unless
    ``overwrite`` (then it is removed first, if it is a zarr store or an empty folder). If
    writing fails, the partly written store is removed. See the module docstring for the
    conventions.
    """
    spec = SynthesisSpec() if spec is None else spec
    started = time.perf_counter()
    store = store_location(output)
    if isinstance(store, Path):
        if store.exists() or store.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{store} exists (pass overwrite=True to replace it)")
            _remove_existing(store)
        store.parent.mkdir(parents=True, exist_ok=True)
    partition = _partition_name(store)
    plan = _Plan.from_spec(spec)
    created: list[str | Path] = []
    try:
        with _quiet_zarr():
            _write_store(store, partition, spec, plan, created)
    except BaseException:
        if created:  # never remove a store this call did not create
            _remove_created(store)
        raise
    return SynthesisResult(
        path=store,
        partition=partition,
        n_visibilities=spec.n_visibilities,
        n_rows=spec.n_rows,
        gains=plan.gains,
        rfi_mask=plan.rfi_mask,
        antenna_names=tuple(plan.antenna_names),
        polarizations=polarization_labels(spec.n_polarizations),
        source_ra_dec_rad=plan.radec,
        source_lmn=plan.lmn,
        elapsed_s=time.perf_counter() - started,
        spec=spec,
    )
