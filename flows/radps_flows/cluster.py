"""Which Dask cluster a flow run gets: a LocalCluster on a laptop, a KubeCluster in Kubernetes.

The choice travels as environment variables (set by `radps run` locally, by the operator's job
variables in a cluster) so the same flow code runs unchanged in both places.
"""

from __future__ import annotations

import contextvars
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dask
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

from radps_flows import contract
from radps_flows.allocator import ENVIRONMENT as ALLOCATOR_ENV
from radps_flows.contract import RUN_NAME_LABEL, RUN_UID_LABEL, DaskClusterConfig

DASK_SETTINGS = {
    "distributed.worker.profile.interval": "100ms",
    "distributed.admin.tick.interval": "200ms",
}
"""Dask's periodic work, sized for tasks of seconds. At the defaults (a profile sample every
10 ms, an event-loop health tick every 20 ms) the event loop of a worker in the flow process
took 5% of a core while a block of 1e8 visibilities was imaged, on a 2-core machine where
every busy thread slows the gridding; with these 2-3%, and the profile still has tens of
samples per task."""

DASK_ENVIRONMENT = {
    "DASK_" + key.upper().replace(".", "__").replace("-", "_"): value
    for key, value in DASK_SETTINGS.items()
}
"""The same, for the pods of a Kubernetes cluster (Dask reads ``DASK_*`` at import)."""
RUN_AS_USER = 10001
KUBE_CLUSTER_START_TIMEOUT_SECONDS = 600


class RadpsDaskTaskRunner(DaskTaskRunner):
    """prefect-dask's task runner, submitting with ``pure=False``, whose cluster can start
    in the background.

    Every submission carries a fresh task-run id, so Dask's default content key (``tokenize``:
    a cloudpickle of the wrapped task and its serialized Prefect context, 0.3-1 s per task on
    2 busy cores, measured with py-spy) can never find a duplicate: it is pure overhead.
    The body is prefect-dask 0.3's ``submit`` with that one argument added."""

    def __init__(self, *args: Any, expected_workers: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.expected_workers = expected_workers
        """The run's Dask size, as the blocks' executor reckons memory with it."""
        self._starting: threading.Thread | None = None

    def duplicate(self) -> RadpsDaskTaskRunner:
        copy = super().duplicate()  # prefect-dask copies only its own settings
        copy.expected_workers = self.expected_workers
        return copy

    def start_in_background(self) -> None:
        """Start the cluster now, in a thread, so that it comes up while the flow opens its
        input (or converts an MSv2) instead of after: on Kubernetes the scheduler and worker
        pods take seconds to tens of seconds. :attr:`client` waits for it; a failed start is
        tried again (and raises) there."""
        if self._client is not None or self._starting is not None:
            return
        context = contextvars.copy_context()  # the flow run's Prefect settings and logger
        self._starting = threading.Thread(
            target=context.run,
            args=(lambda: self.client,),
            name="radps-dask-cluster-start",
            daemon=True,
        )
        self._starting.start()

    def _wait_for_start(self) -> None:
        starting = self._starting
        if starting is not None and starting is not threading.current_thread():
            starting.join()

    @property
    def client(self):  # type: ignore[override]
        self._wait_for_start()
        if self._client is not None:  # every submit comes here: no config change each time
            return self._client
        with dask.config.set(DASK_SETTINGS):  # read by a local cluster as it starts
            return DaskTaskRunner.client.fget(self)  # type: ignore[attr-defined]

    def __exit__(self, *exc_info: Any) -> None:
        self._wait_for_start()  # a cluster still starting would outlive the flow run
        super().__exit__(*exc_info)

    def submit(self, task, parameters, wait_for=None, dependencies=None):  # type: ignore[override]
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        parameters = self._optimize_futures(parameters)
        wait_for = self._optimize_futures(wait_for) if wait_for else None
        future = self.client.submit(
            task,
            parameters=parameters,
            wait_for=wait_for,
            dependencies=dependencies,
            return_type="state",
            pure=False,
        )
        return PrefectDaskFuture(wrapped_future=future, task_run_id=future.task_run_id)


def local_task_runner(config: DaskClusterConfig) -> DaskTaskRunner:
    """A DaskTaskRunner over a LocalCluster, started lazily by Prefect on the first submitted
    task and closed when the flow run ends.

    Workers are threads of the flow-run process: the array kernels (numpy, ducc0) release the
    GIL, and a worker process would first spend ~10 s importing Prefect, xradio and the
    pipelines before its first task (measured on the VLA example: 29 s with processes)."""
    if config.address:
        return RadpsDaskTaskRunner(address=config.address, expected_workers=config.workers)
    return RadpsDaskTaskRunner(
        expected_workers=max(1, config.workers),
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            # workers=0 is valid for a Kubernetes cluster that scales up; locally it needs one.
            "n_workers": max(1, config.workers),
            "threads_per_worker": config.threads_per_worker,
            "processes": False,
            "dashboard_address": "127.0.0.1:0",
        },
    )


@dataclass(frozen=True)
class KubeContext:
    """Where a flow run runs in Kubernetes: its pod (from the downward API, set by the work
    pool's job template) and its PipelineRun (set by the operator's job variables)."""

    pod_name: str
    pod_uid: str
    namespace: str
    run_name: str
    run_uid: str
    image: str
    data_claim: str | None = None
    data_mount_path: str = "/data"
    worker_resources: dict[str, Any] | None = None
    service_account: str | None = None
    """The flow-run pod's own account, which its Dask pods use too."""
    object_store_env: tuple[dict[str, Any], ...] = ()
    """Env entries of the object store (endpoint, region, key pair from its Secret) that the
    flow-run pod has and its Dask workers get (contract.object_store_env)."""
    pod_settings: Mapping[str, Any] = field(default_factory=dict)
    """The chart's placement, pull secrets, extra env and volumes of a run's pods
    (contract.RUN_POD_SETTINGS_ENV): its Dask pods get them as the flow-run pod did."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> KubeContext | None:
        """None outside a Kubernetes flow-run pod."""
        if not environ.get("RADPS_POD_UID"):
            return None
        resources = environ.get(contract.DASK_WORKER_RESOURCES_ENV)
        return cls(
            pod_name=environ["RADPS_POD_NAME"],
            pod_uid=environ["RADPS_POD_UID"],
            namespace=environ.get("RADPS_POD_NAMESPACE", "default"),
            run_name=environ.get(contract.RUN_NAME_ENV, environ["RADPS_POD_NAME"]),
            run_uid=environ.get(contract.RUN_UID_ENV, environ["RADPS_POD_UID"]),
            image=environ.get(contract.IMAGE_ENV, "radps:0.1.0"),
            data_claim=environ.get("RADPS_DATA_CLAIM") or None,
            data_mount_path=environ.get("RADPS_DATA_MOUNT_PATH") or "/data",
            worker_resources=json.loads(resources) if resources else None,
            service_account=environ.get("RADPS_POD_SERVICE_ACCOUNT") or None,
            object_store_env=tuple(contract.object_store_env_from(environ)),
            pod_settings=json.loads(environ.get(contract.RUN_POD_SETTINGS_ENV) or "{}"),
        )

    @property
    def cluster_name(self) -> str:
        """DNS-safe and unique per flow-run pod, not per run: a run rescheduled after its pod
        was deleted starts in a new pod while the old pod's DaskCluster may still be waiting
        for garbage collection, and under the same name the new pod would connect to that
        doomed cluster (the rescheduled run then failed when it was collected). The scheduler
        Service is `<name>-scheduler`; the run's label finds every attempt's cluster."""
        return f"{self.run_name[:40].rstrip('-')}-{self.pod_uid[:8]}"


def dask_cluster_spec(config: DaskClusterConfig, kube: KubeContext) -> dict[str, Any]:
    """The run's DaskCluster: labelled with the PipelineRun, owned by the flow-run pod (so
    Kubernetes deletes it if the pod dies), pods fit for the restricted Pod Security Standard,
    and the data volume at the same path as in the flow pod."""
    from dask_kubernetes.operator import make_cluster_spec

    spec = make_cluster_spec(
        name=kube.cluster_name,
        image=kube.image,
        n_workers=config.workers,
        resources=kube.worker_resources,
        env={"HOME": "/tmp", **ALLOCATOR_ENV, **DASK_ENVIRONMENT},
        # distributed no longer installs the dask-worker/dask-scheduler scripts: `dask <role>`
        # radps_flows.preload: xradio imported before any task thread (see that module)
        worker_command=(
            f"dask worker --nthreads {config.threads_per_worker} --preload radps_flows.preload"
        ),
        idle_timeout=config.idle_timeout_seconds,
    )
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    if scheduler["args"][:1] == ["dask-scheduler"]:
        scheduler["args"] = ["dask", "scheduler", *scheduler["args"][1:]]
    spec["metadata"]["labels"] = {
        RUN_UID_LABEL: kube.run_uid,
        RUN_NAME_LABEL: kube.run_name,
        "app.kubernetes.io/part-of": "radps",
        "app.kubernetes.io/component": "dask",
    }
    spec["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Pod", "name": kube.pod_name, "uid": kube.pod_uid}
    ]
    for pod in (spec["spec"]["scheduler"]["spec"], spec["spec"]["worker"]["spec"]):
        _harden(pod, kube)
    # the workers read and write s3:// data as the flow-run pod does: the same endpoint, and
    # the key pair from the same Secret (never a literal in the DaskCluster)
    for container in spec["spec"]["worker"]["spec"]["containers"]:
        container.setdefault("env", []).extend(kube.object_store_env)
    for pod in (spec["spec"]["scheduler"]["spec"], spec["spec"]["worker"]["spec"]):
        contract.apply_pod_settings(pod, kube.pod_settings)
    return spec


def _harden(pod: dict[str, Any], kube: KubeContext) -> None:
    # The flow-run pod's account, the only one admission allows for a run's pods
    # (charts/radps/templates/admission.yaml); Dask pods never call the Kubernetes API, so
    # its token is not mounted: there it could only be stolen.
    if kube.service_account:
        pod["serviceAccountName"] = kube.service_account
    pod["automountServiceAccountToken"] = False
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if kube.data_claim:
        pod["volumes"].append(
            {"name": "data", "persistentVolumeClaim": {"claimName": kube.data_claim}}
        )
        mounts.append({"name": "data", "mountPath": kube.data_mount_path})
    for container in pod["containers"]:
        container["imagePullPolicy"] = "IfNotPresent"
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        container["volumeMounts"] = mounts


def kube_task_runner(config: DaskClusterConfig, kube: KubeContext) -> DaskTaskRunner:
    """A DaskTaskRunner over the run's own KubeCluster, created on the first task and deleted
    when the flow run ends."""
    from dask_kubernetes.operator.kubecluster.kubecluster import CreateMode

    return RadpsDaskTaskRunner(
        expected_workers=config.workers,
        cluster_class="dask_kubernetes.operator.KubeCluster",
        cluster_kwargs={
            "custom_cluster_spec": dask_cluster_spec(config, kube),
            "namespace": kube.namespace,
            "shutdown_on_close": True,
            # never adopt an existing cluster: a name clash is a bug, not a reconnection
            "create_mode": CreateMode.CREATE_ONLY,
            "quiet": True,
            # dask-kubernetes waits 60 s by default for the scheduler; a node pulling or
            # unpacking the image for the first Dask pods can take longer (a CI-like e2e run
            # ended TimedOut after 62 s)
            "resource_timeout": KUBE_CLUSTER_START_TIMEOUT_SECONDS,
        },
    )


def task_runner_from_env() -> DaskTaskRunner:
    config = DaskClusterConfig.from_env()
    kube = KubeContext.from_env()
    if kube is not None and not config.address:
        return kube_task_runner(config, kube)
    return local_task_runner(config)
