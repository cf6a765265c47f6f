"""What the operator and flow-run pods share, in one light module (both sides load it):
the PipelineRun API's coordinates (radps_flows.origin and provenance read PipelineRuns;
radps_operator.api defines them with these), the labels that tie a run's objects (flow-run
Job, DaskCluster, pods) to its PipelineRun (the operator finds and cleans up by them, the flow
sets them), the environment the operator gives each flow-run pod, and the artifact through
which a flow run reports its products, and the size of a run's Dask cluster as it travels in
the environment. It imports only the standard library, so each side loads it without the
other's stack (the operator never imports Prefect's Dask runner to size a cluster)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

PIPELINERUN_GROUP = "radps.io"
PIPELINERUN_VERSION = "v1alpha1"
PIPELINERUN_PLURAL = "pipelineruns"

RUN_UID_LABEL = "radps.io/run-uid"
RUN_NAME_LABEL = "radps.io/run-name"
PIPELINE_LABEL = "radps.io/pipeline"

RUN_NAME_ENV = "RADPS_RUN_NAME"
RUN_NAMESPACE_ENV = "RADPS_RUN_NAMESPACE"
RUN_UID_ENV = "RADPS_RUN_UID"
IMAGE_ENV = "RADPS_IMAGE"
"""The image reference the run asked for (its ID, the digest that ran, is read from the pod)."""

OUTPUTS_ARTIFACT_DESCRIPTION = "radps outputs"
"""The table artifact listing a flow run's products; the operator copies its rows into
`.status.outputs`."""
SUMMARY_ARTIFACT_DESCRIPTION = "radps science summary"
"""The table artifact of an imaging run's science summary (peak, rms, beam, flags, CLEAN);
`radps run` prints it at the end."""

DASK_ENV_PREFIX = "RADPS_DASK_"
DASK_WORKER_RESOURCES_ENV = f"{DASK_ENV_PREFIX}WORKER_RESOURCES"
"""JSON of the Dask worker pods' requests and limits (spec.dask.workerResources)."""


@dataclass(frozen=True)
class DaskClusterConfig:
    workers: int = 2
    threads_per_worker: int = 1
    idle_timeout_seconds: int = 300
    address: str | None = None
    """Connect to this running scheduler instead of starting a cluster."""

    def to_env(self) -> dict[str, str]:
        env = {
            f"{DASK_ENV_PREFIX}WORKERS": str(self.workers),
            f"{DASK_ENV_PREFIX}THREADS_PER_WORKER": str(self.threads_per_worker),
            f"{DASK_ENV_PREFIX}IDLE_TIMEOUT_SECONDS": str(self.idle_timeout_seconds),
        }
        if self.address:
            env[f"{DASK_ENV_PREFIX}ADDRESS"] = self.address
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> DaskClusterConfig:
        def integer(name: str, default: int) -> int:
            raw = environ.get(f"{DASK_ENV_PREFIX}{name}")
            return default if raw in (None, "") else int(raw)

        defaults = cls()
        return cls(
            workers=integer("WORKERS", defaults.workers),
            threads_per_worker=integer("THREADS_PER_WORKER", defaults.threads_per_worker),
            idle_timeout_seconds=integer("IDLE_TIMEOUT_SECONDS", defaults.idle_timeout_seconds),
            address=environ.get(f"{DASK_ENV_PREFIX}ADDRESS") or None,
        )


PROGRESS_COMPLETED_LABEL = "radps.io/progress-completed"
PROGRESS_TOTAL_LABEL = "radps.io/progress-total"
"""A flow run's stage progress, kept as labels on the flow run itself: the flow writes them
(:mod:`radps_flows.progress`), the operator and `radps run` read them (:func:`read_progress`)."""


def read_progress(
    labels: Mapping[str, object] | None, *, run_completed: bool = False
) -> tuple[int, int] | None:
    """(completed, total) from a flow run's labels, or None before the first report. A
    Completed run has done every stage, even while its last labels are still on their way."""
    if not labels or PROGRESS_TOTAL_LABEL not in labels:
        return None
    try:
        completed = int(str(labels.get(PROGRESS_COMPLETED_LABEL, 0)))
        total = int(str(labels[PROGRESS_TOTAL_LABEL]))
    except ValueError:
        return None
    return (total, total) if run_completed else (completed, total)


CACHE_DIR_ENV = "RADPS_CACHE_DIR"
STAGE_CACHE_FOLDER = ".radps-cache"
"""The stage cache's root (a folder or URL); on a cluster the folder of this name on the data
volume, which the run's Dask pods mount at the same path."""

CACHE_MODES = ("Use", "Refresh", "Off")
CACHED_STAGES = ("conversion", "flagging", "calibration", "imaging")
"""The stage cache's modes (a PipelineRun's spec.cache, a pipeline's ``cache`` parameter) and
the stages in the order a run makes them (spec.fromStage); see
:mod:`radps_flows.stage_cache`."""

CACHE_LABEL = "radps.io/cache"
"""What the stage cache gave a flow run, kept as a label on it (written by
:func:`radps_flows.progress.report_cache`, read by :func:`read_cache`): ``stage=outcome``
pairs, comma-separated, such as ``conversion=hit,flagging=hit,calibration=miss``."""


def format_cache(outcomes: Mapping[str, str]) -> str:
    return ",".join(f"{stage}={outcome}" for stage, outcome in outcomes.items())


def read_cache(labels: Mapping[str, object] | None) -> dict[str, str] | None:
    """The stage-cache outcomes of a flow run's labels, or None where it reported none."""
    text = str((labels or {}).get(CACHE_LABEL) or "")
    pairs = [item.split("=", 1) for item in text.split(",") if "=" in item]
    return {stage: outcome for stage, outcome in pairs} or None


PAUSE_LABEL = "radps.io/pause"
"""The number of a flow run's latest pause for input (1, 2, ...), a label on it; what the pause
asks is the flow run input :func:`pause_input_key` holds (a :class:`PauseRequest`)."""
PAUSE_TIMEOUT_ACTIONS = ("Fail", "Finish")
"""A PipelineRun's spec.pauseTimeoutAction; the imaging pipeline's ``pause_timeout_action``
is the same in lower case."""


def pause_input_key(pause: int) -> str:
    return f"radps-pause-{pause}"


@dataclass(frozen=True)
class PauseRequest:
    """What a paused run asks, as the flow writes it (a flow run input, JSON) and the operator
    and `radps run` show it (`.status.input`)."""

    pause: int
    prompt: str
    defaults: dict
    """The answer's fields as they stand (what an empty answer keeps)."""
    previews: list
    """Where the images to look at are (paths or URLs of PNGs)."""
    timeout_seconds: int
    timeout_action: str
    """fail or finish, as the pipeline's pause_timeout_action."""
    refused: str | None = None
    """Why the answer to the previous pause was refused (this pause asks again)."""

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, value: object) -> PauseRequest | None:
        """None for what is not one (a flow run input someone else wrote)."""
        if not isinstance(value, dict):
            return None
        try:
            return cls(**{k: value[k] for k in cls.__dataclass_fields__ if k in value})
        except TypeError:
            return None


def flow_run_url(ui_url: str, flow_run_id: object) -> str:
    """Where Prefect's UI shows a flow run (`.status.prefect.url`, `radps run`'s link)."""
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


OBJECT_STORE_SECRET_ENV = "RADPS_OBJECT_STORE_SECRET"
"""The Secret of the run's namespace holding the object store's key pair (the chart's
objectStore); a flow-run pod passes its name on, so its Dask pods read the same Secret."""
OBJECT_STORE_ACCESS_KEY_KEY_ENV = "RADPS_OBJECT_STORE_ACCESS_KEY_KEY"
OBJECT_STORE_SECRET_KEY_KEY_ENV = "RADPS_OBJECT_STORE_SECRET_KEY_KEY"


def object_store_env(
    secret: str | None,
    access_key_key: str = "AWS_ACCESS_KEY_ID",
    secret_key_key: str = "AWS_SECRET_ACCESS_KEY",
    endpoint: str | None = None,
    region: str | None = None,
) -> list[dict[str, object]]:
    """The env entries that point a pod's S3 clients at the object store, as AWS's own
    variables (radps_flows.locations): the endpoint and region as values, the key pair from
    ``secret`` (never a literal), and the Secret's name and keys for the pods it starts."""
    env: list[dict[str, object]] = []
    if endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": endpoint})
    if region:
        env.append({"name": "AWS_REGION", "value": region})
    if secret:
        for name, key in (
            ("AWS_ACCESS_KEY_ID", access_key_key),
            ("AWS_SECRET_ACCESS_KEY", secret_key_key),
        ):
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
        env += [
            {"name": OBJECT_STORE_SECRET_ENV, "value": secret},
            {"name": OBJECT_STORE_ACCESS_KEY_KEY_ENV, "value": access_key_key},
            {"name": OBJECT_STORE_SECRET_KEY_KEY_ENV, "value": secret_key_key},
        ]
    return env


def object_store_env_from(environ: Mapping[str, str]) -> list[dict[str, object]]:
    """:func:`object_store_env` as a flow-run pod's own environment describes it."""
    return object_store_env(
        environ.get(OBJECT_STORE_SECRET_ENV) or None,
        environ.get(OBJECT_STORE_ACCESS_KEY_KEY_ENV) or "AWS_ACCESS_KEY_ID",
        environ.get(OBJECT_STORE_SECRET_KEY_KEY_ENV) or "AWS_SECRET_ACCESS_KEY",
        environ.get("AWS_ENDPOINT_URL_S3") or None,
        environ.get("AWS_REGION") or None,
    )


RUN_POD_SETTINGS_ENV = "RADPS_RUN_POD_SETTINGS"
"""JSON of what the chart gives a run's pods besides their own settings (its
flowRuns.scheduling, extraEnv, extraVolumes, extraVolumeMounts and imagePullSecrets): the work
pool's template applies it to the flow-run pod and passes it on in this env, and the flow
applies it to the pods of its DaskCluster (:func:`apply_pod_settings`)."""
POD_PLACEMENT_KEYS = ("nodeSelector", "tolerations", "affinity", "priorityClassName")


def apply_pod_settings(pod: dict, settings: Mapping[str, object]) -> None:
    """Add ``settings`` to a pod spec in place: pull secrets, placement, and the extra volumes,
    and env and mounts of each container (after the pod's own, so a name it sets stays)."""
    if settings.get("imagePullSecrets"):
        pod["imagePullSecrets"] = list(settings["imagePullSecrets"])  # type: ignore[call-overload]
    for key in POD_PLACEMENT_KEYS:
        if settings.get(key):
            pod[key] = settings[key]
    if settings.get("extraVolumes"):
        pod["volumes"] = [*pod.get("volumes", []), *settings["extraVolumes"]]  # type: ignore[misc]
    for container in pod.get("containers", []):
        own = {e.get("name") for e in container.get("env", [])}
        extra = [e for e in settings.get("extraEnv") or [] if e.get("name") not in own]  # type: ignore[union-attr]
        if extra:
            container["env"] = [*container.get("env", []), *extra]
        if settings.get("extraVolumeMounts"):
            mounts = settings["extraVolumeMounts"]
            container["volumeMounts"] = [*container.get("volumeMounts", []), *mounts]  # type: ignore[misc]
