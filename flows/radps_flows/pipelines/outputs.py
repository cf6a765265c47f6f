"""How a flow reports its products: a return value for `radps run`, a Prefect table artifact
for the UI and the operator (which copies it into `.status.outputs`), image artifacts of the
PNG previews, and tables of the science summary and the gains.

Every artifact has a key, ``<flow run name>-<what>`` (the flow run is named after its
PipelineRun): the Prefect UI's Artifacts page lists keyed artifacts only, and shows each key's
history across the runs of that name."""

from __future__ import annotations

import base64
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect.artifacts import create_image_artifact, create_table_artifact

from radps_flows import locations
from radps_flows.contract import OUTPUTS_ARTIFACT_DESCRIPTION, SUMMARY_ARTIFACT_DESCRIPTION
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


def artifact_key(what: str) -> str:
    """``<flow run name>-<what>`` as Prefect takes keys: lower-case letters, digits and
    dashes (a PipelineRun's name may hold dots); ``what`` alone outside a flow run."""
    from prefect.runtime import flow_run

    name = flow_run.get_name() if flow_run.get_id() else None
    key = f"{name}-{what}" if name else what
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", key.lower())).strip("-")[:200]


def publish_outputs(outputs: list[Output]) -> list[dict[str, str]]:
    """Record the products on the flow run and return them as plain dicts."""
    rows = [asdict(o) for o in outputs]
    create_table_artifact(
        table=rows, key=artifact_key("outputs"), description=OUTPUTS_ARTIFACT_DESCRIPTION
    )
    return rows


def publish_preview(png: Path, description: str, what: str) -> None:
    """A PNG preview as a Prefect image artifact keyed ``<run>-<what>``. The file lives on the
    run's data volume, which the Prefect UI cannot reach, so a thumbnail travels inside the
    artifact as a data URL."""
    encoded = base64.b64encode(png_thumbnail(png)).decode("ascii")
    create_image_artifact(
        image_url=f"data:image/png;base64,{encoded}",
        key=artifact_key(what),
        description=description,
    )


def publish_summary(summary: dict[str, Any]) -> None:
    """The science summary as a two-column table artifact, and in the run's log."""
    from prefect import get_run_logger

    rows = [{"quantity": key, "value": str(value)} for key, value in summary.items()]
    create_table_artifact(
        table=rows, key=artifact_key("summary"), description=SUMMARY_ARTIFACT_DESCRIPTION
    )
    get_run_logger().info("science summary: %s", ", ".join(f"{k} {v}" for k, v in summary.items()))
