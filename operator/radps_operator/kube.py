"""The few Kubernetes calls the operator makes outside kopf, with kubernetes_asyncio: status
patches, Events, and the run's own objects (DaskClusters, Jobs, pods) it reads or removes.
Kopf's own client serves the watch; this one serves the follower, whose calls are not tied to
one object's handler."""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import UTC, datetime
from typing import Any

from radps_operator import api, metrics
from radps_operator import reconcile as r

log = logging.getLogger(__name__)

DASK_GROUP, DASK_VERSION, DASK_PLURAL = "kubernetes.dask.org", "v1", "daskclusters"


class Kube:
    """The few Kubernetes calls the operator makes outside kopf (kubernetes_asyncio)."""

    def __init__(self) -> None:
        self.api: Any = None

    async def __aenter__(self) -> Kube:
        from kubernetes_asyncio import client, config

        try:
            config.load_incluster_config()
            self.api = client.ApiClient()
        except config.ConfigException:
            configuration = client.Configuration()
            # KUBECONFIG read now (kubernetes_asyncio reads it once, when first imported)
            await config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None,
                client_configuration=configuration,
            )
            self.api = client.ApiClient(configuration)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.api is not None:
            await self.api.close()

    def _custom(self) -> Any:
        from kubernetes_asyncio import client

        return client.CustomObjectsApi(self.api)

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch `.status`; False when the object is gone."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            await self._custom().patch_namespaced_custom_object_status(
                api.GROUP,
                api.VERSION,
                namespace,
                api.PLURAL,
                name,
                {"status": patch},
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        metrics.STATUS_PATCHES.inc()
        return True

    async def delete_run(self, namespace: str, name: str) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            await self._custom().delete_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def delete_dask_clusters(self, namespace: str, uid: str) -> list[str]:
        """Delete every DaskCluster labelled with the run; nothing when the CRD is absent."""
        from kubernetes_asyncio.client.exceptions import ApiException

        custom = self._custom()
        try:
            found = await custom.list_namespaced_custom_object(
                DASK_GROUP,
                DASK_VERSION,
                namespace,
                DASK_PLURAL,
                label_selector=f"{r.RUN_UID_LABEL}={uid}",
            )
        except ApiException as exc:
            if exc.status == 404:  # the dask-kubernetes CRDs are not installed
                return []
            raise
        names = [item["metadata"]["name"] for item in found.get("items", [])]
        for name in names:
            with contextlib.suppress(ApiException):
                await custom.delete_namespaced_custom_object(
                    DASK_GROUP, DASK_VERSION, namespace, DASK_PLURAL, name
                )
        return names

    async def dask_clusters(self, namespace: str) -> list[dict[str, Any]]:
        """DaskClusters of radps runs in `namespace`; none when the CRD is not installed."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            found = await self._custom().list_namespaced_custom_object(
                DASK_GROUP, DASK_VERSION, namespace, DASK_PLURAL, label_selector=r.RUN_UID_LABEL
            )
        except ApiException as exc:
            if exc.status in (403, 404):
                return []
            raise
        return list(found.get("items", []))

    async def delete_run_jobs(self, namespace: str, uid: str) -> list[str]:
        """Delete the flow-run Jobs of a run the operator failed (their pods with them): a
        pod waiting for an image that never comes would otherwise wait forever, since Prefect
        cancels a run that never started without touching its infrastructure."""
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        batch = client.BatchV1Api(self.api)
        jobs = await batch.list_namespaced_job(namespace, label_selector=f"{r.RUN_UID_LABEL}={uid}")
        names = [job.metadata.name for job in jobs.items]
        for name in names:
            with contextlib.suppress(ApiException):
                await batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
        return names

    async def run_job_uids(self, namespace: str) -> set[str]:
        """The run UIDs that flow-run Jobs in `namespace` carry."""
        from kubernetes_asyncio import client
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            jobs = await client.BatchV1Api(self.api).list_namespaced_job(
                namespace, label_selector=r.RUN_UID_LABEL
            )
        except ApiException as exc:
            if exc.status in (403, 404):  # an install without the Jobs rule: TTLs collect them
                return set()
            raise
        return {job.metadata.labels[r.RUN_UID_LABEL] for job in jobs.items}

    async def run_pods(self, namespace: str) -> dict[str, list[dict[str, Any]]]:
        """Pods of radps runs in `namespace` (flow-run and Dask pods carry the run's UID
        label), by run UID, as the API returns them."""
        from kubernetes_asyncio import client

        response = await client.CoreV1Api(self.api).list_namespaced_pod(
            namespace, label_selector=r.RUN_UID_LABEL, _preload_content=False
        )
        pods = (await response.json()).get("items", [])
        by_uid: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            uid = (pod.get("metadata", {}).get("labels") or {}).get(r.RUN_UID_LABEL)
            by_uid.setdefault(uid, []).append(pod)
        return by_uid

    async def post_event(self, ref: dict[str, str], type_: str, reason: str, message: str) -> None:
        from kubernetes_asyncio import client

        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                generate_name=f"{ref['name']}.", namespace=ref["namespace"]
            ),
            involved_object=client.V1ObjectReference(
                api_version=api.API_VERSION,
                kind=api.KIND,
                name=ref["name"],
                namespace=ref["namespace"],
                uid=ref["uid"],
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            source=client.V1EventSource(component="radps-operator"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            reporting_component="radps-operator",
        )
        try:
            await client.CoreV1Api(self.api).create_namespaced_event(ref["namespace"], event)
        except Exception as exc:  # an Event is advisory
            log.debug("could not post event %s for %s: %r", reason, ref, exc)
