"""A person in CLEAN's loop: where the major-cycle driver stops to ask how to go on, and the
answer it takes (:func:`radps_flows.core.imager.clean_image`).

The driver only calls :attr:`Interaction.ask` and applies what comes back; how the question
reaches a person (a Prefect pause, ``kubectl patch``, ``radps resume``) is the imaging
pipeline's business (:mod:`radps_flows.pipelines.interactive`). Nothing here imports
Prefect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import xarray as xr


@dataclass(frozen=True)
class CleanCheckpoint:
    """Where CLEAN stands when it asks: after the PSF and the dirty image (``cycle`` 0), or
    after major cycle ``cycle``."""

    cycle: int
    components: int
    """CLEAN components found so far."""
    niter: int
    """The most components CLEAN finds in all, as it stands."""
    threshold: float
    """Where CLEAN stops, Jy/beam, as it stands."""
    peak: float
    """The residual's largest absolute value (inside the mask), Jy/beam."""
    rms: float
    """The dirty image's rms, Jy/beam."""
    mask: list[list[int]] | None
    """The boxes CLEAN works in ([x0, y0, x1, y1], pixels, inclusive), None for anywhere;
    a mask given as an image is not repeated here."""
    images: xr.Dataset
    """``dirty``, ``residual``, ``model`` and ``psf`` (``(y, x)``, with the dirty image's
    attributes and the beam), for previews."""


@dataclass(frozen=True)
class CleanAnswer:
    """How to go on; None leaves a setting as it was."""

    stop: bool = False
    """Write the products as they are now (and no further pause)."""
    pause: int | None = None
    """Which of the asker's pauses this answers (for the record), if it numbers them."""
    niter: int | None = None
    threshold_jy: float | None = None
    """An absolute threshold, Jy/beam: it replaces ``threshold_jy`` and ``threshold_rms``."""
    mask: np.ndarray | None = field(default=None, repr=False)
    """A new ``[y, x]`` mask (True where CLEAN may find components), when ``set_mask``."""
    mask_boxes: list[list[int]] | None = None
    """The boxes of that mask, when it is made of boxes (for the next checkpoint)."""
    mask_file: str | None = None
    """The FITS file that mask was read from, when it was (for the record)."""
    set_mask: bool = False
    """Replace the mask with ``mask`` (None: anywhere)."""


@dataclass(frozen=True)
class Interaction:
    """Asking a person: ``ask`` is called at each checkpoint and returns the answer."""

    ask: Callable[[CleanCheckpoint], CleanAnswer]
    after_each_cycle: bool = False
    """Ask after every major cycle too, not only after the dirty image."""
    keeps_workers: bool = True
    """False: ``ask`` may let the cluster's workers go while it waits (an idle person costs
    nothing), so the driver lets go of the blocks it keeps on them before asking, and
    prepares them again after (the stage cache holds their flags and gains)."""
