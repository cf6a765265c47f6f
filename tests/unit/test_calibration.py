"""Gain calibration against truth: synthetic data with known per-antenna gains."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from radps_flows.core.calibration import (
    PointModel,
    apply_gains,
    image_model_visibilities,
    model_visibilities,
    solve_gains,
    solve_interval,
    stefcal,
)
from radps_flows.core.io import open_processing_set
from radps_flows.core.synth import PointSource, SynthesisSpec, synthesize_processing_set
from tests.oracles import stefcal_reference

ARCSEC = math.pi / (180 * 3600)


def _referenced(gains: np.ndarray, ref: int) -> np.ndarray:
    """Truth gains (nant, nrec) with the reference antenna's phase set to zero."""
    return gains * (np.conj(gains[ref]) / np.abs(gains[ref]))[None, :]


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory):
    spec = SynthesisSpec(
        n_antennas=10,
        n_times=6,
        n_channels=8,
        sources=(PointSource(1.0), PointSource(0.5, offset_ra_arcsec=20, offset_dec_arcsec=-12)),
        gain_amplitude_rms=0.2,
        gain_phase_rms_deg=40.0,
        seed=3,
    )
    result = synthesize_processing_set(tmp_path_factory.mktemp("cal") / "gains", spec)
    (ds,) = open_processing_set(result.path)
    return result, ds.load()


def _model(result) -> list[PointModel]:
    return [
        PointModel(s.flux_jy, float(lmn[0]), float(lmn[1]))
        for s, lmn in zip(result.spec.sources, result.source_lmn, strict=True)
    ]


def test_gains_recovered_from_noise_free_data(two_sources):
    result, ds = two_sources
    ref = 3
    sol = solve_gains(ds, model=_model(result), refant=result.antenna_names[ref], solint="inf")
    assert sol["GAIN"].dims == ("time", "frequency", "antenna_name", "receptor")
    assert sol.sizes["time"] == 1 and sol.sizes["frequency"] == 1
    assert list(sol["receptor"].values) == ["X", "Y"]
    assert not sol["FLAG"].any()
    got = sol["GAIN"].values[0, 0]
    truth = _referenced(result.gains, ref)
    rel = np.abs(got - truth) / np.abs(truth)
    print(f"median relative gain error {np.median(rel):.2e}, max {rel.max():.2e}")
    assert np.median(rel) < 1e-5
    assert rel.max() < 1e-4
    assert np.all(np.abs(np.angle(got[ref])) < 1e-12)  # reference phase zero


def test_per_integration_and_channel_block_solutions(two_sources):
    result, ds = two_sources
    sol = solve_gains(ds, model=_model(result), refant=0, solint="int", chans_per_solution=4)
    assert sol.sizes["time"] == 6 and sol.sizes["frequency"] == 2
    truth = _referenced(result.gains, 0)
    rel = np.abs(sol["GAIN"].values - truth) / np.abs(truth)
    assert np.median(rel) < 1e-5


def test_corrected_data_equal_the_model(two_sources):
    result, ds = two_sources
    sol = solve_gains(ds, model=_model(result), refant=0, solint="inf")
    cal = apply_gains(ds, sol)
    assert cal.attrs["data_groups"]["corrected"]["correlated_data"] == "VISIBILITY_CORRECTED"
    corrected = cal["VISIBILITY_CORRECTED"].values
    assert not cal["FLAG_CORRECTED"].values.any()
    uvw = ds["UVW"].values
    model = model_visibilities(uvw, ds["frequency"].values, _model(result))
    pols = list(ds["polarization"].values)
    for p in (pols.index("XX"), pols.index("YY")):
        err = np.abs(corrected[..., p] - model).max()
        assert err < 1e-5 * np.abs(model).max()


def test_image_model_predicts_like_the_dft():
    """dirty2vis with the imager's flips == exact DFT of pixel-centred point sources."""
    rng = np.random.default_rng(1)
    uvw = rng.normal(size=(200, 3)) * np.array([800.0, 800.0, 200.0])
    freq = np.array([1.3e9, 1.5e9])
    n, cell = 64, 2 * ARCSEC
    image = np.zeros((n, n))
    image[n // 2, n // 2] = 1.0
    image[n // 2 + 5, n // 2 - 7] = 0.3  # y north (+m), x west (l = +7 cells)
    got = image_model_visibilities(image, uvw, freq, cell_rad=cell)
    want = model_visibilities(uvw, freq, [PointModel(1.0), PointModel(0.3, 7 * cell, 5 * cell)])
    assert np.abs(got - want).max() < 1e-5


def test_image_model_in_solve_gains(two_sources):
    """A model image (sources on pixel centres) calibrates as well as the point model."""
    result, ds = two_sources
    cell = 4 * ARCSEC
    n = 64
    image = np.zeros((n, n))
    for s, lmn in zip(result.spec.sources, result.source_lmn, strict=True):
        x = n // 2 - round(lmn[0] / cell)
        y = n // 2 + round(lmn[1] / cell)
        image[y, x] += s.flux_jy
    # the synthesized sources are not on pixel centres: compare with the same image's DFT
    model = xr.DataArray(image, dims=("y", "x"), attrs={"cell_rad": cell})
    sol_img = solve_gains(ds, model=model, refant=0, solint="inf")
    pix = [
        PointModel(float(image[y, x]), -(x - n // 2) * cell, (y - n // 2) * cell)
        for y, x in zip(*np.nonzero(image), strict=True)
    ]
    sol_dft = solve_gains(ds, model=pix, refant=0, solint="inf")
    diff = np.abs(sol_img["GAIN"].values - sol_dft["GAIN"].values).max()
    assert diff < 1e-4 * np.abs(sol_dft["GAIN"].values).max()


def test_stefcal_matches_the_reference_implementation():
    rng = np.random.default_rng(7)
    nant = 12
    g = (1 + 0.3 * rng.normal(size=nant)) * np.exp(1j * rng.normal(size=nant))
    m = rng.normal(size=(nant, nant)) + 1j * rng.normal(size=(nant, nant))
    m = m + m.conj().T
    np.fill_diagonal(m, 0)
    v = g[:, None] * m * g.conj()[None, :]
    ref = stefcal_reference(v, m)
    fast, iters = stefcal(v * m.conj(), np.abs(m) ** 2)
    phase = lambda x: x * np.conj(x[0]) / abs(x[0])  # noqa: E731
    assert np.allclose(phase(ref), phase(g), rtol=1e-8)
    assert np.allclose(phase(fast), phase(g), rtol=1e-8)
    assert iters < 100


def test_dead_antenna_and_too_few_baselines_are_flagged():
    rng = np.random.default_rng(5)
    nant = 8
    a1, a2 = np.triu_indices(nant, 1)
    g = (1 + 0.1 * rng.normal(size=(nant, 1))) * np.exp(1j * rng.normal(size=(nant, 1)))
    nsamp = 64
    vis = np.broadcast_to(g[a1] * g[a2].conj(), (nsamp, len(a1), 1)).copy()
    vis += 0.05 * (rng.normal(size=vis.shape) + 1j * rng.normal(size=vis.shape))
    dead = 6
    vis[:, (a1 == dead) | (a2 == dead)] = 0.05 * rng.normal(size=(nsamp, nant - 1, 1))
    weight = np.ones(vis.shape)
    lonely = 7  # only one baseline left: below minblperant
    weight[:, ((a1 == lonely) | (a2 == lonely)) & (a1 != 0)] = 0
    from radps_flows.core.calibration import normal_sums

    a, b, c, n = normal_sums(vis, np.ones(vis.shape), weight)
    gain, flag, snr = solve_interval(a, b, c, n, a1, a2, nant, refant=0, minsnr=3)
    assert flag[dead, 0] and snr[dead, 0] < 3
    assert flag[lonely, 0] and gain[lonely, 0] == 0
    good = [i for i in range(nant) if i not in (dead, lonely)]
    assert not flag[good, 0].any()
    assert (snr[good, 0] > 10).all()


def test_flagged_solutions_flag_the_data(two_sources, tmp_path: Path):
    result, ds = two_sources
    sol = solve_gains(ds, model=_model(result), refant=0, solint="int")
    sol["FLAG"][2, 0, 4, 1] = True  # antenna 4, receptor Y, third integration
    cal = apply_gains(ds, sol)
    flag = cal["FLAG_CORRECTED"].values
    names = (
        [str(n) for n in ds["baseline_antenna1_name"].values],
        [str(n) for n in ds["baseline_antenna2_name"].values],
    )
    ant = result.antenna_names[4]
    rows = np.array([ant in (x, y) for x, y in zip(*names, strict=True)])
    assert flag[2][rows].all()  # every correlation of its baselines (CASA's applycal)
    assert not flag[2][~rows].any()
    assert not flag[[0, 1, 3, 4, 5]].any()
