"""The PipelineRun API (radps.io/v1alpha1) as Pydantic models.

These models are the single source of truth: the CRD schema is generated from them
(`radps_operator.crd`), `radps validate` and the operator parse manifests with them, and the
operator writes `.status` through them. Field names are snake_case in Python and camelCase on
the wire, as Kubernetes API conventions require.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from radps_flows.contract import (
    CACHE_MODES,
    CACHED_STAGES,
    PAUSE_TIMEOUT_ACTIONS,
    PIPELINERUN_GROUP,
    PIPELINERUN_PLURAL,
    PIPELINERUN_VERSION,
)

GROUP = PIPELINERUN_GROUP
VERSION = PIPELINERUN_VERSION
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "PipelineRun"
PLURAL = PIPELINERUN_PLURAL
SINGULAR = "pipelinerun"
SHORT_NAMES = ("prun",)

MAX_TIMEOUT_SECONDS = 30 * 24 * 3600
"""A run's longest allowed timeout (30 days); beyond it deadline arithmetic means nothing."""
MAX_TTL_SECONDS = 366 * 24 * 3600

MAX_PARAMETERS_BYTES = 512 * 1024
"""Serialized size limit of `spec.parameters`: keeps objects far below etcd's 1.5 MiB limit."""

# Kubernetes resource.Quantity, without a sign: a request or limit is never negative.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A Kubernetes object name (RFC 1123 subdomain)."""


def parse_time(value: str | None) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339, `Z` for UTC) as an aware datetime; None for none or
    an unreadable one."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, as with
    `kubectl apply --validate=strict`, so a typo never silently changes a run."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _check_quantity(value: int | str) -> int | str:
    ok = value >= 0 if isinstance(value, int) else re.fullmatch(QUANTITY_PATTERN, value)
    if not ok:
        raise ValueError("must be a non-negative quantity such as 500m, 2 or 4Gi")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    Field(
        description="A Kubernetes quantity such as 500m, 2, 4Gi; never negative.",
        json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN},
    ),
]


class SpecModel(WireModel):
    """Spec types are strict: `workers: "2"` is an error here exactly as it is for the API
    server, so `radps validate` and the cluster agree."""

    model_config = ConfigDict(strict=True)


class ResourceRequirements(SpecModel):
    """CPU and memory for a pod, as in a container's `resources`."""

    requests: dict[str, Quantity] | None = Field(
        default=None,
        description="Minimum resources the pod is scheduled with, e.g. {cpu: '1', memory: 2Gi}.",
    )
    limits: dict[str, Quantity] | None = Field(
        default=None,
        description="Maximum resources the pod may use, e.g. {cpu: '2', memory: 4Gi}.",
    )


class DaskSpec(SpecModel):
    """The run's own Dask cluster: created when the flow starts, removed when it ends."""

    workers: int = Field(
        default=2, ge=0, le=1000, description="Number of Dask workers (default 2)."
    )
    threads_per_worker: int = Field(
        default=1, ge=1, le=256, description="Threads in each Dask worker (default 1)."
    )
    worker_resources: ResourceRequirements | None = Field(
        default=None, description="CPU and memory of each Dask worker pod."
    )
    idle_timeout_seconds: int = Field(
        default=300,
        ge=0,
        le=7 * 24 * 3600,
        description="Seconds an idle Dask cluster lives before it shuts itself down (default 300).",
    )


PipelineName = Annotated[
    str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)
]


class PipelineRunSpec(SpecModel):
    """What to run. Immutable once created, except `cancel` and `resume` (a run is like a
    Job)."""

    pipeline: PipelineName = Field(
        description="Name of the pipeline in the catalog; `radps pipelines` lists them."
    )
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Pipeline parameters, validated against the pipeline's parameter schema "
            "(`radps pipelines --schema`); at most 512 KiB serialized."
        ),
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Container image of the flow run and its Dask cluster; "
        "default: the operator's configured image.",
    )
    work_pool: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="Prefect work pool that runs the flow; default: the operator's work pool.",
    )
    dask: DaskSpec | None = Field(
        default=None, description="Size of the run's own Dask cluster (default: 2 workers)."
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU and memory of the flow-run pod."
    )
    timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="Cancel the run and mark it TimedOut after this many seconds of running.",
    )
    start_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="Fail the run (reason StartDeadlineExceeded) when it is not running this "
        "many seconds after creation: no worker, an image that cannot be pulled, a pod that "
        "cannot be scheduled; default: the operator's (15 min).",
    )
    retries: int = Field(
        default=0, ge=0, le=10, description="Times Prefect retries a failed flow run (default 0)."
    )
    cancel: bool = Field(
        default=False,
        description="Set to true to cancel the run (phase Cancelling, then Cancelled). "
        "The only field that may change after creation; cannot be set back to false.",
    )
    cache: Literal[CACHE_MODES] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="The stage cache (pipelines with cached stages: imaging, calibration, "
        "flagging): Use (default) reuses the conversion, each block's flags and gains when "
        "their input and parameters are unchanged; Refresh recomputes and rewrites them; Off "
        "neither reads nor writes them.",
    )
    rerun_of: (
        Annotated[
            str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
        ]
        | None
    ) = Field(
        default=None,
        description="The PipelineRun this one reruns (`radps rerun NAME`), for the record.",
    )
    from_stage: Literal[CACHED_STAGES] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Recompute from this stage on (conversion, flagging, calibration, "
        "imaging); the stages before it come from the stage cache, as an earlier run of the "
        "same input and parameters committed them (a stage it never committed is recomputed, "
        "and the run's log says so).",
    )
    resume: dict[str, Any] | None = Field(
        default=None,
        description="The answer to the pause the run waits at (status.input), e.g. "
        "{niter: 500} or {action: stop}: checked against status.input.schema, a wrong one "
        "refused with the reason in status.input.refused and an Event, the run still paused. "
        "May change after creation, once per pause (`radps resume NAME -p niter=500`).",
    )
    pause_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=7 * 24 * 3600,
        description="How long a pause waits for an answer (pipelines that pause: imaging "
        "with interactive: true); default an hour.",
    )
    pause_timeout_action: Literal[PAUSE_TIMEOUT_ACTIONS] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="What an unanswered pause does at its timeout: Fail (default) the run, "
        "or Finish it with its products as they are then (Completed).",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TTL_SECONDS,
        description="Delete the PipelineRun this many seconds after it finished; "
        "unset keeps it forever.",
    )

    def dask_or_default(self) -> DaskSpec:
        return self.dask or DaskSpec()

    def flow_parameters(self) -> dict[str, Any]:
        """The flow run's parameters: spec.parameters, with the spec fields that are also
        parameters (SPEC_PARAMETERS) where set."""
        out = dict(self.parameters)
        for field, parameter in SPEC_PARAMETERS.items():
            value = getattr(self, field)
            if value is not None:
                out[parameter] = value.lower() if field == "pause_timeout_action" else value
        return out


SPEC_PARAMETERS = {
    "cache": "cache",
    "from_stage": "from_stage",
    "pause_timeout_seconds": "pause_timeout_seconds",
    "pause_timeout_action": "pause_timeout_action",
}
"""Spec fields (Python names) that a pipeline takes as parameters of these names: set in one
place or the other, never both (validation)."""


class Phase(StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    PAUSED = "Paused"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CRASHED = "Crashed"
    CANCELLING = "Cancelling"
    CANCELLED = "Cancelled"
    TIMED_OUT = "TimedOut"


FINISHED_PHASES = frozenset(
    {Phase.COMPLETED, Phase.FAILED, Phase.CRASHED, Phase.CANCELLED, Phase.TIMED_OUT}
)


class Condition(WireModel):
    """A Kubernetes API convention condition."""

    type: str = Field(description="Condition type, e.g. Succeeded or PrefectReachable.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(
        default=None, description="One CamelCase word saying why, e.g. Running, InvalidSpec."
    )
    message: str | None = Field(default=None, description="Human-readable details.")
    last_transition_time: datetime | None = Field(
        default=None, description="When the status last changed."
    )


class PrefectStatus(WireModel):
    """Where to find the run in Prefect."""

    deployment_id: str | None = Field(default=None, description="Prefect deployment id.")
    flow_run_id: str | None = Field(default=None, description="Prefect flow run id.")
    flow_run_name: str | None = Field(default=None, description="Prefect flow run name.")
    state: str | None = Field(default=None, description="Prefect state name of the flow run.")
    url: str | None = Field(default=None, description="Link to the flow run in the Prefect UI.")


class DaskStatus(WireModel):
    """The run's Dask cluster while it exists."""

    cluster: str | None = Field(default=None, description="Name of the DaskCluster.")
    dashboard_url: str | None = Field(default=None, description="Dask dashboard link.")
    workers: int | None = Field(default=None, ge=0, description="Workers currently running.")


class Progress(WireModel):
    """Pipeline stages done out of the total."""

    completed: int = Field(default=0, ge=0, description="Stages finished.")
    total: int = Field(default=0, ge=0, description="Stages in the pipeline.")
    summary: str | None = Field(
        default=None, description="completed/total, for `kubectl get` (e.g. 2/3)."
    )


class Output(WireModel):
    """One product of the run."""

    name: str = Field(description="Short name, e.g. image.")
    uri: str = Field(description="Where the product is (a path or URL).")
    kind: str = Field(description="What it is, e.g. fits, png, zarr.")


class InputRequest(WireModel):
    """What a paused run waits for (`radps resume`, spec.resume or Prefect's UI answer it)."""

    pause: int = Field(ge=1, description="Which pause of the run (1, 2, ...).")
    prompt: str = Field(description="What the run asks, with where it stands.")
    since: datetime | None = Field(default=None, description="When it paused.")
    expires: datetime | None = Field(
        default=None, description="When the pause times out (spec.pauseTimeoutAction then)."
    )
    timeout_action: str | None = Field(default=None, description="Fail or Finish.")
    answer_schema: dict[str, Any] = Field(
        alias="schema", description="JSON schema of an answer (spec.resume)."
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="The answer's fields as they stand."
    )
    previews: list[Annotated[str, Field(description="A PNG's path or URL.")]] = Field(
        default_factory=list, description="Images to look at (paths or URLs of PNGs)."
    )
    artifacts: str | None = Field(
        default=None, description="The flow run's artifacts in Prefect's UI (the previews)."
    )
    answer_with: list[Annotated[str, Field(description="A command line.")]] = Field(
        default_factory=list, description="Commands that answer."
    )
    refused: str | None = Field(
        default=None, description="Why the last answer was refused (the run still waits)."
    )
    answered_generation: int | None = Field(
        default=None, description="metadata.generation of the spec.resume that answered."
    )


class PipelineRunStatus(WireModel):
    """What the operator observed; written only by the operator."""

    phase: Phase | None = Field(default=None, description="Where the run is in its life.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Succeeded (Unknown while running), PrefectReachable, and others.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the status describes."
    )
    start_time: datetime | None = Field(default=None, description="When the flow run started.")
    completion_time: datetime | None = Field(
        default=None, description="When the flow run finished."
    )
    duration: str | None = Field(
        default=None, description="Running time, e.g. 2m13s, for `kubectl get`."
    )
    message: str | None = Field(default=None, description="Latest human-readable message.")
    prefect: PrefectStatus | None = Field(default=None, description="The Prefect flow run.")
    dask: DaskStatus | None = Field(default=None, description="The run's Dask cluster.")
    progress: Progress | None = Field(default=None, description="Stages done / total.")
    outputs: list[Output] = Field(default_factory=list, description="Products of the run.")
    cache: (
        dict[
            str,
            Annotated[str, Field(description="hit, miss, partial (some blocks hit) or refreshed.")],
        ]
        | None
    ) = Field(
        default=None,
        description="What the stage cache gave each cached stage (conversion, flagging, "
        "calibration): hit, miss, partial (some blocks hit) or refreshed.",
    )
    input: InputRequest | None = Field(
        default=None, description="While the run is Paused: what it waits for."
    )
    kopf: dict[str, Any] | None = Field(
        default=None,
        description="The operator's own bookkeeping (handler progress); not for users.",
    )


class ObjectMeta(BaseModel):
    """The part of metadata radps reads; everything else passes through untouched."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[
        str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)
    ] = Field(description="Run name: a DNS label, also the Prefect flow run name.")
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None


class PipelineRun(WireModel):
    """A request to run one pipeline once: one PipelineRun = one Prefect flow run."""

    api_version: Literal["radps.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["PipelineRun"]
    metadata: ObjectMeta
    spec: PipelineRunSpec
    status: PipelineRunStatus | None = None
