"""Imaging weights (natural, uniform, Briggs) on the image's uv grid.

Uniform and Briggs weights follow CASA's definitions on the image's own uv grid (cell
``1 / (imsize * cell)`` wavelengths): the gridded weight density ``W`` counts every sample
and its Hermitian mirror; uniform weight is ``w / W(cell)``; Briggs (``robust`` R) is
``w / (1 + W(cell) f^2)`` with ``f^2 = (5 * 10^-R)^2 / (sum W^2 / sum w)``, so R = +2 is close
to natural and R = -2 close to uniform. Everything else is :mod:`radps_flows.core.imaging`'s
gridder with its conventions: these only change the weights it is given.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "imaging_weights",
    "weight_density",
    "weights_from_density",
]

C_M_S = 299_792_458.0


def _cells(uvw: np.ndarray, freq: np.ndarray, imsize: int, cell_rad: float):
    """Integer uv cell of every (row, channel) sample and of its mirror."""
    scale = imsize * cell_rad * freq[None, :] / C_M_S  # metres -> cells
    iu = np.rint(uvw[:, 0:1] * scale).astype(np.int64)
    iv = np.rint(uvw[:, 1:2] * scale).astype(np.int64)
    return iu, iv


def imaging_weights(
    uvw: np.ndarray,
    freq: np.ndarray,
    weight: np.ndarray,
    *,
    imsize: int,
    cell_rad: float,
    scheme: str = "natural",
    robust: float = 0.0,
) -> np.ndarray:
    """Weights (nrow, nchan) for ``scheme`` ``natural``, ``uniform`` or ``briggs``.

    ``uvw`` (nrow, 3) metres (either sign convention: the density is symmetric), ``weight``
    (nrow, nchan) the data weights, 0 where not imaged. Samples outside the uv grid keep
    their weight (they are not imaged anyway).
    """
    weight = np.where(np.isfinite(weight) & (weight > 0), weight, 0).astype(np.float64)
    if scheme == "natural":
        return weight
    if scheme not in ("uniform", "briggs"):
        raise ValueError(f"unknown weighting {scheme!r} (natural, uniform, briggs)")
    grid = weight_density(uvw, freq, weight, imsize=imsize, cell_rad=cell_rad)
    return weights_from_density(
        uvw, freq, weight, grid, cell_rad=cell_rad, scheme=scheme, robust=robust
    )


def weight_density(
    uvw: np.ndarray, freq: np.ndarray, weight: np.ndarray, *, imsize: int, cell_rad: float
) -> np.ndarray:
    """Gridded weight density ``(imsize, imsize)`` (every sample and its Hermitian mirror) on
    the image's uv grid; densities of blocks of samples add, so a data set can be summed block
    by block and the total handed to :func:`weights_from_density`."""
    weight = np.where(np.isfinite(weight) & (weight > 0), weight, 0).astype(np.float64)
    uvw = np.where(np.isfinite(uvw), uvw, 0.0)
    iu, iv = _cells(uvw, np.asarray(freq, dtype=np.float64), imsize, cell_rad)
    half = imsize // 2
    inside = (np.abs(iu) < half) & (np.abs(iv) < half)
    grid = np.zeros((imsize, imsize))
    sel = inside & (weight > 0)
    for su in (1, -1):  # the sample and its Hermitian mirror
        np.add.at(grid, ((su * iv[sel]) % imsize, (su * iu[sel]) % imsize), weight[sel])
    return grid


def weights_from_density(
    uvw: np.ndarray,
    freq: np.ndarray,
    weight: np.ndarray,
    grid: np.ndarray,
    *,
    cell_rad: float,
    scheme: str = "natural",
    robust: float = 0.0,
) -> np.ndarray:
    """Uniform or Briggs weights of samples given the density ``grid`` of the whole data set
    (:func:`weight_density`, summed over all blocks)."""
    weight = np.where(np.isfinite(weight) & (weight > 0), weight, 0).astype(np.float64)
    if scheme == "natural":
        return weight
    if scheme not in ("uniform", "briggs"):
        raise ValueError(f"unknown weighting {scheme!r} (natural, uniform, briggs)")
    imsize = grid.shape[0]
    uvw = np.where(np.isfinite(uvw), uvw, 0.0)
    iu, iv = _cells(uvw, np.asarray(freq, dtype=np.float64), imsize, cell_rad)
    half = imsize // 2
    inside = (np.abs(iu) < half) & (np.abs(iv) < half)
    density = np.where(inside, grid[iv % imsize, iu % imsize], 0.0)
    if scheme == "uniform":
        return np.divide(weight, density, out=weight.copy(), where=density > 0)
    # sum over samples inside of 2 w (sample + mirror) is the grid's total
    f2 = (5 * 10 ** (-robust)) ** 2 / ((grid**2).sum() / grid.sum())
    return weight / (1 + density * f2)
