"""A flow's products as one transaction: written into staging, committed with their manifest,
rolled back on any failure (see :mod:`radps_flows.staging` for why renames, not Prefect's
transaction API, and :mod:`radps_flows.object_output` for an output on an object store, which
commits by writing its manifest last)."""

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

from radps_flows import locations, manifest, provenance
from radps_flows.object_output import ObjectOutput, OutputClaimedError
from radps_flows.pipelines.outputs import Output
from radps_flows.staging import StagedOutput, leftover_staging, staging_run_id


class Transaction:
    def __init__(
        self,
        staged: StagedOutput | ObjectOutput,
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
    def folder(self) -> str:
        """Where to write (a path or URL): named as the output, inside the staging folder
        (or, for a new output on an object store, the output itself)."""
        return str(self.staged.path)

    def sibling(self, name: str) -> Path | str:
        """Where to write a file that appears beside the output at commit (a path or URL)."""
        return self.staged.sibling(name)

    def commit(
        self, outputs: list[Output], manifest_name: str = manifest.MANIFEST_NAME
    ) -> list[Output]:
        """Write the manifest of ``outputs`` (``manifest_name`` inside the output, or beside
        it when the output is a store, as synthesize's), rename everything into place, and
        return ``outputs`` as they will be found."""
        self.staged.place(manifest_name)
        manifest_path = self.staged.manifest_location(manifest_name)
        products = [manifest.Product(o.name, self.staged.current(o.uri), o.kind) for o in outputs]
        document = manifest.build(
            pipeline=self.pipeline,
            parameters=self.parameters,
            products=products,
            root=locations.parent(manifest_path),  # the output's parent, or where it stands
            inputs=self.inputs,
            started=self.started,
            flow_run_id=runtime.flow_run.id,
            run=self.run,
        )
        self.staged.commit_manifest(manifest_path, document)
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
    staged = _begin(output, overwrite, runtime.flow_run.id)
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
    if staged.open:  # the caller did not commit: nothing it wrote may remain
        staged.rollback()


def _begin(output: str, overwrite: bool, run_id: str) -> StagedOutput | ObjectOutput:
    """Start writing ``output``, after clearing what killed runs left there."""
    if locations.is_url(output):
        staged = ObjectOutput(output, overwrite, run_id)
        try:
            staged.begin()
        except OutputClaimedError as claimed:
            if _flow_run_ended(claimed.run_id, f"{output} (claimed)") is not True:
                raise
            staged.clear_abandoned(claimed.run_id)
            print(f"cleared {output}, left by flow run {claimed.run_id} when it was killed")
            staged.begin()
        return staged
    local = StagedOutput(output, overwrite, run_id)
    for old in leftover_staging(output):
        if old != local.staging:
            remove_if_abandoned(old)
    local.begin()
    return local


def remove_if_abandoned(staging: Path) -> bool:
    """Remove the staging folder of a run that was killed outright, once Prefect says its
    flow run has ended (a retry or a rescheduled pod of a live run reuses it); a run Prefect
    does not know (another server's) or one still going keeps it."""
    run_id = staging_run_id(staging)
    if not _flow_run_ended(run_id, str(staging)):
        return False
    shutil.rmtree(staging, ignore_errors=True)
    print(f"removed {staging}, left by flow run {run_id} when it was killed")
    return True


def _flow_run_ended(run_id: str, what: str) -> bool:
    """Whether Prefect says flow run ``run_id`` has ended; False (with a note naming
    ``what`` it left) for a run still going or one this server does not know."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run_id = uuid.UUID(run_id)
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
    except (ValueError, ObjectNotFound):
        print(f"note: {what} is left by run {run_id}, which this Prefect server does not know")
        return False
    if state is None or not state.is_final():
        print(f"note: {what} belongs to flow run {run_id}, still {state and state.name}")
        return False
    return True
