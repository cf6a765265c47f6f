"""A handler loaded beside dask-kubernetes' controller (`kopf run -m
dask_kubernetes.operator.controller -m radps_operator.dask_phase`) that repairs a race in it.

The controller marks a DaskCluster "Running" when its scheduler Service reports a status, and
"Pending" when its create-components handler returns. On a busy node the Service's event can be
handled first: the "Running" patch lands, then the late "Pending" one overwrites it. The Service
never changes again, so the cluster stays Pending. `KubeCluster` waits for "Running" while the
scheduler and workers are up and idle, and the controller's idle timeout (5 min) deletes the
cluster under the waiting flow run. Seen in the e2e suite: a run Failed after 5m11s with
its DaskCluster stuck in Pending.

Every few seconds this timer applies the controller's own rule again to a Pending cluster
whose scheduler Service exists: Running, unless the Service is a LoadBalancer without an
ingress yet.
"""

from __future__ import annotations

from typing import Any

import kopf

CHECK_SECONDS = 5.0


def settled_phase(phase: str | None, service: dict[str, Any] | None) -> str | None:
    """The phase a DaskCluster should have given its scheduler Service, when it must change."""
    if phase != "Pending" or service is None:
        return None
    spec, status = service.get("spec") or {}, service.get("status") or {}
    if spec.get("type") == "LoadBalancer" and not (status.get("loadBalancer") or {}).get("ingress"):
        return None
    return "Running"


@kopf.timer("daskcluster.kubernetes.dask.org", interval=CHECK_SECONDS, initial_delay=CHECK_SECONDS)
async def settle_pending_phase(
    name: str, namespace: str, status: kopf.Status, patch: kopf.Patch, logger: Any, **_: Any
) -> None:
    if status.get("phase") != "Pending":
        return
    import kr8s
    from kr8s.asyncio.objects import Service

    try:
        service = await Service.get(f"{name}-scheduler", namespace=namespace)
    except kr8s.NotFoundError:
        return
    phase = settled_phase(status.get("phase"), service.raw)
    if phase is not None:
        logger.info("scheduler Service is up but the cluster stayed Pending: marking it %s", phase)
        patch.status["phase"] = phase
