"""Uniform/Briggs weights, PSF and cube images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from radps_flows.core.calibration import PointModel, model_visibilities
from radps_flows.core.weighting import imaging_weights
from tests.oracles import dirty_cube, psf_image

N = 64
CELL = math.radians(10 / 3600)
FREQ = np.array([1.3e9, 1.4e9, 1.5e9])


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(2)
    uvw = rng.normal(size=(400, 3)) * np.array([300.0, 300.0, 50.0])
    uvw[:200:2] = uvw[1:200:2] * 1.0001  # pairs sharing a cell: density 2 there
    return uvw, rng.uniform(0.5, 1.5, size=(400, 3))


def _density(uvw, weights):
    scale = N * CELL * FREQ[None, :] / 299_792_458.0
    iu = np.rint(uvw[:, :1] * scale).astype(int)
    iv = np.rint(uvw[:, 1:2] * scale).astype(int)
    cells = {}
    for key, w in zip(zip(iu.ravel(), iv.ravel(), strict=True), weights.ravel(), strict=True):
        for k in (key, (-key[0], -key[1])):
            cells[k] = cells.get(k, 0.0) + w
    return cells, iu, iv


def test_uniform_flattens_the_density(samples):
    uvw, w = samples
    uni = imaging_weights(uvw, FREQ, w, imsize=N, cell_rad=CELL, scheme="uniform")
    cells, _, _ = _density(uvw, uni)
    inside = [v for (u, v_), v in cells.items() if abs(u) < N // 2 and abs(v_) < N // 2]
    assert np.allclose(inside, 1.0)  # every occupied cell (and its mirror) sums to 1


def test_briggs_limits(samples):
    uvw, w = samples
    nat = imaging_weights(uvw, FREQ, w, imsize=N, cell_rad=CELL, scheme="natural")
    uni = imaging_weights(uvw, FREQ, w, imsize=N, cell_rad=CELL, scheme="uniform")
    hi = imaging_weights(uvw, FREQ, w, imsize=N, cell_rad=CELL, scheme="briggs", robust=5)
    lo = imaging_weights(uvw, FREQ, w, imsize=N, cell_rad=CELL, scheme="briggs", robust=-5)
    assert np.allclose(hi / hi.sum(), nat / nat.sum(), rtol=1e-3)
    assert np.allclose(lo / lo.sum(), uni / uni.sum(), rtol=1e-3)
    with pytest.raises(ValueError, match="weighting"):
        imaging_weights(uvw, FREQ, w, imsize=N, cell_rad=CELL, scheme="superuniform")


def test_psf_and_cube(samples):
    uvw, w = samples
    psf = psf_image(uvw, FREQ, w, imsize=N, cell_rad=CELL)
    assert psf[N // 2, N // 2] == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(psf.argmax(), psf.shape) == (N // 2, N // 2)
    vis = model_visibilities(uvw, FREQ, [PointModel(2.0, 3 * CELL, -4 * CELL)], uvw_sign=1)
    cube = dirty_cube(uvw, FREQ, vis, w, imsize=N, cell_rad=CELL, uvw_sign=1)
    assert cube.shape == (3, N, N)
    for plane in cube:
        assert np.unravel_index(plane.argmax(), plane.shape) == (N // 2 - 4, N // 2 - 3)
        assert plane.max() == pytest.approx(2.0, rel=1e-3)
