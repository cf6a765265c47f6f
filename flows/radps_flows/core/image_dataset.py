"""Images as xradio image datasets: what the ``.img.zarr`` and CASA image products hold.

xradio's image schema (``xradio.image.schema``) is what xradio, and through it CASA's next
generation of tools, read back without guessing: dims ``(time, frequency, polarization, l,
m)``, float32 pixels, the restoring beam of every plane in radians, the WCS in the dataset's
``coordinate_system_info``, and data groups naming which variable plays which role. We build
the dataset with xradio's own :func:`xradio.image.make_empty_sky_image` and let
:func:`xradio.image.write_image` write it, so a product is what xradio would write itself;
the tests check it with :func:`xradio.image.schema.check_image`.

The groups follow xradio's reading of a tclean product set: ``base`` holds the main sky image
(``SKY``: CLEAN's restored image, or the dirty image when there is no CLEAN), and each other
image has its own group (``dirty``: ``SKY_DIRTY``, ``residual``: ``SKY_RESIDUAL``, ``model``:
``SKY_MODEL``), all sharing the PSF and the beam.

Our images (:func:`radps_flows.core.imaging.dirty_image_from_sums`) are ``[y, x]`` with ``x``
towards the west; xradio's ``l`` axis runs the same way (``l`` decreasing with the index), so
the pixels go over as they are, transposed to ``(l, m)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import xarray as xr
from astropy.time import Time

from .beam import image_beams

BASE = "base"
PSF = "POINT_SPREAD_FUNCTION"
BEAM_SKY = "BEAM_FIT_PARAMS_SKY"
BEAM_PSF = "BEAM_FIT_PARAMS_POINT_SPREAD_FUNCTION"
_ARCSEC = math.pi / (180 * 3600)


def sky_variable(group: str) -> str:
    """The variable of a group's sky image: ``SKY`` for ``base``, ``SKY_<GROUP>`` else."""
    return "SKY" if group == BASE else f"SKY_{group.upper()}"


def image_dataset(
    sky: Mapping[str, xr.DataArray],
    psf: xr.DataArray | None = None,
    *,
    history: Sequence[str] = (),
) -> xr.Dataset:
    """An xradio image dataset of the sky images ``sky`` (group name -> image of
    :mod:`radps_flows.core.imaging`; ``base`` is required) and their ``psf``. ``history``
    (the run's software, input and parameters) goes into each image's ``user`` attribute.

    The beam is the ``base`` image's (one per plane for a cube, see
    :func:`radps_flows.core.cube.cube_image`); an image in Jy/pixel (a CLEAN model) has none.
    """
    if BASE not in sky:
        raise ValueError(f"an image dataset needs a {BASE!r} image, got {sorted(sky)}")
    ref = sky[BASE]
    xds = _empty_like(ref)
    beams = _beam_params(ref, xds)
    if beams is not None:
        xds[BEAM_SKY] = beams.assign_attrs(type="beam_fit_params_sky", units="rad")
    descriptive = _descriptive(ref, history)
    groups: dict[str, dict[str, Any]] = {}
    written = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    for group, image in sky.items():
        name = sky_variable(group)
        unit = str(image.attrs.get("bunit", "Jy/beam"))
        has_beam = beams is not None and unit.lower() == "jy/beam"
        xds[name] = _planes(image, xds).assign_attrs(
            type="sky",
            units=unit,
            **descriptive,
            description=f"{image.name or group} image",
            **({"beam_fit_params": BEAM_SKY} if has_beam else {}),
        )
        described = f"{image.name or group} image"
        groups[group] = {"sky": name, "description": described, "date": written}
        if has_beam:
            groups[group]["beam_fit_params_sky"] = BEAM_SKY
    if psf is not None:
        xds[PSF] = _planes(psf, xds).assign_attrs(
            type="point_spread_function", units="", **descriptive
        )
        if beams is not None:
            xds[BEAM_PSF] = beams.assign_attrs(
                type="beam_fit_params_point_spread_function", units="rad"
            )
            xds[PSF].attrs["beam_fit_params"] = BEAM_PSF
        for entry in groups.values():
            entry["point_spread_function"] = PSF
            if beams is not None:
                entry["beam_fit_params_point_spread_function"] = BEAM_PSF
    xds.attrs["data_groups"] = groups
    return xds


def _empty_like(image: xr.DataArray) -> xr.Dataset:
    from xradio.image import make_empty_sky_image

    ny, nx = image.sizes["y"], image.sizes["x"]
    cell = float(image.attrs["cell_rad"])
    if "frequency" in image.dims:
        frequencies = np.asarray(image["frequency"].values, dtype=np.float64)
    else:
        frequencies = np.asarray([float(image.attrs["reference_frequency_hz"])])
    xds = make_empty_sky_image(
        phase_center=_phase_centre(image),
        image_size=[nx, ny],
        cell_size=[cell, cell],
        frequency_coords=frequencies,
        pol_coords=[str(image.attrs.get("stokes", "I"))],
        time_coords=[_mjd(image)],
        direction_reference=str(image.attrs.get("phase_center_frame", "fk5")),
        projection="SIN",
        spectral_reference=str(image.attrs.get("spectral_frame", "TOPO")),
    )
    if "l" in image.coords and not np.allclose(
        xds["l"].values, image["l"].values, rtol=0, atol=cell * 1e-6
    ):  # the orientation this module relies on (see the module docstring)
        raise ValueError("xradio's l axis does not run along the image's x axis")
    rest = image.attrs.get("rest_frequency_hz")
    if rest:
        quantity = {"data": float(rest), "dims": [], "attrs": {"units": "Hz", "type": "quantity"}}
        xds["frequency"].attrs.update(rest_frequency=quantity, rest_frequencies=quantity)
    return xds


def _phase_centre(image: xr.DataArray) -> list[float]:
    return [float(image.attrs["phase_center_ra_rad"]), float(image.attrs["phase_center_dec_rad"])]


def _mjd(image: xr.DataArray) -> float:
    """The observation's start (MJD, UTC), or now for an image with no date."""
    date = image.attrs.get("date_obs")
    return float(Time(str(date), scale="utc").mjd if date else Time.now().mjd)


def _planes(image: xr.DataArray, xds: xr.Dataset) -> xr.DataArray:
    """``image`` ``([frequency,] y, x)`` as float32 ``(time, frequency, polarization, l, m)``
    on the coordinates of ``xds``."""
    if "frequency" in image.dims:
        cube = np.asarray(image.transpose("frequency", "x", "y").values, dtype=np.float32)
    else:
        cube = np.asarray(image.transpose("x", "y").values, dtype=np.float32)[None]
    dims = ("time", "frequency", "polarization", "l", "m")
    return xr.DataArray(cube[None, :, None], dims=dims, coords={d: xds[d] for d in dims})


def _beam_params(image: xr.DataArray, xds: xr.Dataset) -> xr.DataArray | None:
    """The image's beam (per channel for a cube) as ``(time, frequency, polarization,
    beam_params_label)`` in radians, or None."""
    beams = image_beams(image)
    if beams is None:
        return None
    values = np.stack(
        [beams[:, 0] * _ARCSEC, beams[:, 1] * _ARCSEC, np.radians(beams[:, 2])], axis=-1
    )
    dims = ("time", "frequency", "polarization", "beam_params_label")
    return xr.DataArray(
        values[None, :, None, :].astype(np.float64),
        dims=dims,
        coords={d: xds[d] for d in dims},
    )


def _descriptive(image: xr.DataArray, history: Sequence[str]) -> dict[str, Any]:
    """The attributes xradio's sky images carry about the observation."""
    out: dict[str, Any] = {}
    if image.attrs.get("object"):
        out["object_name"] = str(image.attrs["object"])
    if image.attrs.get("observer"):
        out["observer"] = str(image.attrs["observer"])
    telescope = _telescope(image)
    if telescope:
        out["telescope"] = telescope
    frame = str(image.attrs.get("phase_center_frame", "fk5")).lower()
    out["pointing_center"] = {
        "data": _phase_centre(image),
        "dims": ["sky_dir_label"],
        "coords": {"sky_dir_label": {"data": ["ra", "dec"], "dims": ["sky_dir_label"]}},
        "attrs": {"units": "rad", "type": "sky_coord", "frame": frame},
    }
    if image.attrs.get("date_obs"):
        out["obsdate"] = {
            "data": _mjd(image),
            "dims": [],
            "attrs": {"units": "d", "scale": "utc", "format": "mjd", "type": "time"},
        }
    out["user"] = {"history": list(history)} if history else {}
    return out


def _telescope(image: xr.DataArray) -> dict[str, Any] | None:
    """The schema's telescope dict: name, and the position in geocentric spherical ITRF."""
    name = image.attrs.get("telescope")
    if not name:
        return None
    out: dict[str, Any] = {"name": str(name)}
    position = image.attrs.get("telescope_position_m")
    if position:
        x, y, z = (float(v) for v in position)
        distance = math.sqrt(x * x + y * y + z * z)
        common = {"frame": "ITRF", "coordinate_system": "geocentric", "type": "location"}
        out["direction"] = {
            "data": [math.atan2(y, x), math.asin(z / distance)],
            "dims": ["ellipsoid_dir_label"],
            "coords": {
                "ellipsoid_dir_label": {"data": ["lon", "lat"], "dims": ["ellipsoid_dir_label"]}
            },
            "attrs": {**common, "units": "rad", "origin_object_name": "earth"},
        }
        out["distance"] = {
            "data": [distance],
            "dims": ["ellipsoid_dis_label"],
            "coords": {"ellipsoid_dis_label": {"data": ["dist"], "dims": ["ellipsoid_dis_label"]}},
            "attrs": {**common, "units": "m", "origin_object_name": "earth"},
        }
    return out


def single_image(xds: xr.Dataset, variable: str) -> xr.Dataset:
    """The dataset of one image of ``xds`` (a sky image or the PSF) with its beam, in a
    ``base`` group: what a CASA image holds (xradio writes a dataset of several images as
    one CASA image per image, with names made of their groups and roles)."""
    role = "point_spread_function" if variable == PSF else "sky"
    beam = xds[variable].attrs.get("beam_fit_params")
    out = xds[[variable, beam] if beam else [variable]]
    group: dict[str, Any] = {role: variable}
    if beam:
        group[f"beam_fit_params_{role}"] = beam
    out.attrs["data_groups"] = {BASE: group}
    return out


def write(xds: xr.Dataset, location: str, out_format: str) -> str:
    """Write ``xds`` with xradio as ``out_format`` (``zarr``: ``location`` must end in
    ``.img.zarr``, xradio's name for image stores; ``casa``: one image) to ``location``, a
    path or a URL (written in scratch space and uploaded), replacing what is there.

    zarr stores are compressed with blosc lz4 and byte shuffle, not xradio's default zstd:
    CLEAN's five 2048 x 2048 images took 0.32 s so, 1.05 s with zstd, for a store 12 %
    larger."""
    from xradio.image import write_image

    from radps_flows import locations

    options: dict[str, Any] = {}
    if out_format == "zarr":
        from zarr.codecs import BloscCodec

        if not location.endswith(".img.zarr"):
            raise ValueError(f"an image zarr store's name ends in .img.zarr: {location}")
        options["compressor"] = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    with locations.local_file(location) as path:
        write_image(xds, str(path), out_format=out_format, overwrite=True, **options)
    return location
