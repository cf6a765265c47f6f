"""The few Kubernetes calls the operator makes outside kopf: status patches, Events, the
objects a run needs before its first pod (service account, NetworkPolicy) and the run's own
objects (DaskClusters, Jobs, pods) it reads or removes. Kopf's own client serves the watch;
this one serves the follower, whose calls are not tied to one object's handler.

Plain REST over aiohttp (kopf's own HTTP library), with the credentials of kopf's public
login functions (:class:`kopf.ConnectionInfo`: the pod's service account, else $KUBECONFIG).
Why not a generated client: kubernetes_asyncio's models are ~50 MiB of the operator's
memory, for a dozen calls whose bodies are plain JSON (`radps operator` keeps the generated
clients out of its process: :func:`radps_operator.cli.keep_generated_clients_out`).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from radps_operator import api, metrics, schedule_api
from radps_operator import reconcile as r

log = logging.getLogger(__name__)

DASK_GROUP, DASK_VERSION, DASK_PLURAL = "kubernetes.dask.org", "v1", "daskclusters"
MERGE_PATCH = "application/merge-patch+json"


class KubeApiError(Exception):
    """The API server refused a call: ``status`` (HTTP) and ``reason`` (its Status reason)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """In a pod: its service account; elsewhere: $KUBECONFIG. Kopf's login handler
    (:func:`radps_operator.handlers.login`) and this client's, so both use one identity."""
    return kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )


def connection_info(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """:func:`login`'s credentials, or a LoginError when there are none."""
    info = login(settings)
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig to log in with")
    return info


class Kube:
    """The few Kubernetes calls the operator makes outside kopf."""

    def __init__(self, settings: kopf.OperatorSettings | None = None) -> None:
        """``settings``: the operator's kopf settings (its networking), kopf's defaults
        without."""
        self._settings = settings or kopf.OperatorSettings()
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    async def __aenter__(self) -> Kube:
        self._connect(connection_info(self._settings))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _connect(self, info: kopf.ConnectionInfo) -> None:
        self._server = info.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
            headers={**info.as_http_headers(), "User-Agent": "radps-operator"},
            proxy=info.proxy_url,
            trust_env=info.trust_env,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One call; its JSON answer. Raises :class:`KubeApiError` on a refusal. A 401 (a
        service-account token rotated since the login) logs in again and retries once."""
        for attempt in (1, 2):
            if self._session is None:
                raise RuntimeError("Kube is not open")
            async with self._session.request(
                method,
                self._server + path,
                json=body,
                params=params,
                headers={"Content-Type": content_type} if body is not None else None,
            ) as response:
                status, phrase = response.status, response.reason or ""
                answer = await _json(response)
            if status == 401 and attempt == 1:
                await self.__aexit__()
                self._connect(connection_info(self._settings))
                continue
            if status >= 400:
                reason = str(answer.get("reason") or phrase)
                raise KubeApiError(status, reason, str(answer.get("message") or ""))
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    async def create(self, path: str, body: dict[str, Any]) -> bool:
        """POST ``body`` to the collection ``path``; False when it already exists (409)."""
        try:
            await self.request("POST", path, body=body)
        except KubeApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        """JSON merge-patch (RFC 7386) the object at ``path``; the object as it now is."""
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch a PipelineRun's `.status`; False when the object is gone."""
        if not await self._patch_status_at(f"{_run_path(namespace)}/{name}", patch):
            return False
        metrics.STATUS_PATCHES.inc()
        return True

    async def _patch_status_at(self, path: str, patch: dict[str, Any]) -> bool:
        try:
            await self.merge_patch(f"{path}/status", {"status": patch})
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete_run(self, namespace: str, name: str) -> None:
        try:
            await self.request("DELETE", f"{_run_path(namespace)}/{name}")
        except KubeApiError as exc:
            if exc.status != 404:
                raise

    async def delete_dask_clusters(self, namespace: str, uid: str) -> list[str]:
        """Delete every DaskCluster labelled with the run; nothing when the CRD is absent."""
        collection = _dask_path(namespace)
        try:
            found = await self.request(
                "GET", collection, params={"labelSelector": f"{r.RUN_UID_LABEL}={uid}"}
            )
        except KubeApiError as exc:
            if exc.status == 404:  # the dask-kubernetes CRDs are not installed
                return []
            raise
        names = [item["metadata"]["name"] for item in found.get("items", [])]
        for name in names:
            with contextlib.suppress(KubeApiError):
                await self.request("DELETE", f"{collection}/{name}")
        return names

    async def dask_clusters(self, namespace: str) -> list[dict[str, Any]]:
        """DaskClusters of radps runs in `namespace`; none when the CRD is not installed."""
        try:
            found = await self.request(
                "GET", _dask_path(namespace), params={"labelSelector": r.RUN_UID_LABEL}
            )
        except KubeApiError as exc:
            if exc.status in (403, 404):
                return []
            raise
        return list(found.get("items", []))

    async def delete_run_jobs(self, namespace: str, uid: str) -> list[str]:
        """Delete the flow-run Jobs of a run the operator failed (their pods with them): a
        pod waiting for an image that never comes would otherwise wait forever, since Prefect
        cancels a run that never started without touching its infrastructure."""
        collection = _jobs_path(namespace)
        jobs = await self.request(
            "GET", collection, params={"labelSelector": f"{r.RUN_UID_LABEL}={uid}"}
        )
        names = [job["metadata"]["name"] for job in jobs.get("items", [])]
        for name in names:
            with contextlib.suppress(KubeApiError):
                await self.request(
                    "DELETE", f"{collection}/{name}", params={"propagationPolicy": "Background"}
                )
        return names

    async def run_job_uids(self, namespace: str) -> set[str]:
        """The run UIDs that flow-run Jobs in `namespace` carry."""
        try:
            jobs = await self.request(
                "GET", _jobs_path(namespace), params={"labelSelector": r.RUN_UID_LABEL}
            )
        except KubeApiError as exc:
            if exc.status in (403, 404):  # an install without the Jobs rule: TTLs collect them
                return set()
            raise
        return {job["metadata"]["labels"][r.RUN_UID_LABEL] for job in jobs.get("items", [])}

    async def run_pods(self, namespace: str) -> dict[str, list[dict[str, Any]]]:
        """Pods of radps runs in `namespace` (flow-run and Dask pods carry the run's UID
        label), by run UID, as the API returns them."""
        found = await self.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": r.RUN_UID_LABEL}
        )
        by_uid: dict[str, list[dict[str, Any]]] = {}
        for pod in found.get("items", []):
            uid = (pod.get("metadata", {}).get("labels") or {}).get(r.RUN_UID_LABEL)
            by_uid.setdefault(uid, []).append(pod)
        return by_uid

    async def runs_labelled(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The PipelineRuns of `namespace` that match the label `selector`."""
        found = await self.request("GET", _run_path(namespace), params={"labelSelector": selector})
        return list(found.get("items", []))

    async def create_run(self, namespace: str, run: dict[str, Any]) -> bool:
        """Create the PipelineRun ``run``; False when one of its name exists."""
        return await self.create(_run_path(namespace), run)

    async def patch_schedule_status(self, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch a PipelineSchedule's `.status`; False when it is gone."""
        return await self._patch_status_at(f"{_schedule_path(namespace)}/{name}", patch)

    async def post_event(self, ref: dict[str, str], type_: str, reason: str, message: str) -> None:
        """An Event about ``ref`` (namespace, name, uid; kind, PipelineRun by default)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{ref['name']}.", "namespace": ref["namespace"]},
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": ref.get("kind", api.KIND),
                "name": ref["name"],
                "namespace": ref["namespace"],
                "uid": ref["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "radps-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": "radps-operator",
        }
        try:
            await self.request("POST", f"/api/v1/namespaces/{ref['namespace']}/events", body=event)
        except Exception as exc:  # an Event is advisory
            log.debug("could not post event %s for %s: %r", reason, ref, exc)


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The answer's JSON object, or {} when it has none (an error from a proxy, say)."""
    try:
        answer = await response.json(content_type=None)
    except ValueError:  # not JSON (content_type=None: any content type is parsed)
        return {}
    return answer if isinstance(answer, dict) else {}


def _run_path(namespace: str) -> str:
    return f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{api.PLURAL}"


def _schedule_path(namespace: str) -> str:
    return f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{namespace}/{schedule_api.PLURAL}"


def _dask_path(namespace: str) -> str:
    return f"/apis/{DASK_GROUP}/{DASK_VERSION}/namespaces/{namespace}/{DASK_PLURAL}"


def _jobs_path(namespace: str) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs"
