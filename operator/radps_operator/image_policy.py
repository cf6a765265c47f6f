"""Which container images a PipelineRun may name in `spec.image`.

A run's author chooses its image, and with it the code that its flow-run pod and Dask pods run
under the run namespace's service accounts. So only the images the cluster's administrators
list may run: the chart's `images.allowed`, always with the chart's own repository, reaches the
operator as `RADPS_ALLOWED_IMAGES` (a comma list). `radps validate` and `radps run` read the
same variable, and without it allow only `radps`, the chart's default repository.

An entry is either a repository (`radps`, `ghcr.io/org/radps`), which allows every tag and
digest of it and nothing else (`radps-evil` is another repository), or a prefix ending in `/`
(`registry.example.org/radps/`), which allows every repository below it. Names are compared as
written: `docker.io/library/radps` is not `radps`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV = "RADPS_ALLOWED_IMAGES"
DEFAULT: tuple[str, ...] = ("radps",)


def parse(raw: str) -> tuple[str, ...]:
    """The entries of a comma list, blanks dropped, duplicates removed, order kept."""
    return tuple(dict.fromkeys(entry.strip() for entry in raw.split(",") if entry.strip()))


def from_env(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    return parse(environ.get(ENV, "")) or DEFAULT


def allows(allowed: tuple[str, ...], image: str) -> bool:
    for entry in allowed:
        if entry.endswith("/"):
            if image.startswith(entry) and len(image) > len(entry):
                return True
        elif image == entry or (image.startswith(entry) and image[len(entry)] in ":@"):
            return True
    return False


def rejection(allowed: tuple[str, ...], image: str) -> str:
    """Why ``image`` may not run, naming what may."""
    listed = ", ".join(
        f"{entry} (any repository below)" if entry.endswith("/") else f"{entry} (any tag)"
        for entry in allowed
    )
    return (
        f"image {image!r} is not allowed; allowed: {listed}. More are allowed by the chart's "
        f"images.allowed (for `radps validate`: {ENV})"
    )
