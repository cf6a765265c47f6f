"""The `synthesize` pipeline: a simulated MSv4 processing set with a known sky."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from prefect import flow

from radps_flows import locations, provenance
from radps_flows.cluster import task_runner_from_env
from radps_flows.core.synth import (
    PointSource,
    SynthesisSpec,
    store_location,
    synthesize_processing_set,
)
from radps_flows.manifest import store_manifest_name
from radps_flows.parameters.base import flow_parameters
from radps_flows.parameters.synthesize import SynthesizeParameters
from radps_flows.pipelines.outputs import Output, file_output, publish_outputs
from radps_flows.pipelines.stage import stage
from radps_flows.pipelines.transaction import transactional_output
from radps_flows.progress import report_progress


@stage("synthesize-visibilities")
def synthesize_visibilities(
    output: str,
    overwrite: bool,
    arguments: dict[str, Any],
    spec: SynthesisSpec,
    run: dict[str, Any],
) -> list[Output]:
    """Write the set, its truth and its manifest as one transaction, here: on a cluster this
    runs in a Dask worker, which may not share a filesystem with the flow-run pod (helm
    test's run writes to each pod's own /tmp), nor its account (``run``: the provenance the
    flow read)."""
    store = str(store_location(output))
    name = locations.name(store)
    stem = name.removesuffix(".ps.zarr")
    with transactional_output("synthesize", store, overwrite, arguments, {}, run) as transaction:
        result = synthesize_processing_set(transaction.folder, spec)
        truth = str(transaction.sibling(f"{stem}.truth.json"))
        locations.write_bytes(truth, json.dumps(_truth(result), indent=1).encode())
        print(
            f"wrote {result.n_visibilities:,} visibilities in {result.elapsed_s:.1f} s "
            f"({result.visibilities_per_s / 1e6:.1f} Mvis/s)"
        )
        outputs = [
            file_output("visibilities", result.path, "msv4"),
            file_output("truth", truth, "json"),
        ]
        return transaction.commit(outputs, store_manifest_name(name))


def _truth(result) -> dict:
    """What processing should recover: sources, gains, RFI cells."""
    gains = result.gains
    return {
        "n_visibilities": result.n_visibilities,
        "antennas": list(result.antenna_names),
        "polarizations": list(result.polarizations),
        "sources_ra_dec_rad": np.asarray(result.source_ra_dec_rad).tolist(),
        "sources_lmn": np.asarray(result.source_lmn).tolist(),
        "gains": None
        if gains is None
        else {"real": gains.real.tolist(), "imag": gains.imag.tolist()},
        "rfi_cells": None if result.rfi_mask is None else np.argwhere(result.rfi_mask).tolist(),
    }


@flow(name="synthesize", task_runner=task_runner_from_env(), log_prints=True)
@flow_parameters(SynthesizeParameters)
def synthesize(**arguments: Any) -> list[dict[str, str]]:
    p = SynthesizeParameters(**arguments)
    params = p.model_dump()
    sky = {"sources": tuple(PointSource(**s) for s in params["sources"])} if p.sources else {}
    spec = SynthesisSpec(
        **{k: v for k, v in params.items() if k not in ("output", "overwrite", "sources")},
        **sky,
    )
    report_progress(0, 1)
    run = provenance.of_this_run()
    outputs = synthesize_visibilities.submit(p.output, p.overwrite, params, spec, run).result()
    report_progress(1, 1)
    return publish_outputs(outputs)
