"""Parameters of the `calibration` pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import Field

from radps_flows.parameter_rules import DataParameters, ParameterError, model_errors
from radps_flows.parameters.base import PipelineParameters
from radps_flows.parameters.common import (
    DEFAULT_BLOCK_MB,
    INPUT_SET,
    OVERWRITE,
    REFANT,
    SOLINT,
    CachedStage,
    CacheMode,
    ModelSource,
    Solint,
    cache_field,
    from_stage_field,
)


class CalibrationParameters(PipelineParameters):
    """Antenna gain calibration (StEFCal): gain table and a calibrated MSv4 copy."""

    pipeline: ClassVar[str] = "calibration"
    flow: ClassVar[str] = "radps_flows.pipelines.calibration:calibration"
    data: ClassVar[DataParameters] = DataParameters(
        inputs=("input", "model_image"), outputs=("output",)
    )

    input: str = Field(description=f"{INPUT_SET} to calibrate.")
    output: str = Field(
        description="Folder for gains.zarr, gains.png and calibrated.ps.zarr (the input with "
        "corrected VISIBILITY and FLAG)."
    )
    model: list[ModelSource] | None = Field(
        None,
        description="Point sources of the model (default 1 Jy at the phase centre, as CASA).",
    )
    model_image: str | None = Field(
        None,
        description="The model as a FITS image in Jy/pixel instead, such as the model.fits of "
        "an imaging run with clean on the same data (self-calibration).",
    )
    refant: str | None = Field(None, description=REFANT)
    solint: Solint = Field("int", description=SOLINT)
    minsnr: Annotated[float, Field(ge=0)] = Field(
        3.0, description="Flag solutions below this SNR (and the data they calibrate)."
    )
    block_mb: Annotated[float, Field(gt=0)] = Field(
        DEFAULT_BLOCK_MB, description="Visibility megabytes per block of work."
    )
    overwrite: bool = Field(False, description=OVERWRITE)
    cache: CacheMode = cache_field()
    from_stage: CachedStage | None = from_stage_field()

    @classmethod
    def rules(cls, values: Mapping[str, Any]) -> list[ParameterError]:
        return model_errors(values)
