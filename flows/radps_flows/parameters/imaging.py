"""Parameters of the `imaging` pipeline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from radps_flows.parameter_rules import (
    GRIDDER_MIN_PIXELS,
    DataParameters,
    ParameterError,
    box_errors,
    model_errors,
    path_problem,
)
from radps_flows.parameters.base import PipelineParameters
from radps_flows.parameters.common import (
    DEFAULT_BLOCK_MB,
    INPUT_SET,
    OVERWRITE,
    REFANT,
    SOLINT,
    Box,
    CachedStage,
    CacheMode,
    ModelSource,
    Solint,
    cache_field,
    from_stage_field,
)

ImageFormat = Literal["fits", "zarr", "casa"]

MAX_PAUSE_SECONDS = 7 * 24 * 3600
PAUSE_TIMEOUT_ACTIONS = ("fail", "finish")

MASK = (
    "CLEAN only inside these boxes [x0, y0, x1, y1] (pixels, inclusive); or the path of a "
    "FITS image of the image's size whose non-zero pixels are where CLEAN may work"
)


class CleanInput(BaseModel):
    """How an interactive imaging run goes on from a pause (after the PSF and dirty image,
    and after each major cycle with interactive_cycles). What the answer leaves out keeps
    its value."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["continue", "stop"] = Field(
        "continue",
        description="continue CLEAN, or stop: write the products as they are now.",
    )
    niter: Annotated[int, Field(ge=0)] | None = Field(
        None, description="The most CLEAN components in all (those found so far count)."
    )
    threshold_jy: Annotated[float, Field(ge=0)] | None = Field(
        None, description="Stop when the residual peak is below this (Jy/beam)."
    )
    mask: list[Box] | str | None = Field(None, description=f"{MASK}; [] for anywhere.")
    pause: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="The pause this answers (status.input.pause): refused at another one. "
        "Change it to give a later pause the same answer.",
    )

    @classmethod
    def errors(
        cls, values: Mapping[str, Any], parameters: Mapping[str, Any]
    ) -> list[ParameterError]:
        """What the schema cannot say, against the run's ``parameters``: boxes inside the
        image, a mask file a run may read."""
        imsize = parameters.get("imsize", ImagingParameters.model_fields["imsize"].default)
        if type(imsize) is not int:
            return []
        errors = []
        mask = values.get("mask")
        if isinstance(mask, list):
            for i, box in enumerate(mask):
                errors += box_errors(f"mask.{i}", box, imsize)
        elif isinstance(mask, str):
            problem = path_problem(mask, written=False)
            if problem:
                errors.append(ParameterError("mask", problem))
        return errors


class ImagingParameters(PipelineParameters):
    """Image a MeasurementSet (Stokes I, MFS or a per-channel cube), optionally flagged,
    calibrated and CLEANed (MFS)."""

    pipeline: ClassVar[str] = "imaging"
    flow: ClassVar[str] = "radps_flows.pipelines.imaging:imaging"
    data: ClassVar[DataParameters] = DataParameters(
        inputs=("input", "model_image"), outputs=("output",)
    )

    input: str = Field(description=f"{INPUT_SET} to image.")
    output: str = Field(
        description="Folder for the products: image.fits, image.png, image.img.zarr (an xradio "
        "image); with clean restored, residual, model and psf FITS, PNG previews, and "
        "images.img.zarr holding them all; with calibrate gains.zarr and gains.png."
    )
    image_formats: Annotated[list[ImageFormat], Field(min_length=1)] = Field(
        ["fits", "zarr"],
        description="Image products to write: fits, zarr (an xradio image store, "
        "<name>.img.zarr) and casa (a CASA image per image, <name>.image).",
    )
    imsize: Annotated[int, Field(ge=GRIDDER_MIN_PIXELS, le=65536, multiple_of=2)] = Field(
        512, description="Image width and height in pixels."
    )
    cell_arcsec: Annotated[float, Field(gt=0)] = Field(1.0, description="Pixel size in arcseconds.")
    epsilon: Annotated[float, Field(ge=1e-7, le=1e-1)] = Field(
        1e-4,
        description="Gridding accuracy of ducc0's wgridder for the dirty image (1e-4: ~1e-5 Jy).",
    )
    specmode: Literal["mfs", "cube"] = Field(
        "mfs",
        description="mfs (one image over the band) or cube (one dirty image per channel, each "
        "normalised by its own weights; all partitions must share one frequency axis).",
    )
    weighting: Literal["natural", "uniform", "briggs"] = Field(
        "natural", description="natural, uniform or briggs (uniform and briggs need clean: true)."
    )
    robust: Annotated[float, Field(ge=-2, le=2)] = Field(
        0.5, description="Briggs robustness (-2 ~ uniform, +2 ~ natural)."
    )
    flag: bool | Literal["mad", "aoflagger"] = Field(
        False,
        description="Flag RFI first, per baseline over each block's time x frequency plane: "
        "mad (or true: median/MAD clipping) or aoflagger (AOFlagger's SumThreshold, its "
        "generic strategy); NaN samples are always ignored.",
    )
    flag_threshold: Annotated[float, Field(gt=0)] = Field(
        5.0, description="mad: clip at this many robust standard deviations."
    )
    calibrate: bool = Field(
        False, description="Solve antenna gains with StEFCal against `model` and apply them."
    )
    model: list[ModelSource] | None = Field(
        None,
        description="Calibration model: point sources (default 1 Jy at the phase centre, as CASA).",
    )
    model_image: str | None = Field(
        None,
        description="Calibration model from a FITS image in Jy/pixel instead, such as the "
        "model.fits of an earlier clean run on the same data (self-calibration).",
    )
    refant: str | None = Field(None, description=REFANT)
    solint: Solint = Field("int", description=SOLINT)
    minsnr: Annotated[float, Field(ge=0)] = Field(
        3.0, description="Flag gain solutions below this SNR (and the data they calibrate)."
    )
    clean: bool = Field(
        False,
        description="Deconvolve with Hogbom CLEAN (major cycles through the visibilities).",
    )
    niter: Annotated[int, Field(ge=0)] = Field(
        1000, description="Maximum number of CLEAN components."
    )
    clean_gain: Annotated[float, Field(gt=0, le=1)] = Field(0.1, description="CLEAN loop gain.")
    threshold_jy: Annotated[float, Field(ge=0)] = Field(
        0.0, description="Stop when the residual peak is below this (Jy/beam)."
    )
    threshold_rms: Annotated[float, Field(ge=0)] = Field(
        0.0,
        description="Or below this many times the dirty image rms (see rms_box); the larger "
        "of the two thresholds applies.",
    )
    rms_box: Box | None = Field(
        None,
        description="Box [x0, y0, x1, y1] (pixels, inclusive) where the rms is measured; "
        "default a robust (MAD) estimate over the whole dirty image.",
    )
    mask: list[Box] | None = Field(
        None,
        description="CLEAN only inside these boxes [x0, y0, x1, y1] (pixels, inclusive).",
    )
    cyclefactor: Annotated[float, Field(gt=0)] = Field(
        1.0, description="Minor cycle depth, as tclean's."
    )
    max_major: Annotated[int, Field(ge=1)] = Field(
        50, description="Maximum number of major cycles."
    )
    clean_epsilon: Literal["auto"] | Annotated[float, Field(ge=1e-8, le=1e-2)] = Field(
        "auto",
        description="Gridder accuracy of CLEAN's passes through the visibilities. auto: the "
        "PSF and dirty image at `epsilon`, the last major cycle at a tenth of the dirty "
        "image's rms over its peak, between 1e-7 and `epsilon` (a bright source's residual "
        "needs more accuracy than a dirty image), the cycles before it at 1e-2 where that "
        "is rougher (their residuals only choose the next components); a number: every "
        "pass at that accuracy.",
    )
    clean_visibilities: Literal["auto", "keep", "reread"] = Field(
        "auto",
        description="Between major cycles, keep the Stokes I samples on the Dask workers "
        "(keep), or read, flag and calibrate the data again at each cycle, with the gains "
        "solved once (reread: memory bounded by block_mb, one read per cycle more); auto "
        "keeps them when they fill at most half of the cluster's memory.",
    )
    block_mb: Annotated[float, Field(gt=0)] = Field(
        DEFAULT_BLOCK_MB,
        description="Visibility megabytes per block of work (memory per worker thread ~4x this).",
    )
    overwrite: bool = Field(False, description=OVERWRITE)
    cache: CacheMode = cache_field()
    from_stage: CachedStage | None = from_stage_field()
    interactive: bool = Field(
        False,
        description="Pause after the PSF and dirty image (clean: true) for CLEAN's niter, "
        "threshold_jy and mask, or stop; answered with `radps resume`, a PipelineRun's "
        "spec.resume or Prefect's UI.",
    )
    interactive_cycles: bool = Field(
        False, description="With interactive: pause after each major cycle as well."
    )
    pause_timeout_seconds: Annotated[int, Field(ge=1, le=MAX_PAUSE_SECONDS)] = Field(
        3600, description="How long a pause waits for an answer (default an hour)."
    )
    pause_timeout_action: Literal[PAUSE_TIMEOUT_ACTIONS] = Field(  # type: ignore[valid-type]
        "fail",
        description="At a pause's timeout: fail the run, or finish: write the products as "
        "they are then (Completed).",
    )
    workers_while_paused: Literal["release", "keep"] = Field(
        "release",
        description="release: the Dask cluster goes down to no workers while paused (the "
        "visibilities are read again after; the flags and gains come from the stage cache); "
        "keep: the workers stay, with what they hold.",
    )

    pause_input: ClassVar[type[BaseModel]] = CleanInput
    """What an interactive run asks at a pause."""

    @classmethod
    def rules(cls, values: Mapping[str, Any]) -> list[ParameterError]:
        errors = model_errors(values)
        clean = values.get("clean") is True
        if values.get("interactive") is True and not clean:
            errors.append(
                ParameterError("interactive", "pauses for CLEAN's settings: set clean: true")
            )
        if values.get("weighting") in ("uniform", "briggs") and not clean:
            errors.append(
                ParameterError(
                    "weighting",
                    f"{values['weighting']} weighting is implemented with clean: true "
                    "(set clean: true, or weighting: natural)",
                )
            )
        if values.get("specmode") == "cube" and clean:
            errors.append(
                ParameterError("clean", "specmode cube makes dirty cubes only: set clean: false")
            )
        formats = values.get("image_formats")
        if isinstance(formats, list) and len(set(map(str, formats))) < len(formats):
            errors.append(ParameterError("image_formats", "lists a format twice"))
        imsize = values.get("imsize")
        if type(imsize) is not int or imsize < GRIDDER_MIN_PIXELS or imsize % 2:
            return errors  # the schema says why
        errors += box_errors("rms_box", values.get("rms_box"), imsize)
        mask = values.get("mask")
        if isinstance(mask, list):
            for i, box in enumerate(mask):
                errors += box_errors(f"mask.{i}", box, imsize)
        return errors
