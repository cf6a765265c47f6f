"""How a flow reports its products: a return value for `radps run`, a Prefect table artifact
for the UI and the operator (which copies it into `.status.outputs`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from prefect.artifacts import create_table_artifact

OUTPUTS_ARTIFACT_DESCRIPTION = "radps outputs"


@dataclass(frozen=True)
class Output:
    name: str
    uri: str
    kind: str


def file_output(name: str, path: Path, kind: str) -> Output:
    return Output(name=name, uri=str(Path(path).resolve()), kind=kind)


def publish_outputs(outputs: list[Output]) -> list[dict[str, str]]:
    """Record the products on the flow run and return them as plain dicts."""
    rows = [asdict(o) for o in outputs]
    create_table_artifact(table=rows, description=OUTPUTS_ARTIFACT_DESCRIPTION)
    return rows
