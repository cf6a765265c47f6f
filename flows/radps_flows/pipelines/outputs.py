"""How a flow reports its products: a return value for `radps run`, a Prefect table artifact
for the UI and the operator (which copies it into `.status.outputs`), and image artifacts of
the PNG previews."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect.artifacts import create_image_artifact, create_table_artifact

from radps_flows import locations
from radps_flows.contract import OUTPUTS_ARTIFACT_DESCRIPTION
from radps_flows.core.previews import png_thumbnail


@dataclass(frozen=True)
class Output:
    name: str
    uri: str
    kind: str


def file_output(name: str, location: str | Path, kind: str) -> Output:
    """A product at ``location``: an absolute path, or a URL as it is."""
    uri = str(location) if locations.is_url(location) else str(Path(location).resolve())
    return Output(name=name, uri=uri, kind=kind)


def publish_outputs(outputs: list[Output]) -> list[dict[str, str]]:
    """Record the products on the flow run and return them as plain dicts."""
    rows = [asdict(o) for o in outputs]
    create_table_artifact(table=rows, description=OUTPUTS_ARTIFACT_DESCRIPTION)
    return rows


def publish_preview(png: Path, description: str) -> None:
    """A PNG preview as a Prefect image artifact. The file lives on the run's data volume,
    which the Prefect UI cannot reach, so a thumbnail travels inside the artifact as a data
    URL."""
    encoded = base64.b64encode(png_thumbnail(png)).decode("ascii")
    create_image_artifact(image_url=f"data:image/png;base64,{encoded}", description=description)
