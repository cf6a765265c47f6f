"""Dirty imaging against an exact direct Fourier transform.

Conventions under test (textbook): ``V = S exp(-2 pi i (u l + v m + w (n - 1)))`` with ``l``
increasing towards east (RA increasing), which in the FITS orientation of our images (numpy
``[y, x]``, RA increasing to the left) is towards *smaller* ``x``: a source at ``(l, m)`` lands
on ``x = N/2 - l/cell``, ``y = N/2 + m/cell``. xradio's UVW is the negative of the textbook
vector (measured against CASA), which the MSv4 tests below build in.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from radps_flows.core.imager import make_dirty_image
from radps_flows.core.imaging import MSV4_UVW_SIGN, stokes_i
from tests.oracles import dirty_image_from_arrays

C = 299_792_458.0
N = 64
#: 30 arcsec cells: a 0.53 deg field where the w term matters (w (n-1) ~ 0.05 turns at the edge).
CELL = math.radians(30 / 3600)
FREQ = np.array([1.30e9, 1.40e9, 1.50e9])
TEXTBOOK = 1
"""The exact DFT here uses textbook UVW, (u, v, w) toward the source: no sign flip."""


def _uvw(rng: np.random.Generator, nrow: int) -> np.ndarray:
    return rng.normal(size=(nrow, 3)) * np.array([600.0, 600.0, 300.0])


def _model_vis(uvw: np.ndarray, freq: np.ndarray, sources: list[tuple[float, float, float]]):
    """Textbook visibilities (nrow, nchan) of point sources ``(flux, l, m)``."""
    vis = np.zeros((len(uvw), len(freq)), dtype=np.complex128)
    for flux, l0, m0 in sources:
        n0 = math.sqrt(1 - l0 * l0 - m0 * m0)
        phase = uvw @ np.array([l0, m0, n0 - 1])  # metres
        vis += flux * np.exp(-2j * np.pi * phase[:, None] * freq[None, :] / C)
    return vis


def _dft_image(uvw, freq, vis, weight) -> np.ndarray:
    """Exact natural-weighted dirty image [y, x] in FITS orientation, pixel by pixel."""
    offsets = (np.arange(N) - N // 2) * CELL
    mm, ll = np.meshgrid(offsets, -offsets, indexing="ij")  # [y, x]: l decreases with x
    n = np.sqrt(1 - ll * ll - mm * mm)
    image = np.zeros((N, N))
    for ic, f in enumerate(freq):
        u, v, w = (uvw[:, :, None, None] * f / C).transpose(1, 0, 2, 3)
        phase = np.exp(2j * np.pi * (u * ll + v * mm + w * (n - 1)))
        image += np.einsum("r,ryx->yx", weight[:, ic] * vis[:, ic], phase).real
    return image / weight.sum()


def _pix(l0: float, m0: float) -> tuple[int, int]:
    """Numpy (y, x) of the pixel centred on (l, m)."""
    return N // 2 + round(m0 / CELL), N // 2 - round(l0 / CELL)


def test_matches_direct_fourier_transform():
    rng = np.random.default_rng(42)
    uvw = _uvw(rng, 150)
    sources = [(1.0, 0.0, 0.0), (0.7, 9.3 * CELL, -4.6 * CELL), (0.4, -25 * CELL, 21.4 * CELL)]
    vis = _model_vis(uvw, FREQ, sources)
    weight = rng.uniform(0.5, 2.0, size=vis.shape)
    expected = _dft_image(uvw, FREQ, vis, weight)
    got = dirty_image_from_arrays(
        uvw, FREQ, vis, weight, imsize=N, cell_rad=CELL, uvw_sign=TEXTBOOK
    )
    assert got.shape == (N, N)
    assert np.abs(got - expected).max() <= 1e-4 * expected.max()
    # the same with single precision visibilities, as xradio stores them
    got32 = dirty_image_from_arrays(
        uvw,
        FREQ,
        vis.astype(np.complex64),
        weight.astype(np.float32),
        imsize=N,
        cell_rad=CELL,
        uvw_sign=TEXTBOOK,
    )
    assert np.abs(got32 - expected).max() <= 1e-4 * expected.max()


def test_unit_source_at_phase_centre_gives_one():
    rng = np.random.default_rng(1)
    uvw = _uvw(rng, 200)
    vis = _model_vis(uvw, FREQ, [(1.0, 0.0, 0.0)])
    image = dirty_image_from_arrays(
        uvw, FREQ, vis, np.ones(vis.shape), imsize=N, cell_rad=CELL, uvw_sign=TEXTBOOK
    )
    assert image[N // 2, N // 2] == pytest.approx(1.0, abs=1e-3)
    assert np.unravel_index(image.argmax(), image.shape) == (N // 2, N // 2)


@pytest.mark.parametrize(("dl", "dm"), [(5, 3), (-7, 2), (4, -11)])
def test_off_centre_source_lands_on_its_pixel(dl: int, dm: int):
    """+l (east) goes to smaller x; +m (north) to larger y."""
    rng = np.random.default_rng(7)
    uvw = _uvw(rng, 200)
    l0, m0 = dl * CELL, dm * CELL
    vis = _model_vis(uvw, FREQ, [(1.0, l0, m0)])
    image = dirty_image_from_arrays(
        uvw, FREQ, vis, np.ones(vis.shape), imsize=N, cell_rad=CELL, uvw_sign=TEXTBOOK
    )
    peak = np.unravel_index(image.argmax(), image.shape)
    assert peak == _pix(l0, m0) == (N // 2 + dm, N // 2 - dl)
    assert image[peak] == pytest.approx(1.0, abs=1e-3)


# --- the MSv4 path: Stokes I, flags, NaN padding, several partitions ---------------------------


def _msv4_dataset(
    uvw_tb: np.ndarray,
    vis_i: np.ndarray,
    ntime: int,
    pols=("RR", "RL", "LR", "LL"),
    phase_center=(2.0, 0.3),
) -> xr.Dataset:
    """Minimal xradio-like dataset: (time, baseline_id, frequency, polarization), MS signs."""
    nrow, nchan = vis_i.shape
    nbl = nrow // ntime
    shape = (ntime, nbl, nchan, len(pols))
    vis = np.zeros(shape, dtype=np.complex64)
    for ip, p in enumerate(pols):
        if p in ("RR", "LL", "XX", "YY"):
            vis[..., ip] = vis_i.reshape(ntime, nbl, nchan)
        else:
            vis[..., ip] = 0.3 + 0.2j  # cross hands must be ignored
    return xr.Dataset(
        {
            "VISIBILITY": (("time", "baseline_id", "frequency", "polarization"), vis),
            "FLAG": (("time", "baseline_id", "frequency", "polarization"), np.zeros(shape, bool)),
            "WEIGHT": (
                ("time", "baseline_id", "frequency", "polarization"),
                np.ones(shape, np.float32),
            ),
            "UVW": (
                ("time", "baseline_id", "uvw_label"),
                (MSV4_UVW_SIGN * uvw_tb).reshape(ntime, nbl, 3),
            ),
        },
        coords={
            "time": 1.27e9 + 10.0 * np.arange(ntime),
            "baseline_id": np.arange(nbl),
            "frequency": ("frequency", FREQ, {"channel_width": {"data": 1e8, "dims": []}}),
            "polarization": list(pols),
            "uvw_label": ["u", "v", "w"],
            "baseline_antenna1_name": ("baseline_id", [f"a{i}" for i in range(nbl)]),
            "baseline_antenna2_name": ("baseline_id", [f"b{i}" for i in range(nbl)]),
        },
        attrs={
            "partition_name": "synthetic_0",
            "phase_center": {
                "ra": phase_center[0],
                "dec": phase_center[1],
                "frame": "fk5",
                "field_name": "F",
            },
        },
    )


@pytest.fixture
def two_sources():
    rng = np.random.default_rng(3)
    uvw = _uvw(rng, 120)
    sources = [(1.0, 0.0, 0.0), (0.5, 6 * CELL, 10 * CELL)]
    vis = _model_vis(uvw, FREQ, sources)
    return uvw, vis, _dft_image(uvw, FREQ, vis, np.ones(vis.shape))


def test_make_dirty_image_msv4_matches_dft(two_sources):
    uvw, vis, expected = two_sources
    ds = _msv4_dataset(uvw, vis, ntime=6)
    image = make_dirty_image([ds], imsize=N, cell_arcsec=30.0)
    assert image.dims == ("y", "x")
    assert np.abs(image.values - expected).max() <= 1e-4 * expected.max()
    assert np.unravel_index(image.values.argmax(), (N, N)) == (N // 2, N // 2)
    assert image.attrs["phase_center_ra_rad"] == 2.0
    assert image.attrs["phase_center_dec_rad"] == 0.3
    assert image.attrs["reference_pixel"] == [N // 2, N // 2]
    assert image.attrs["reference_frequency_hz"] == pytest.approx(1.4e9)
    assert image.attrs["bandwidth_hz"] == pytest.approx(0.3e9)
    assert image.attrs["nvis"] == vis.size
    assert image.attrs["sum_weights"] == pytest.approx(2 * vis.size)  # RR + LL
    assert image.attrs["bunit"] == "Jy/beam"
    assert float(image["l"][N // 2 - 1]) == pytest.approx(CELL)  # east is to the left


def test_flags_nan_padding_and_single_hand(two_sources):
    uvw, vis, expected = two_sources
    ds = _msv4_dataset(uvw, vis, ntime=6)
    # flagged RR with garbage: LL alone carries those samples
    ds["VISIBILITY"][0, :, :, 0] = 1e6
    ds["FLAG"][0, :, :, 0] = True
    # a missing time x baseline slot as xradio pads it: NaN everywhere, FLAG False
    ds["VISIBILITY"][1, 3] = np.nan
    ds["WEIGHT"][1, 3] = np.nan
    ds["UVW"][1, 3] = np.nan
    image = make_dirty_image([ds], imsize=N, cell_arcsec=30.0)
    nbl = len(uvw) // 6
    weight = np.full(vis.shape, 2.0)  # RR + LL
    weight[:nbl] = 1.0  # time 0: LL only
    keep = np.ones(len(uvw), bool)
    keep[1 * nbl + 3] = False
    ref = _dft_image(uvw[keep], FREQ, vis[keep], weight[keep])
    assert np.isfinite(image.values).all()
    assert np.abs(image.values - ref).max() <= 1e-4 * ref.max()
    # XX/YY and a single parallel hand give the same Stokes I
    for pols in (("XX", "YY"), ("LL",)):
        single = make_dirty_image([_msv4_dataset(uvw, vis, 6, pols)], imsize=N, cell_arcsec=30.0)
        assert np.abs(single.values - expected).max() <= 1e-4 * expected.max()


def test_partitions_combine_like_one(two_sources):
    uvw, vis, _ = two_sources
    whole = _msv4_dataset(uvw, vis, ntime=6)
    parts = [whole.isel(time=slice(0, 2)), whole.isel(time=slice(2, 6))]
    a = make_dirty_image([whole], imsize=N, cell_arcsec=30.0)
    b = make_dirty_image(parts, imsize=N, cell_arcsec=30.0)
    np.testing.assert_allclose(b.values, a.values, atol=1e-6)
    assert b.attrs["sum_weights"] == a.attrs["sum_weights"]


def test_refuses_different_phase_centres(two_sources):
    uvw, vis, _ = two_sources
    a = _msv4_dataset(uvw, vis, 6)
    b = _msv4_dataset(uvw, vis, 6, phase_center=(2.0, 0.31))
    with pytest.raises(ValueError, match="phase centre"):
        make_dirty_image([a, b], imsize=N, cell_arcsec=30.0)


def test_stokes_i_weights():
    vis = np.array([[1 + 1j, 9, 9, 3 + 1j], [np.nan, 9, 9, 2.0]], dtype=np.complex64)
    flag = np.zeros(vis.shape, bool)
    weight = np.array([[1.0, 1, 1, 3.0], [1.0, 1, 1, 2.0]], dtype=np.float32)
    vis_i, w_i = stokes_i(vis, flag, weight, ["RR", "RL", "LR", "LL"])
    np.testing.assert_allclose(vis_i, [(1 + 1j + 3 * (3 + 1j)) / 4, 2.0])
    np.testing.assert_allclose(w_i, [4.0, 2.0])
    flag[0, 3] = True
    vis_i, w_i = stokes_i(vis, flag, weight, ["RR", "RL", "LR", "LL"])
    np.testing.assert_allclose(vis_i[0], 1 + 1j)
    assert w_i[0] == 1.0
    with pytest.raises(ValueError, match="Stokes I"):
        stokes_i(vis, flag, weight, ["RL", "LR", "RL", "LR"])


def test_bad_geometry():
    with pytest.raises(ValueError, match="even"):
        dirty_image_from_arrays(
            np.zeros((1, 3)),
            FREQ,
            np.ones((1, 3)),
            np.ones((1, 3)),
            imsize=63,
            cell_rad=CELL,
            uvw_sign=TEXTBOOK,
        )


def test_smallest_image_the_parameter_rules_allow_is_made(two_sources):
    """The pipeline's parameter rules accept an imsize of GRIDDER_MIN_PIXELS: the imager
    makes it too (it once refused anything under 32 at run time)."""
    from radps_flows.parameter_rules import GRIDDER_MIN_PIXELS

    uvw, vis, _ = two_sources
    ds = _msv4_dataset(uvw, vis, ntime=6)
    image = make_dirty_image([ds], imsize=GRIDDER_MIN_PIXELS, cell_arcsec=30.0)
    assert image.shape == (GRIDDER_MIN_PIXELS, GRIDDER_MIN_PIXELS)
    assert np.unravel_index(image.values.argmax(), image.shape) == (8, 8)
    with pytest.raises(ValueError, match=f"at least {GRIDDER_MIN_PIXELS}"):
        make_dirty_image([ds], imsize=GRIDDER_MIN_PIXELS - 2, cell_arcsec=30.0)
