"""Pieces the pipelines share: calibration models, gain-table products."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from prefect.artifacts import create_table_artifact

from radps_flows import locations, manifest
from radps_flows.core import products
from radps_flows.core.calibration import PointModel, circular_phase_rms_deg
from radps_flows.parameters.common import ModelSource


def image_model(path: str, phase_center: dict[str, Any]) -> xr.DataArray:
    """The calibration model from a FITS model image (a previous CLEAN's ``model.fits``):
    it must be centred on the data's phase centre, since its pixel N/2 is predicted there."""
    try:
        manifest.verify(path)
    except manifest.ProductError as exc:
        raise products.ModelImageError(
            f"model_image {exc}; a model image is the model.fits of an imaging run with "
            "clean: true that completed"
        ) from None
    with locations.local_copy(path) as local:
        model = products.read_model_image(local)
    ra, dec = model.attrs["phase_center_ra_rad"], model.attrs["phase_center_dec_rad"]
    ra0, dec0 = float(phase_center["ra"]), float(phase_center["dec"])
    cos_offset = math.sin(dec) * math.sin(dec0) + math.cos(dec) * math.cos(dec0) * math.cos(
        ra - ra0
    )
    offset = math.acos(min(1.0, max(-1.0, cos_offset)))
    if offset > 0.01 * model.attrs["cell_rad"]:
        raise products.ModelImageError(
            f"model_image {path}: its phase centre is {math.degrees(offset) * 3600:.3g} arcsec "
            "from the data's; make the model from these data (or ones with the same phase "
            "centre)"
        )
    return model


def point_models(sources: Sequence[ModelSource] | None, dec0_rad: float) -> tuple[PointModel, ...]:
    """Direction cosines of the model sources (1 Jy at the phase centre when none), with the
    synthesizer's convention (RA offset scaled by 1/cos(dec) on the sky)."""
    if not sources:
        return (PointModel(1.0),)
    arcsec = math.pi / (180 * 3600)
    out = []
    for s in sources:
        s = ModelSource.model_validate(s) if isinstance(s, dict) else s
        d_ra = s.offset_ra_arcsec * arcsec / math.cos(dec0_rad)
        dec = dec0_rad + s.offset_dec_arcsec * arcsec
        l = math.cos(dec) * math.sin(d_ra)  # noqa: E741
        m = math.sin(dec) * math.cos(dec0_rad) - math.cos(dec) * math.sin(dec0_rad) * math.cos(d_ra)
        out.append(PointModel(float(s.flux_jy), l, m))
    return tuple(out)


def merge_gains(per_block: Sequence[xr.Dataset]) -> dict[str, xr.Dataset]:
    """Gain tables of blocks, concatenated along time per partition."""
    by_part: dict[str, list[xr.Dataset]] = {}
    for g in per_block:
        by_part.setdefault(str(g.attrs.get("partition_name", "")), []).append(g)
    out = {}
    for name, parts in sorted(by_part.items()):
        parts.sort(key=lambda g: float(g["time"].values[0]))
        merged = xr.concat(parts, dim="time", combine_attrs="override")
        out[name] = merged
    return out


def write_gains(tables: dict[str, xr.Dataset], path: str) -> str:
    """Gain solutions as zarr: one group per partition (dims time, frequency, antenna_name,
    receptor; GAIN complex, FLAG, SNR); ``path`` may be a URL."""
    tree = xr.DataTree.from_dict({name or "gains": ds for name, ds in tables.items()})
    with warnings.catch_warnings():  # fixed-length strings (antenna names) in zarr v3
        warnings.filterwarnings("ignore", module=r"zarr\.")
        tree.to_zarr(str(path), mode="w", consolidated=True)
    return str(path)


def gain_rows(tables: dict[str, xr.Dataset]) -> list[dict]:
    """One row per partition, antenna and receptor: what a Prefect table artifact shows."""
    rows = []
    for name, ds in tables.items():
        gain = ds["GAIN"].values
        flag = ds["FLAG"].values
        for a, ant in enumerate(ds["antenna_name"].values):
            for r, rec in enumerate(ds["receptor"].values):
                g = gain[:, :, a, r][~flag[:, :, a, r]]
                rms = circular_phase_rms_deg(g)
                rows.append(
                    {
                        "partition": name,
                        "antenna": str(ant),
                        "receptor": str(rec),
                        "solutions": int(flag[:, :, a, r].size),
                        "flagged_pct": round(100 * float(flag[:, :, a, r].mean()), 2),
                        "median_amplitude": round(float(np.median(np.abs(g))), 5)
                        if g.size
                        else None,
                        "phase_rms_deg": None if rms is None else round(rms, 3),
                    }
                )
    return rows


def publish_gain_table(rows: list[dict]) -> None:
    """The rows of :func:`gain_rows` as the run's gain table artifact."""
    from radps_flows.pipelines.outputs import artifact_key

    create_table_artifact(table=rows, key=artifact_key("gains"), description="radps gain solutions")


def gain_summary(tables: dict[str, xr.Dataset], rows: list[dict]) -> str:
    """One line on the solutions (``rows``: their :func:`gain_rows`): how many, how many
    flagged, the reference antenna, the median amplitude and the spread of the antennas'
    phase scatter."""
    solutions = sum(r["solutions"] for r in rows)
    flagged = sum(r["solutions"] * r["flagged_pct"] / 100 for r in rows)
    amplitudes = [r["median_amplitude"] for r in rows if r["median_amplitude"] is not None]
    scatter = [r["phase_rms_deg"] for r in rows if r["phase_rms_deg"] is not None]
    antennas = {(r["partition"], r["antenna"]) for r in rows}
    refants = sorted({str(ds.attrs.get("refant")) for ds in tables.values()})
    line = (
        f"{solutions:,} solutions for {len(antennas)} antennas in {len(tables)} partition(s), "
        f"{100 * flagged / max(solutions, 1):.1f}% flagged, reference antenna "
        f"{', '.join(refants)}"
    )
    if amplitudes:
        line += f"; median |g| {float(np.median(amplitudes)):.4g}"
    if scatter:
        line += (
            f"; phase rms per antenna and receptor {min(scatter):.1f}-{max(scatter):.1f} deg "
            f"(median {float(np.median(scatter)):.1f})"
        )
    return line
