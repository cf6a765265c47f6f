"""A flow's products as one transaction: written into staging, committed with their manifest,
rolled back on any failure (see :mod:`radps_flows.staging` for why renames, not Prefect's
transaction API)."""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import runtime

from radps_flows import manifest, provenance
from radps_flows.pipelines.outputs import Output
from radps_flows.staging import StagedOutput, leftover_staging, staging_run_id


class Transaction:
    def __init__(
        self,
        staged: StagedOutput,
        pipeline: str,
        parameters: Mapping[str, Any],
        inputs: Mapping[str, str],
        run: Mapping[str, Any],
    ):
        self.staged = staged
        self.pipeline = pipeline
        self.parameters = parameters
        self.inputs = inputs
        self.run = run
        self.started = datetime.now(UTC)

    @property
    def folder(self) -> Path:
        """Where to write: named as the output, inside the staging folder."""
        return self.staged.path

    def sibling(self, name: str) -> Path:
        return self.staged.sibling(name)

    def commit(
        self, outputs: list[Output], manifest_name: str = manifest.MANIFEST_NAME
    ) -> list[Output]:
        """Write the manifest of ``outputs`` (``manifest_name`` inside the output, or beside
        it when the output is a store, as synthesize's), rename everything into place, and
        return ``outputs`` as they will be found."""
        manifest_path = (
            self.folder / manifest_name
            if manifest_name == manifest.MANIFEST_NAME
            else self.sibling(manifest_name)
        )
        products = [manifest.Product(o.name, Path(o.uri), o.kind) for o in outputs]
        document = manifest.build(
            pipeline=self.pipeline,
            parameters=self.parameters,
            products=products,
            root=manifest_path.parent,  # the staging folder stands for the output's parent
            inputs=self.inputs,
            started=self.started,
            flow_run_id=runtime.flow_run.id,
            run=self.run,
        )
        manifest.write(document, manifest_path)
        self.staged.commit()
        return [dataclasses.replace(o, uri=str(self.staged.final_path(o.uri))) for o in outputs]


@contextmanager
def transactional_output(
    pipeline: str,
    output: str,
    overwrite: bool,
    parameters: Mapping[str, Any],
    inputs: Mapping[str, str | None],
    run: Mapping[str, Any] | None = None,
) -> Iterator[Transaction]:
    """Begin writing ``output``; the caller commits; anything raised rolls back. ``run``
    (:func:`radps_flows.provenance.of_this_run`) is read here unless the flow passes it."""
    staged = StagedOutput(output, overwrite, runtime.flow_run.id)
    for old in leftover_staging(output):
        if old != staged.staging:
            remove_if_abandoned(old)
    staged.begin()
    transaction = Transaction(
        staged,
        pipeline,
        parameters,
        {k: v for k, v in inputs.items() if v},
        provenance.of_this_run() if run is None else run,
    )
    try:
        yield transaction
    except BaseException:
        staged.rollback()
        raise
    if staged.staging.exists():  # the caller did not commit: nothing it wrote may remain
        staged.rollback()


def remove_if_abandoned(staging: Path) -> bool:
    """Remove the staging folder of a run that was killed outright, once Prefect says its
    flow run has ended (a retry or a rescheduled pod of a live run reuses it); a run Prefect
    does not know (another server's) or one still going keeps it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    run_id = staging_run_id(staging)
    try:
        flow_run_id = uuid.UUID(run_id)
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except (ValueError, ObjectNotFound):
        print(f"note: {staging} is left by run {run_id}, which this Prefect server does not know")
        return False
    if state is None or not state.is_final():
        print(f"note: {staging} belongs to flow run {run_id}, still {state and state.name}")
        return False
    shutil.rmtree(staging, ignore_errors=True)
    print(f"removed {staging}, left by flow run {run_id} ({state.name}) when it was killed")
    return True
