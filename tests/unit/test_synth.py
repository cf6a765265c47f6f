"""Tests of the MSv4 synthesizer (radps_flows.core.synth)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radps_flows.core.synth import (
    PointSource,
    SynthesisSpec,
    compute_uvw,
    point_source_visibilities,
    synthesize_processing_set,
)
from tests.conftest import shared_dir, unpack

xradio_ms = pytest.importorskip("xradio.measurement_set")
from xradio.schema.check import check_datatree  # noqa: E402

ALMA_TAR = shared_dir() / "data" / "X5707_1spw_1scan_10chan_1time_1bl_noatm.ms.tar.gz"
C = 299_792_458.0
TINY = SynthesisSpec(n_antennas=4, n_times=3, n_channels=5, n_polarizations=4, chunk_times=2)


def _open(result):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = xradio_ms.open_processing_set(str(result.path))
    return tree, tree[result.partition]


def _load(result, names=("VISIBILITY", "UVW", "FLAG", "WEIGHT")):
    _, node = _open(result)
    return {name: node.ds[name].values for name in names} | {
        "frequency": node.ds.frequency.values,
        "time": node.ds.time.values,
    }


def _convert(ms: Path, out: Path) -> tuple[xr.DataTree, xr.DataTree]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's fixed-length unicode and consolidation notes
        xradio_ms.convert_msv2_to_processing_set(in_file=str(ms), out_file=str(out))
        tree = xr.open_datatree(str(out) + ".ps.zarr", engine="zarr")
        tree.load()
    return tree, next(iter(tree.children.values()))


@pytest.fixture(scope="module")
def vla_reference(vla_ms, tmp_path_factory):
    """xradio's conversion of the real VLA MS (conftest's ``vla_ms``)."""
    return _convert(vla_ms, tmp_path_factory.mktemp("vla") / "ref")


@pytest.fixture(scope="module")
def alma_reference(tmp_path_factory):
    """xradio's conversion of the tiny real ALMA MS (one baseline, 40 times)."""
    if not ALMA_TAR.is_file():
        pytest.skip(f"ALMA test data not found: {ALMA_TAR} (set RADPS_SHARED_DIR)")
    tmp = tmp_path_factory.mktemp("alma")
    unpack(ALMA_TAR, tmp)
    return _convert(next(tmp.glob("*.ms")), tmp / "ref")


# --- structure ---------------------------------------------------------------------------


def test_store_opens_with_xradio_and_passes_schema_check(tmp_path):
    result = synthesize_processing_set(tmp_path / "sim", TINY)
    assert result.path == tmp_path / "sim.ps.zarr"
    assert result.partition == "sim_0"
    tree, node = _open(result)
    assert tree.attrs["type"] == "processing_set"
    assert list(tree.children) == ["sim_0"]
    assert len(check_datatree(tree)) == 0, str(check_datatree(tree))
    ds = node.ds
    assert dict(ds.sizes) == {
        "time": 3,
        "baseline_id": 6,
        "frequency": 5,
        "polarization": 4,
        "uvw_label": 3,
    }
    assert ds.VISIBILITY.dtype == np.complex64
    assert list(ds.polarization.values) == ["XX", "XY", "YX", "YY"]
    assert result.n_visibilities == 3 * 6 * 5 * 4 == ds.VISIBILITY.size
    assert result.n_rows == 18
    group = ds.attrs["data_groups"]["base"]
    assert (group["correlated_data"], group["flag"], group["weight"], group["uvw"]) == (
        "VISIBILITY",
        "FLAG",
        "WEIGHT",
        "UVW",
    )
    field = node[group["field_and_source"]].ds
    np.testing.assert_allclose(
        field.FIELD_PHASE_CENTER_DIRECTION.values[0],
        np.radians([TINY.phase_centre_ra_deg, TINY.phase_centre_dec_deg]),
    )
    ants = node["antenna_xds"].ds
    assert tuple(ants.antenna_name.values) == result.antenna_names
    assert set(ds.baseline_antenna1_name.values) | set(ds.baseline_antenna2_name.values) == set(
        result.antenna_names
    )
    np.testing.assert_allclose(
        ds.frequency.values, TINY.start_freq_hz + TINY.channel_width_hz * np.arange(5)
    )
    np.testing.assert_allclose(np.diff(ds.time.values), TINY.integration_s)
    values = _load(result, ("FLAG", "WEIGHT", "TIME_CENTROID"))
    assert not values["FLAG"].any()
    assert (values["WEIGHT"] == 1).all()
    np.testing.assert_array_equal(
        values["TIME_CENTROID"], np.broadcast_to(ds.time.values[:, None], (3, 6))
    )


def _signature(node: xr.DataTree) -> dict:
    """Names, dims, dtype kinds and attribute names of a node's variables."""
    ds = node.to_dataset(inherit=False)
    return {
        name: (var.dims, var.dtype.kind, sorted(var.attrs)) for name, var in ds.variables.items()
    }


def test_structure_matches_xradio_conversion_of_a_real_ms(tmp_path, vla_reference):
    _, ref = vla_reference
    result = synthesize_processing_set(tmp_path / "sim", SynthesisSpec(n_polarizations=4))
    _, node = _open(result)
    assert _signature(node) == _signature(ref)
    assert sorted(node.attrs) == sorted(ref.attrs)
    assert sorted(node.attrs["data_groups"]["base"]) == sorted(ref.attrs["data_groups"]["base"])
    assert sorted(node.children) == sorted(ref.children)
    for child in ref.children:
        assert _signature(node[child]) == _signature(ref[child]), child
        assert sorted(node[child].attrs) == sorted(ref[child].attrs), child


def test_uvw_sign_matches_xradio_conversion_of_a_real_ms(alma_reference):
    """The stored UVW of a real (ALMA) MS are R(H, dec) (X_ant1 - X_ant2): compute_uvw gives
    them to the precession error (0.3 m of 67 m); the opposite sign misses by 2|uvw|."""
    _, ref = alma_reference
    ds = ref.ds
    ants = ref["antenna_xds"].ds
    ra, dec = ref["field_and_source_base_xds"].ds.FIELD_PHASE_CENTER_DIRECTION.values[0]
    names = list(ants.antenna_name.values)
    a1 = np.array([names.index(n) for n in ds.baseline_antenna1_name.values])
    a2 = np.array([names.index(n) for n in ds.baseline_antenna2_name.values])
    uvw = compute_uvw(ants.ANTENNA_POSITION.values, a1, a2, ds.time.values, ra, dec)
    stored = ds.UVW.values
    scale = np.abs(stored).max()
    assert np.abs(uvw - stored).max() < 0.01 * scale
    assert np.abs(uvw + stored).max() > scale


# --- exactness ---------------------------------------------------------------------------


def _gmst_era(unix):
    """GMST from the Earth rotation angle (IAU 2006, UT1 = UTC): independent of synth's."""
    jd = unix / 86400.0 + 2440587.5 - 2451545.0
    era = 2 * np.pi * (0.7790572732640 + 1.00273781191135448 * jd)
    t = jd / 36525.0
    arcsec = 0.014506 + 4612.156534 * t + 1.3915817 * t**2
    return era + np.radians(arcsec / 3600.0)


def test_uvw_follow_earth_rotation_from_the_stored_antennas(tmp_path):
    result = synthesize_processing_set(tmp_path / "sim", TINY)
    _, node = _open(result)
    ds, ants = node.ds, node["antenna_xds"].ds
    pos = dict(zip(ants.antenna_name.values, ants.ANTENNA_POSITION.values, strict=True))
    b = np.array(
        [
            pos[p] - pos[q]
            for p, q in zip(
                ds.baseline_antenna1_name.values, ds.baseline_antenna2_name.values, strict=True
            )
        ]
    )
    ra, dec = np.radians([TINY.phase_centre_ra_deg, TINY.phase_centre_dec_deg])
    h = _gmst_era(ds.time.values)[:, None] - ra
    expected = np.stack(
        [
            np.sin(h) * b[:, 0] + np.cos(h) * b[:, 1],
            -np.sin(dec) * np.cos(h) * b[:, 0]
            + np.sin(dec) * np.sin(h) * b[:, 1]
            + np.cos(dec) * b[:, 2],
            np.cos(dec) * np.cos(h) * b[:, 0]
            - np.cos(dec) * np.sin(h) * b[:, 1]
            + np.sin(dec) * b[:, 2],
        ],
        axis=-1,
    )
    np.testing.assert_allclose(ds.UVW.values, expected, atol=1e-3)


def _independent_dft(spec: SynthesisSpec, uvw_m, freqs):
    """sum_k S_k exp(-2 pi i (u l + v m + w (n - 1))) in complex128, from the spec alone; the
    textbook (u, v, w) is minus the stored MSv4 UVW, as on real CASA data."""
    ra0, dec0 = math.radians(spec.phase_centre_ra_deg), math.radians(spec.phase_centre_dec_deg)
    ref = spec.reference_frequency_hz
    vis = np.zeros((*uvw_m.shape[:-1], freqs.size), dtype=np.complex128)
    for s in spec.sources:
        ra = ra0 + math.radians(s.offset_ra_arcsec / 3600) / math.cos(dec0)
        dec = dec0 + math.radians(s.offset_dec_arcsec / 3600)
        l = math.cos(dec) * math.sin(ra - ra0)  # noqa: E741
        m = math.sin(dec) * math.cos(dec0) - math.cos(dec) * math.sin(dec0) * math.cos(ra - ra0)
        n = math.sqrt(1 - l * l - m * m)
        u, v, w = (-uvw_m[..., k, None] * freqs / C for k in range(3))
        flux = s.flux_jy * (freqs / ref) ** s.spectral_index
        vis += flux * np.exp(-2j * np.pi * (u * l + v * m + w * (n - 1)))
    return vis


SOURCES = (
    PointSource(1.0),
    PointSource(0.5, offset_ra_arcsec=40.0, offset_dec_arcsec=-25.0, spectral_index=-0.7),
    PointSource(0.25, offset_ra_arcsec=-1500.0, offset_dec_arcsec=1100.0, spectral_index=1.0),
)


def test_visibilities_equal_an_independent_dft(tmp_path):
    spec = SynthesisSpec(
        n_antennas=5,
        n_times=4,
        n_channels=6,
        n_polarizations=4,
        sources=SOURCES,
        array_radius_m=3000.0,
        chunk_times=3,
    )
    result = synthesize_processing_set(tmp_path / "sim", spec)
    data = _load(result)
    expected = _independent_dft(spec, data["UVW"], data["frequency"])
    total = sum(s.flux_jy for s in SOURCES) * 2
    vis = data["VISIBILITY"]
    assert np.abs(vis[..., 0] - expected).max() <= 1e-6 * total
    assert np.abs(vis[..., 3] - expected).max() <= 1e-6 * total
    assert not vis[..., 1:3].any()
    # the far source makes w matter: ignoring the w term would be visibly wrong
    no_w = _independent_dft(spec, data["UVW"] * [1, 1, 0], data["frequency"])
    assert np.abs(no_w - expected).max() > 1e-3


def test_phase_recurrence_stays_exact_over_many_channels():
    rng = np.random.default_rng(1)
    uvw = rng.uniform(-5e4, 5e4, (7, 3))
    freqs = 1.0e9 + 0.25e6 * np.arange(1000)
    lmn = np.array([[0.01, -0.02, math.sqrt(1 - 0.01**2 - 0.02**2)]])
    got = point_source_visibilities(uvw, freqs, lmn, np.ones((1, freqs.size)), uvw_sign=1)
    phase = -2 * np.pi * (uvw @ (lmn[0] - [0, 0, 1]))[:, None] * freqs / C
    assert np.abs(got - np.exp(1j * phase)).max() < 1e-6
    # a non-uniform grid takes the direct path
    freqs2 = freqs[[0, 3, 4, 100, 999]]
    got2 = point_source_visibilities(uvw, freqs2, lmn, np.ones((1, 5)), uvw_sign=1)
    np.testing.assert_allclose(got2, got[:, [0, 3, 4, 100, 999]], atol=1e-6)


# --- corruptions -------------------------------------------------------------------------


def test_gains_multiply_the_model_and_are_reported(tmp_path):
    base = SynthesisSpec(
        n_antennas=6, n_times=3, n_channels=4, n_polarizations=4, sources=SOURCES[:2]
    )
    clean = synthesize_processing_set(tmp_path / "clean", base)
    assert clean.gains is None
    spec = dataclasses.replace(base, gain_amplitude_rms=0.2, gain_phase_rms_deg=30.0)
    corrupted = synthesize_processing_set(tmp_path / "gains", spec)
    g = corrupted.gains
    assert g.shape == (6, 2) and np.iscomplexobj(g)
    v0 = _load(clean)["VISIBILITY"]
    v1 = _load(corrupted)["VISIBILITY"]
    _, node = _open(corrupted)
    names = list(corrupted.antenna_names)
    p = np.array([names.index(n) for n in node.ds.baseline_antenna1_name.values])
    q = np.array([names.index(n) for n in node.ds.baseline_antenna2_name.values])
    for pol, (rx, ry) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        factor = g[p, rx] * np.conj(g[q, ry])
        np.testing.assert_allclose(v1[..., pol], factor[None, :, None] * v0[..., pol], atol=1e-5)
    assert np.abs(np.angle(g)).max() > np.radians(5)  # really corrupted


def test_rfi_mask_has_the_requested_fraction_and_marks_the_rfi(tmp_path):
    base = SynthesisSpec(n_antennas=4, n_times=40, n_channels=25, chunk_times=7)
    clean = synthesize_processing_set(tmp_path / "clean", base)
    assert clean.rfi_mask is None
    spec = dataclasses.replace(base, rfi_fraction=0.1, rfi_amplitude_jy=20.0)
    result = synthesize_processing_set(tmp_path / "rfi", spec)
    mask = result.rfi_mask
    assert mask.shape == (40, 25) and mask.sum() == 100
    diff = np.abs(_load(result)["VISIBILITY"] - _load(clean)["VISIBILITY"])
    in_rfi = np.broadcast_to(mask[:, None, :, None], diff.shape)
    assert (diff[~in_rfi] == 0).all()
    hit = diff.transpose(0, 2, 1, 3)[mask]
    assert hit.min() >= 20.0 * 0.5 * 0.999 and hit.max() <= 20.0 * 1.5 * 1.001


def test_noise_has_the_requested_rms_and_weight(tmp_path):
    base = SynthesisSpec(n_antennas=8, n_times=20, n_channels=16, chunk_times=6)
    clean = _load(synthesize_processing_set(tmp_path / "clean", base))
    spec = dataclasses.replace(base, noise_jy=0.3)
    noisy = _load(synthesize_processing_set(tmp_path / "noisy", spec))
    residual = noisy["VISIBILITY"] - clean["VISIBILITY"]  # 17,920 complex samples
    assert abs(residual.real.std() / 0.3 - 1) < 0.03
    assert abs(residual.imag.std() / 0.3 - 1) < 0.03
    assert abs(residual.real.mean()) < 0.01
    np.testing.assert_allclose(noisy["WEIGHT"], 1 / 0.3**2, rtol=1e-6)


# --- chunking, paths, errors -------------------------------------------------------------


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    n_antennas=st.integers(2, 5),
    n_times=st.integers(1, 7),
    n_channels=st.integers(1, 6),
    n_polarizations=st.sampled_from([1, 2, 4]),
    chunk=st.integers(1, 7),
    noise=st.sampled_from([0.0, 0.1]),
    rfi=st.sampled_from([0.0, 0.3]),
    gains=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_chunked_writing_gives_the_unchunked_data(
    tmp_path_factory,
    n_antennas,
    n_times,
    n_channels,
    n_polarizations,
    chunk,
    noise,
    rfi,
    gains,
    seed,
):
    tmp = tmp_path_factory.mktemp("chunks")
    common = dict(
        n_antennas=n_antennas,
        n_times=n_times,
        n_channels=n_channels,
        n_polarizations=n_polarizations,
        noise_jy=noise,
        rfi_fraction=rfi,
        gain_amplitude_rms=0.1 if gains else 0.0,
        gain_phase_rms_deg=10.0 if gains else 0.0,
        seed=seed,
        sources=SOURCES[:2],
    )
    whole = _load(synthesize_processing_set(tmp / "whole", SynthesisSpec(**common)))
    parts = _load(
        synthesize_processing_set(tmp / "parts", SynthesisSpec(**common, chunk_times=chunk))
    )
    for name in ("FLAG", "WEIGHT", "time", "frequency"):
        np.testing.assert_array_equal(parts[name], whole[name])
    np.testing.assert_allclose(parts["UVW"], whole["UVW"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(parts["VISIBILITY"], whole["VISIBILITY"], rtol=0, atol=1e-6)


def test_paths_overwrite_and_validation(tmp_path):
    small = SynthesisSpec(n_antennas=2, n_times=1, n_channels=1, n_polarizations=1)
    first = synthesize_processing_set(tmp_path / "a.ps.zarr", small)
    assert first.path == tmp_path / "a.ps.zarr" and first.partition == "a_0"
    with pytest.raises(FileExistsError, match="overwrite"):
        synthesize_processing_set(tmp_path / "a", small)
    again = synthesize_processing_set(tmp_path / "a", small, overwrite=True)
    assert again.path == first.path
    (tmp_path / "keep.ps.zarr").mkdir()
    (tmp_path / "keep.ps.zarr" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not removing"):
        synthesize_processing_set(tmp_path / "keep", small, overwrite=True)
    assert (tmp_path / "keep.ps.zarr" / "precious.txt").exists()
    with pytest.raises(ValueError, match="n_polarizations"):
        SynthesisSpec(n_polarizations=3)
    default = SynthesisSpec()
    assert 1e5 <= default.n_visibilities <= 1e6
