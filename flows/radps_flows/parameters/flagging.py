"""Parameters of the `flagging` pipeline."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from radps_flows.parameter_rules import DataParameters
from radps_flows.parameters.base import PipelineParameters
from radps_flows.parameters.common import (
    DEFAULT_BLOCK_MB,
    INPUT_SET,
    OVERWRITE,
    CachedStage,
    CacheMode,
    cache_field,
    from_stage_field,
)


class FlaggingParameters(PipelineParameters):
    """RFI flagging (median/MAD or AOFlagger per baseline), written into an MSv4 copy of the
    input."""

    pipeline: ClassVar[str] = "flagging"
    flow: ClassVar[str] = "radps_flows.pipelines.flagging:flagging"
    data: ClassVar[DataParameters] = DataParameters(inputs=("input",), outputs=("output",))

    input: str = Field(description=f"{INPUT_SET} to flag.")
    output: str = Field(
        description="Folder for flagged.ps.zarr (the input with FLAG = old flags OR new ones)."
    )
    method: Literal["mad", "aoflagger"] = Field(
        "mad",
        description="mad (median/MAD clipping) or aoflagger (AOFlagger's SumThreshold, its "
        "generic strategy, which sets its own thresholds).",
    )
    threshold: Annotated[float, Field(gt=0)] = Field(
        5.0,
        description="mad: clip at this many robust standard deviations (iterated to convergence).",
    )
    block_mb: Annotated[float, Field(gt=0)] = Field(
        DEFAULT_BLOCK_MB,
        description="Visibility megabytes per Dask task (whole baselines' planes).",
    )
    overwrite: bool = Field(False, description=OVERWRITE)
    cache: CacheMode = cache_field()
    from_stage: CachedStage | None = from_stage_field()
