"""Parameters of the `synthesize` pipeline. The defaults are
:class:`radps_flows.core.synth.SynthesisSpec`'s (``tests/unit/test_parameters`` holds them
equal; this module may not import the array core)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from radps_flows.parameter_rules import DataParameters
from radps_flows.parameters.base import PipelineParameters


class Source(BaseModel):
    """A point source, offset from the phase centre on the sky."""

    flux_jy: float = Field(description="Flux density at the reference frequency (Jy).")
    offset_ra_arcsec: float = Field(default=0.0, description="East offset (arcsec).")
    offset_dec_arcsec: float = Field(default=0.0, description="North offset (arcsec).")
    spectral_index: float = Field(default=0.0, description="S ~ (nu/nu_ref)**alpha.")

    model_config = ConfigDict(extra="forbid")


class SynthesizeParameters(PipelineParameters):
    """Simulated MSv4 processing set with known point sources, gains, noise and RFI."""

    pipeline: ClassVar[str] = "synthesize"
    flow: ClassVar[str] = "radps_flows.pipelines.synthesize:synthesize"
    data: ClassVar[DataParameters] = DataParameters(inputs=(), outputs=("output",))

    output: str = Field(
        description="Path of the processing set (zarr) to write; `.ps.zarr` is appended if missing."
    )
    n_antennas: Annotated[int, Field(ge=2, le=4096)] = Field(
        16, description="Antennas in the array."
    )
    n_times: Annotated[int, Field(ge=1)] = Field(60, description="Integrations.")
    n_channels: Annotated[int, Field(ge=1)] = Field(32, description="Frequency channels.")
    n_polarizations: Literal[1, 2, 4] = Field(
        2, description="1 (XX), 2 (XX YY) or 4 (XX XY YX YY)."
    )
    integration_s: Annotated[float, Field(gt=0)] = Field(10.0, description="Integration time (s).")
    start_freq_hz: Annotated[float, Field(gt=0)] = Field(
        1.4e9, description="Frequency of the first channel (Hz)."
    )
    channel_width_hz: Annotated[float, Field(gt=0)] = Field(
        1.0e6, description="Channel width (Hz)."
    )
    phase_centre_ra_deg: Annotated[float, Field(ge=0, lt=360)] = Field(
        150.0, description="Phase centre right ascension (deg, FK5)."
    )
    phase_centre_dec_deg: Annotated[float, Field(gt=-90, lt=90)] = Field(
        30.0, description="Phase centre declination (deg, FK5)."
    )
    array_radius_m: Annotated[float, Field(gt=0)] = Field(
        1000.0, description="Size of the array (m)."
    )
    layout: Literal["y", "random"] = Field(
        "y", description='Antenna layout: VLA-like "y" or "random" in a disc.'
    )
    sources: list[Source] | None = Field(
        None, description="Point sources (default: one 1 Jy source at the phase centre)."
    )
    gain_amplitude_rms: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Per-antenna gain amplitude scatter (0: no gains)."
    )
    gain_phase_rms_deg: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Per-antenna gain phase scatter in degrees (0: no gains)."
    )
    noise_jy: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Gaussian noise per visibility, real and imaginary parts (Jy)."
    )
    rfi_fraction: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="Fraction of time x channel cells hit by RFI."
    )
    rfi_amplitude_jy: Annotated[float, Field(ge=0)] = Field(
        50.0, description="Typical RFI amplitude (Jy)."
    )
    seed: int = Field(0, description="Random seed; the same seed gives the same data.")
    overwrite: bool = Field(
        False,
        description="Replace an existing processing set at `output` (and its truth and "
        "manifest files) when this run completes.",
    )
