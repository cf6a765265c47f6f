"""The Kubernetes work pool every flow run goes through, and its base job template.

The template starts from prefect-kubernetes' own default (so Prefect's job variables keep
working) and adds what radps needs of a flow-run pod: the restricted Pod Security Standard, a
writable /tmp on a read-only root, the shared data volume at the same path as in the Dask pods
(or, without one, the object store's endpoint and key pair as env from its Secret),
and the pod's own name and UID so the run's DaskCluster can be owned by it (Kubernetes then
garbage-collects the cluster if the pod dies). The command and the service account are fixed
(`PINNED_VARIABLES`), not job variables.

The Prefect worker of the Helm chart runs `python -m radps_operator.work_pool` before it starts,
so the pool is created or updated from this one place.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from radps_flows.contract import (
    CACHE_DIR_ENV,
    OBJECT_STORE_ACCESS_KEY_KEY_ENV,
    OBJECT_STORE_SECRET_ENV,
    OBJECT_STORE_SECRET_KEY_KEY_ENV,
    RUN_POD_SETTINGS_ENV,
    STAGE_CACHE_FOLDER,
    apply_pod_settings,
    object_store_env,
)

FLOW_POD_SETTINGS_ENV = "RADPS_FLOW_POD_SETTINGS"
"""The chart's JSON of the flow-run pods' extra settings (its radps.flowPodSettings)."""

POD_IDENTITY_ENV = (
    "RADPS_POD_NAME",
    "RADPS_POD_UID",
    "RADPS_POD_NAMESPACE",
    "RADPS_POD_SERVICE_ACCOUNT",
)
RUN_LABEL_PREFIX = "radps.io/"

PINNED_VARIABLES = ("command", "service_account_name", "cluster_config")
"""Job variables of prefect-kubernetes' default template that are written into this one as
fixed values instead: whoever can create a flow run (anyone holding the Prefect credential)
could otherwise run another command, as another service account, or through another cluster
config. What stays variable is what the operator sets per run (namespace, image, env, labels,
resources); admission keeps the image to the allowed ones."""
FLOW_RUN_COMMAND = "python -m radps_flows.origin -- prefect flow-run execute"
"""Prefect's own flow-run command, behind radps_flows.origin: the pod runs its flow run only if
a PipelineRun of the pod's namespace records it (the `namespace` job variable stays a variable,
so this is what keeps a flow run created by someone else out of a namespace)."""


@dataclass(frozen=True)
class FlowPodOptions:
    namespace: str = "default"
    image: str = "radps:0.1.0"
    service_account: str = "radps-flow"
    data_claim: str | None = None
    data_mount_path: str = "/data"
    auth_secret: str | None = None
    """Secret holding `auth-string` for a Prefect server behind basic auth."""
    auth_secret_key: str = "auth-string"
    finished_job_ttl_seconds: int = 3600
    run_as_user: int = 10001
    object_store_endpoint: str | None = None
    object_store_region: str | None = None
    object_store_secret: str | None = None
    """Secret of the run's namespace holding the object store's key pair (s3:// data)."""
    object_store_access_key_key: str = "AWS_ACCESS_KEY_ID"
    object_store_secret_key_key: str = "AWS_SECRET_ACCESS_KEY"
    pod_settings: dict[str, Any] = field(default_factory=dict)
    """The chart's flowRuns placement, pull secrets, extra env, volumes and mounts
    (contract.apply_pod_settings), for the flow-run pod and, through its env, its Dask pods."""


def base_job_template(options: FlowPodOptions) -> dict[str, Any]:
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    defaults = template["variables"]["properties"]
    for pinned in PINNED_VARIABLES:
        del defaults[pinned]
    defaults["namespace"]["default"] = options.namespace
    defaults["image"]["default"] = options.image
    defaults["image_pull_policy"]["default"] = "IfNotPresent"
    defaults["finished_job_ttl"]["default"] = options.finished_job_ttl_seconds
    defaults["active_deadline_seconds"] = {
        "title": "Active deadline (s)",
        "description": "Kubernetes stops the Job after this many seconds (the operator sets "
        "it from spec.timeoutSeconds; unset: no limit).",
        "type": "integer",
        "default": None,
    }

    configuration = template["job_configuration"]
    configuration["command"] = FLOW_RUN_COMMAND
    configuration["cluster_config"] = None  # the worker's own in-cluster identity
    configuration["job_manifest"]["spec"]["activeDeadlineSeconds"] = "{{ active_deadline_seconds }}"
    pod = configuration["job_manifest"]["spec"]["template"]["spec"]
    pod["serviceAccountName"] = options.service_account
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": options.run_as_user,
        "runAsGroup": options.run_as_user,
        "fsGroup": options.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    volumes = [{"name": "tmp", "emptyDir": {}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if options.data_claim:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": options.data_claim}})
        mounts.append({"name": "data", "mountPath": options.data_mount_path})
    pod["volumes"] = volumes

    container = pod["containers"][0]
    container["args"] = FLOW_RUN_COMMAND.split()
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    container["volumeMounts"] = mounts
    # A list here (instead of the "{{ env }}" placeholder) keeps these valueFrom entries;
    # the worker prepends the run's job-variable env to it.
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "PREFECT_HOME", "value": "/tmp/prefect"},
        _field_env("RADPS_POD_NAME", "metadata.name"),
        _field_env("RADPS_POD_UID", "metadata.uid"),
        _field_env("RADPS_POD_NAMESPACE", "metadata.namespace"),
        # the run's Dask pods take the same account (admission allows no other)
        _field_env("RADPS_POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        {"name": "RADPS_DATA_MOUNT_PATH", "value": options.data_mount_path},
    ]
    if options.data_claim:  # the flow's Dask pods mount the same claim at the same path
        env.append({"name": "RADPS_DATA_CLAIM", "value": options.data_claim})
        # the stage cache on the data volume, where the run's Dask pods see it too
        cache = f"{options.data_mount_path.rstrip('/')}/{STAGE_CACHE_FOLDER}"
        env.append({"name": CACHE_DIR_ENV, "value": cache})
    if options.auth_secret:
        env.append(
            {
                "name": "PREFECT_API_AUTH_STRING",
                "valueFrom": {
                    "secretKeyRef": {"name": options.auth_secret, "key": options.auth_secret_key}
                },
            }
        )
    env += object_store_env(
        options.object_store_secret,
        options.object_store_access_key_key,
        options.object_store_secret_key_key,
        options.object_store_endpoint,
        options.object_store_region,
    )
    # Passed on to the run's Dask pods (radps_flows.cluster); always set, even to {}: the
    # worker puts a flow run's job-variable env before this list, and the last entry of a
    # name wins, so no one creating a flow run can give its Dask pods volumes of their own.
    env.append({"name": RUN_POD_SETTINGS_ENV, "value": json.dumps(options.pod_settings)})
    container["env"] = env
    apply_pod_settings(pod, options.pod_settings)
    return template


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def ensure_work_pool(name: str, template: dict[str, Any], pool_type: str = "kubernetes") -> str:
    """Create the pool, or bring an existing one's template up to date; says which."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=pool_type, base_job_template=template)
            )
            return "created"
        if existing.type != pool_type:
            raise ValueError(
                f"work pool {name!r} exists with type {existing.type!r}, not {pool_type!r}"
            )
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        return "updated"


def options_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> FlowPodOptions:
    defaults = FlowPodOptions()
    return FlowPodOptions(
        namespace=environ.get("RADPS_FLOW_NAMESPACE", defaults.namespace),
        image=environ.get("RADPS_DEFAULT_IMAGE", defaults.image),
        service_account=environ.get("RADPS_FLOW_SERVICE_ACCOUNT", defaults.service_account),
        data_claim=environ.get("RADPS_DATA_CLAIM") or None,
        data_mount_path=environ.get("RADPS_DATA_MOUNT_PATH", defaults.data_mount_path),
        auth_secret=environ.get("RADPS_AUTH_SECRET") or None,
        auth_secret_key=environ.get("RADPS_AUTH_SECRET_KEY", defaults.auth_secret_key),
        finished_job_ttl_seconds=int(
            environ.get("RADPS_FINISHED_JOB_TTL_SECONDS", defaults.finished_job_ttl_seconds)
        ),
        object_store_endpoint=environ.get("RADPS_OBJECT_STORE_ENDPOINT") or None,
        object_store_region=environ.get("RADPS_OBJECT_STORE_REGION") or None,
        object_store_secret=environ.get(OBJECT_STORE_SECRET_ENV) or None,
        object_store_access_key_key=environ.get(OBJECT_STORE_ACCESS_KEY_KEY_ENV)
        or defaults.object_store_access_key_key,
        object_store_secret_key_key=environ.get(OBJECT_STORE_SECRET_KEY_KEY_ENV)
        or defaults.object_store_secret_key_key,
        pod_settings=json.loads(environ.get(FLOW_POD_SETTINGS_ENV) or "{}"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m radps_operator.work_pool",
        description="Create or update the Kubernetes work pool of flow runs (settings from "
        "RADPS_* environment variables; see FlowPodOptions).",
    )
    parser.add_argument("--name", default=os.environ.get("RADPS_WORK_POOL", "radps"))
    parser.add_argument("--print", action="store_true", help="print the template, change nothing")
    args = parser.parse_args(argv)
    template = base_job_template(options_from_env())
    if args.print:
        print(json.dumps(template, indent=2))
        return 0
    print(f"work pool {args.name!r} {ensure_work_pool(args.name, template)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
