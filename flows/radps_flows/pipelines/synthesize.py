"""The `synthesize` pipeline: a simulated MSv4 processing set with a known sky."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import numpy as np
from prefect import flow, task
from pydantic import BaseModel, Field

from radps_flows import provenance
from radps_flows.cluster import task_runner_from_env
from radps_flows.core.synth import (
    PointSource,
    SynthesisSpec,
    store_path,
    synthesize_processing_set,
)
from radps_flows.manifest import store_manifest_name
from radps_flows.pipelines.outputs import Output, file_output, publish_outputs
from radps_flows.pipelines.transaction import transactional_output
from radps_flows.progress import report_progress

_DEFAULTS = SynthesisSpec()
"""Parameter defaults come from the core's spec: one place says what a default set is."""


class Source(BaseModel):
    """A point source, offset from the phase centre on the sky."""

    flux_jy: float = Field(description="Flux density at the reference frequency (Jy).")
    offset_ra_arcsec: float = Field(default=0.0, description="East offset (arcsec).")
    offset_dec_arcsec: float = Field(default=0.0, description="North offset (arcsec).")
    spectral_index: float = Field(default=0.0, description="S ~ (nu/nu_ref)**alpha.")

    model_config = {"extra": "forbid"}


@task(name="synthesize-visibilities")
def synthesize_visibilities(
    output: str,
    overwrite: bool,
    arguments: dict[str, Any],
    spec: SynthesisSpec,
    run: dict[str, Any],
) -> list[Output]:
    """Write the set, its truth and its manifest as one transaction, here: on a cluster this
    runs in a Dask worker, which may not share a filesystem with the flow-run pod (helm
    test's run writes to each pod's own /tmp), nor its account (``run``: the provenance the
    flow read)."""
    store = store_path(output)
    stem = store.name.removesuffix(".ps.zarr")
    with transactional_output(
        "synthesize", str(store), overwrite, arguments, {}, run
    ) as transaction:
        result = synthesize_processing_set(transaction.folder, spec)
        truth = transaction.sibling(f"{stem}.truth.json")
        truth.write_text(json.dumps(_truth(result), indent=1))
        print(
            f"wrote {result.n_visibilities:,} visibilities in {result.elapsed_s:.1f} s "
            f"({result.visibilities_per_s / 1e6:.1f} Mvis/s)"
        )
        outputs = [
            file_output("visibilities", result.path, "msv4"),
            file_output("truth", truth, "json"),
        ]
        return transaction.commit(outputs, store_manifest_name(store.name))


def _truth(result) -> dict:
    """What processing should recover: sources, gains, RFI cells."""
    gains = result.gains
    return {
        "n_visibilities": result.n_visibilities,
        "antennas": list(result.antenna_names),
        "polarizations": list(result.polarizations),
        "sources_ra_dec_rad": np.asarray(result.source_ra_dec_rad).tolist(),
        "sources_lmn": np.asarray(result.source_lmn).tolist(),
        "gains": None
        if gains is None
        else {"real": gains.real.tolist(), "imag": gains.imag.tolist()},
        "rfi_cells": None if result.rfi_mask is None else np.argwhere(result.rfi_mask).tolist(),
    }


@flow(name="synthesize", task_runner=task_runner_from_env(), log_prints=True)
def synthesize(
    output: str,
    n_antennas: Annotated[int, Field(ge=2, le=4096)] = _DEFAULTS.n_antennas,
    n_times: Annotated[int, Field(ge=1)] = _DEFAULTS.n_times,
    n_channels: Annotated[int, Field(ge=1)] = _DEFAULTS.n_channels,
    n_polarizations: Literal[1, 2, 4] = _DEFAULTS.n_polarizations,
    integration_s: Annotated[float, Field(gt=0)] = _DEFAULTS.integration_s,
    start_freq_hz: Annotated[float, Field(gt=0)] = _DEFAULTS.start_freq_hz,
    channel_width_hz: Annotated[float, Field(gt=0)] = _DEFAULTS.channel_width_hz,
    phase_centre_ra_deg: Annotated[float, Field(ge=0, lt=360)] = _DEFAULTS.phase_centre_ra_deg,
    phase_centre_dec_deg: Annotated[float, Field(gt=-90, lt=90)] = _DEFAULTS.phase_centre_dec_deg,
    array_radius_m: Annotated[float, Field(gt=0)] = _DEFAULTS.array_radius_m,
    layout: Literal["y", "random"] = _DEFAULTS.layout,
    sources: list[Source] | None = None,
    gain_amplitude_rms: Annotated[float, Field(ge=0)] = _DEFAULTS.gain_amplitude_rms,
    gain_phase_rms_deg: Annotated[float, Field(ge=0)] = _DEFAULTS.gain_phase_rms_deg,
    noise_jy: Annotated[float, Field(ge=0)] = _DEFAULTS.noise_jy,
    rfi_fraction: Annotated[float, Field(ge=0, le=1)] = _DEFAULTS.rfi_fraction,
    rfi_amplitude_jy: Annotated[float, Field(ge=0)] = _DEFAULTS.rfi_amplitude_jy,
    seed: int = _DEFAULTS.seed,
    overwrite: bool = False,
) -> list[dict[str, str]]:
    """Simulated MSv4 processing set with known point sources, gains, noise and RFI.

    Args:
        output: Path of the processing set (zarr) to write; `.ps.zarr` is appended if missing.
        n_antennas: Antennas in the array.
        n_times: Integrations.
        n_channels: Frequency channels.
        n_polarizations: 1 (XX), 2 (XX YY) or 4 (XX XY YX YY).
        integration_s: Integration time (s).
        start_freq_hz: Frequency of the first channel (Hz).
        channel_width_hz: Channel width (Hz).
        phase_centre_ra_deg: Phase centre right ascension (deg, FK5).
        phase_centre_dec_deg: Phase centre declination (deg, FK5).
        array_radius_m: Size of the array (m).
        layout: Antenna layout: VLA-like "y" or "random" in a disc.
        sources: Point sources (default: one 1 Jy source at the phase centre).
        gain_amplitude_rms: Per-antenna gain amplitude scatter (0: no gains).
        gain_phase_rms_deg: Per-antenna gain phase scatter in degrees (0: no gains).
        noise_jy: Gaussian noise per visibility, real and imaginary parts (Jy).
        rfi_fraction: Fraction of time x channel cells hit by RFI.
        rfi_amplitude_jy: Typical RFI amplitude (Jy).
        seed: Random seed; the same seed gives the same data.
        overwrite: Replace an existing processing set at `output` (and its truth and
            manifest files) when this run completes.
    """
    points = tuple(PointSource(**s.model_dump()) for s in sources) if sources else None
    spec = SynthesisSpec(
        n_antennas=n_antennas,
        n_times=n_times,
        n_channels=n_channels,
        n_polarizations=n_polarizations,
        integration_s=integration_s,
        start_freq_hz=start_freq_hz,
        channel_width_hz=channel_width_hz,
        phase_centre_ra_deg=phase_centre_ra_deg,
        phase_centre_dec_deg=phase_centre_dec_deg,
        array_radius_m=array_radius_m,
        layout=layout,
        sources=points or _DEFAULTS.sources,
        gain_amplitude_rms=gain_amplitude_rms,
        gain_phase_rms_deg=gain_phase_rms_deg,
        noise_jy=noise_jy,
        rfi_fraction=rfi_fraction,
        rfi_amplitude_jy=rfi_amplitude_jy,
        seed=seed,
    )
    arguments = {k: v for k, v in locals().items() if k not in ("spec", "points")}
    report_progress(0, 1)
    run = provenance.of_this_run()
    outputs = synthesize_visibilities.submit(output, overwrite, arguments, spec, run).result()
    report_progress(1, 1)
    return publish_outputs(outputs)
