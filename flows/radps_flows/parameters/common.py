"""Parameter types several pipelines share."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_BLOCK_MB = 64
"""Uncompressed visibility megabytes per block of work, unless a run says otherwise."""

Solint = Literal["int", "inf"] | Annotated[float, Field(gt=0)]
"""Solution interval: "int" (each integration), "inf" (one per partition) or seconds."""

Box = Annotated[list[int], Field(min_length=4, max_length=4)]
"""Pixel box [x0, y0, x1, y1], 0-based and inclusive, as CASA's box regions."""

INPUT_SET = (
    "MeasurementSet v2 directory, MSv4 processing set (zarr), or a uvfits, uvh5, Miriad or MIR "
    "data set (written as an MS with pyuvdata first)"
)
OVERWRITE = (
    "Replace an existing output when this run completes (otherwise an existing non-empty "
    "output is an error)."
)
REFANT = 'Reference antenna: name, CASA antenna number ("2") or pad ("E02").'
SOLINT = 'Solution interval: "int" (each integration), "inf" or seconds.'


CacheMode = Literal["Use", "Refresh", "Off"]
CachedStage = Literal["conversion", "flagging", "calibration", "imaging"]
"""The stages in the order a run makes them (see :mod:`radps_flows.stage_cache`)."""


def cache_field() -> Any:
    return Field(
        "Use",
        description="The stage cache (PipelineRun spec.cache): Use reads and writes the "
        "conversion, each block's flags and its gains by content; Refresh computes them all "
        "and writes them anew; Off neither reads nor writes.",
    )


def from_stage_field() -> Any:
    return Field(
        None,
        description="Recompute from this stage on and take the stages before it from the "
        "cache (PipelineRun spec.fromStage; `radps rerun --from`): conversion, flagging, "
        "calibration or imaging.",
    )


class ModelSource(BaseModel):
    """A point source of the calibration model, offset from the phase centre."""

    flux_jy: float = Field(default=1.0, description="Flux density (Jy), flat spectrum.")
    offset_ra_arcsec: float = Field(default=0.0, description="East offset (arcsec).")
    offset_dec_arcsec: float = Field(default=0.0, description="North offset (arcsec).")

    model_config = ConfigDict(extra="forbid")
