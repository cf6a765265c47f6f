"""Hogbom CLEAN and the restoring beam against truth."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest

from radps_flows.core import blocks as blk
from radps_flows.core.beam import Beam, convolve_same, fit_beam, gaussian_image, restore
from radps_flows.core.clean import INTERMEDIATE_EPSILON, CleanSettings, hogbom
from radps_flows.core.executors import SerialExecutor
from radps_flows.core.imager import clean_image, grid_for, make_clean_image
from radps_flows.core.io import open_processing_set
from radps_flows.core.synth import PointSource, SynthesisSpec, synthesize_processing_set
from tests.oracles import hogbom_reference

CELL_ARCSEC = 4.0
N = 128
#: (flux, east offset, north offset) in cells: on pixel centres
SOURCES = [(1.0, 0, 0), (0.6, 12, -7), (0.35, -20, 15)]


@pytest.fixture(scope="module")
def clean_result(tmp_path_factory: pytest.TempPathFactory):
    spec = SynthesisSpec(
        n_antennas=16,
        n_times=24,
        n_channels=4,
        integration_s=300.0,  # a 2-hour track: a clean PSF
        sources=tuple(
            PointSource(f, offset_ra_arcsec=e * CELL_ARCSEC, offset_dec_arcsec=n * CELL_ARCSEC)
            for f, e, n in SOURCES
        ),
    )
    result = synthesize_processing_set(tmp_path_factory.mktemp("clean") / "sky", spec)
    datasets = open_processing_set(result.path)
    images = make_clean_image(
        datasets, imsize=N, cell_arcsec=CELL_ARCSEC, niter=3000, gain=0.2, threshold_jy=1e-5
    )
    return result, images


def test_point_source_fluxes_recovered(clean_result):
    _, images = clean_result
    model = images["model"].values
    for flux, east, north in SOURCES:
        y, x = N // 2 + north, N // 2 - east
        got = model[y - 2 : y + 3, x - 2 : x + 3].sum()
        print(f"source {flux} Jy: model {got:.6f}")
        assert got == pytest.approx(flux, rel=1e-3)
    assert abs(model.sum() - sum(f for f, _, _ in SOURCES)) < 1e-3
    assert np.abs(images["residual"].values).max() < 1e-3
    assert images.attrs["clean_major_cycles"] >= 2


def test_restored_image_and_attributes(clean_result):
    _, images = clean_result
    restored = images["restored"]
    for flux, east, north in SOURCES:
        y, x = N // 2 + north, N // 2 - east
        assert restored.values[y, x] == pytest.approx(flux, rel=2e-3)
    for key in ("phase_center_ra_rad", "cell_rad", "reference_pixel", "nvis", "beam_pa_deg"):
        assert key in restored.attrs
    assert restored.attrs["bunit"] == "Jy/beam"
    assert images["model"].attrs["bunit"] == "Jy/pixel"
    assert images.attrs["beam_major_arcsec"] >= images.attrs["beam_minor_arcsec"] > 0
    psf = images["psf"].values
    assert psf[N // 2, N // 2] == pytest.approx(1.0, abs=1e-6)


def test_clean_returns_the_exact_residual_of_its_model_however_it_ends(clean_result):
    """The major cycles before the last image their residual roughly (it only chooses the
    next components); the residual CLEAN returns is the one of its model at the last cycle's
    accuracy, whether CLEAN ends with a cycle planned as the last (the threshold reached) or
    on a rough residual that seemed to be below the threshold (imaged again then)."""
    result, _ = clean_result
    datasets = open_processing_set(result.path)
    steps, grid = blk.Steps(), grid_for(N, CELL_ARCSEC, 1e-6)
    blocks = blk.blocks_for(None, datasets, steps, blk.DEFAULT_BLOCK_MB)

    def clean(threshold: float) -> tuple:
        logs: list[str] = []
        settings = CleanSettings(niter=3000, gain=0.2, threshold_jy=threshold)
        images, _ = clean_image(
            SerialExecutor(), blocks, datasets, steps, grid, settings, log=logs.append
        )
        return images, "\n".join(logs)

    def residual_of(images: object, epsilon: float) -> np.ndarray:
        at = replace(grid, epsilon=epsilon)
        model = images["model"].values
        parts = [blk.residual_block(blk.prepare_block(b, steps), at, model) for b in blocks]
        return blk.total(SerialExecutor(), parts).image / images.attrs["sum_weights"]

    planned, log = clean(0.01)
    assert "cycle threshold 0.01, epsilon 1e-06" in log  # the last cycle, planned as such
    # the first cycle, rough: its threshold, to end the next CLEAN just below it
    rough_at = f"{INTERMEDIATE_EPSILON:.2g}"
    first = float(
        re.search(rf"major cycle 1: .*cycle threshold ([^,]+), epsilon {rough_at}\n", log)[1]
    )
    seemed_done, log_seemed = clean(0.99 * first)
    assert "imaged again at epsilon 1e-06" in log_seemed
    for images in (planned, seemed_done):
        exact = residual_of(images, 1e-6)
        tolerance = 1e-9 * np.abs(exact).max()
        np.testing.assert_allclose(images["residual"].values, exact, rtol=0, atol=tolerance)
        rough = residual_of(images, INTERMEDIATE_EPSILON)
        assert np.abs(rough - exact).max() > 100 * tolerance  # the test tells them apart


@pytest.mark.parametrize("pa", [0.0, 30.0, 90.0, -45.0])
def test_beam_fit_recovers_a_gaussian(pa: float):
    truth = Beam(12.0, 7.0, pa)
    psf = gaussian_image((64, 64), truth, 1.0, (32, 32))
    got = fit_beam(psf, 1.0)
    assert got.major_arcsec == pytest.approx(12.0, rel=1e-6)
    assert got.minor_arcsec == pytest.approx(7.0, rel=1e-6)
    diff = (got.pa_deg - pa + 90) % 180 - 90
    assert abs(diff) < 1e-5


def test_position_angle_is_east_of_north():
    """PA 90 puts the major axis along east-west (x), PA 0 along north-south (y)."""
    ew = gaussian_image((41, 41), Beam(10.0, 4.0, 90.0), 1.0, (20, 20))
    assert ew[20, 24] > ew[24, 20]
    ne = gaussian_image((41, 41), Beam(10.0, 4.0, 45.0), 1.0, (20, 20))
    # north-east is +y and -x in FITS orientation
    assert ne[24, 16] > ne[24, 24]


def test_hogbom_single_component_and_mask():
    psf2 = gaussian_image((64, 64), Beam(3.0, 3.0, 0.0), 1.0, (32, 32))
    residual = 0.5 * psf2[32 - 10 : 32 + 22, 32 - 5 : 32 + 27]  # source at (y, x) = (10, 5)
    model, res, n = hogbom(residual, psf2, gain=1.0, threshold=1e-9, niter=10)
    assert n == 1 and model[10, 5] == pytest.approx(0.5)
    assert np.abs(res).max() < 1e-12
    mask = np.zeros((32, 32), dtype=bool)
    model, res, n = hogbom(residual, psf2, gain=1.0, threshold=1e-9, niter=10, mask=mask)
    assert n == 0 and not model.any()


def test_restore_conserves_flux():
    beam = Beam(6.0, 4.0, 20.0)
    model = np.zeros((64, 64))
    model[30, 33] = 2.0
    restored = restore(model, np.zeros_like(model), beam, 1.0)
    assert restored[30, 33] == pytest.approx(2.0)
    area = math.pi * 6.0 * 4.0 / (4 * math.log(2))
    assert restored.sum() == pytest.approx(2.0 * area, rel=1e-3)


def test_the_minor_cycles_window_finds_what_the_whole_image_does():
    """Compact emission: the window around the pixels above the floor holds every component
    the whole-image search takes, in the same order (a Gaussian PSF has no sidelobe that
    could raise a pixel outside)."""
    n = 256
    psf = gaussian_image((n, n), Beam(5.0, 3.0, 30.0), 1.0, (n // 2, n // 2))
    rng = np.random.default_rng(7)
    dirty = rng.normal(size=(n, n)) * 1e-4
    for flux, y, x in [(1.0, 100, 120), (0.6, 130, 90), (0.3, 110, 140)]:
        dirty += flux * gaussian_image((n, n), Beam(5.0, 3.0, 30.0), 1.0, (y, x))
    whole, _, n_whole = hogbom(dirty, psf, gain=0.1, threshold=0.05, niter=500)
    window, res, n_window = hogbom(dirty, psf, gain=0.1, threshold=0.05, niter=500, floor=0.025)
    assert n_window == n_whole > 50
    np.testing.assert_array_equal(window, whole)
    outside = (slice(0, 40), slice(0, 40))  # outside the window: untouched (in float32)
    np.testing.assert_array_equal(res[outside], dirty[outside].astype(np.float32))


def test_an_image_sized_psf_subtracts_where_it_reaches():
    """As CASA's: the PSF is the image's size; a component near a corner subtracts the part
    of the PSF that overlaps the image."""
    n = 32
    psf = gaussian_image((n, n), Beam(3.0, 3.0, 0.0), 1.0, (n // 2, n // 2))
    source = 0.5 * gaussian_image((n, n), Beam(3.0, 3.0, 0.0), 1.0, (2, 3))
    model, res, done = hogbom(source, psf, gain=1.0, threshold=1e-9, niter=1)
    assert done == 1 and model[2, 3] == pytest.approx(0.5)
    assert np.abs(res).max() < 1e-12  # the Gaussian's overlap with the image is all of it


@pytest.mark.parametrize(("masked", "threads"), [(False, 1), (True, 1), (False, 2), (True, 2)])
def test_the_compiled_minor_cycle_is_the_numpy_loop(masked: bool, threads: int):
    """The compiled loop takes the same components in the same order as the loop written
    plainly in numpy (tests.oracles): a PSF with sidelobes, noise, a window (floor), a mask,
    the PSF both larger and smaller than the image, and equal peaks (the first is taken);
    with its rows split over threads too."""
    rng = np.random.default_rng(11)
    n = 96
    for psf_size in (2 * n, n // 2):
        yy, xx = np.mgrid[:psf_size, :psf_size] - psf_size // 2
        psf = np.exp(-(xx**2 + yy**2) / 18.0) - 0.15 * np.cos(xx / 3.0) * np.exp(-(yy**2) / 400.0)
        psf /= psf[psf_size // 2, psf_size // 2]
        dirty = rng.normal(size=(n, n)) * 0.01
        dirty[40, 50] = dirty[60, 20] = 1.0  # a tie: the first in row-major order wins
        dirty[70:74, 30:34] += 0.4
        mask = None
        if masked:
            mask = np.zeros((n, n), dtype=bool)
            mask[10:80, 15:90] = True
        got = hogbom(
            dirty, psf, gain=0.1, threshold=0.02, niter=400, mask=mask, floor=0.01, threads=threads
        )
        want = hogbom_reference(
            dirty, psf, gain=0.1, threshold=0.02, niter=400, mask=mask, floor=0.01
        )
        assert got[2] == want[2] > 100
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("shape", [(31, 33), (64, 48)])
def test_convolve_same_is_the_direct_sum(shape: tuple[int, int]):
    """The restoring convolution against its definition, summed pixel by pixel: out[y, x] =
    sum over the kernel of image[y - i, x - j] * kernel[half + i, half + j]."""
    rng = np.random.default_rng(3)
    image, kernel = rng.normal(size=shape), rng.normal(size=(7, 7))
    half = 3
    padded = np.pad(image, half)
    want = np.zeros(shape)
    for i in range(-half, half + 1):
        for j in range(-half, half + 1):
            shifted = padded[half - i : half - i + shape[0], half - j : half - j + shape[1]]
            want += shifted * kernel[half + i, half + j]
    np.testing.assert_allclose(convolve_same(image, kernel), want, rtol=0, atol=1e-12)


def test_the_threaded_minor_cycle_runs_in_a_fork():
    """The warm `radps server` compiles (and may have run) the threaded loop, then forks a
    process per run: its threads must work in the fork (numba's workqueue layer; GNU OpenMP
    would abort the child)."""
    import multiprocessing

    n = 64
    psf = np.zeros((2 * n, 2 * n))
    psf[n, n] = 1.0
    dirty = np.zeros((n, n))
    dirty[10, 20] = 1.0
    assert hogbom(dirty, psf, gain=0.5, threshold=0.1, niter=10, threads=2)[2] == 4
    with multiprocessing.get_context("fork").Pool(1) as pool:
        model, _, done = pool.apply(
            hogbom, (dirty, psf), {"gain": 0.5, "threshold": 0.1, "niter": 10, "threads": 2}
        )
    assert done == 4 and model[10, 20] == pytest.approx(0.9375)


@pytest.mark.parametrize("components", [5, 40_000])  # as stamps; dense: through the FFTs
def test_restore_is_the_model_convolved_with_the_beam_plus_the_residual(components: int):
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(components)
    n, beam, cell = 256, Beam(9.0, 5.0, 30.0), 1.0
    model = np.zeros((n, n))
    y, x = rng.integers(0, n, size=(2, components))
    model[y, x] = rng.normal(size=components)
    model[0, 0], model[n - 1, 3], model[2, n - 1] = 1.0, -0.5, 0.25  # stamps cut at the edges
    residual = rng.normal(scale=1e-3, size=(n, n))
    half = math.ceil(3 * beam.major_arcsec / cell) + 1
    kernel = gaussian_image((2 * half + 1, 2 * half + 1), beam, cell, (half, half))
    expected = fftconvolve(model, kernel, mode="same") + residual
    kept = residual.copy()
    restored = restore(model, residual, beam, cell)
    np.testing.assert_allclose(restored, expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    np.testing.assert_array_equal(residual, kept)  # the residual itself is left as it was
