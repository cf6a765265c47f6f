"""The NetworkPolicy of one run: its pods reach each other and no other run's.

A run's flow-run pod, Dask scheduler and Dask workers all carry the run's label
(`radps.io/run-uid`: the Job's labels come from the operator's job variables, the Dask pods'
from their DaskCluster). The chart's policies deny everything by default and let flow pods
reach the Prefect server and the API; this one, made by the operator as it starts the run and
owned by the PipelineRun (so Kubernetes deletes it with the run), admits traffic among the
pods of that run only. A pod of another run, or an unlabelled pod, cannot open a connection to
this run's scheduler (which executes whatever its clients submit).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from radps_flows.contract import RUN_UID_LABEL
from radps_operator import api

if TYPE_CHECKING:
    from radps_operator.kube import Kube

log = logging.getLogger(__name__)

NAME_PREFIX = "radps-run-"


def run_network_policy(namespace: str, name: str, uid: str) -> dict[str, Any]:
    same_run = {"podSelector": {"matchLabels": {RUN_UID_LABEL: uid}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": f"{NAME_PREFIX}{uid}",
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "radps",
                "app.kubernetes.io/managed-by": "radps-operator",
                RUN_UID_LABEL: uid,
            },
            "ownerReferences": [
                {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": name, "uid": uid}
            ],
        },
        "spec": {
            "podSelector": {"matchLabels": {RUN_UID_LABEL: uid}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [same_run]}],
            "egress": [{"to": [same_run]}],
        },
    }


async def ensure_run_network_policy(kube: Kube, namespace: str, name: str, uid: str) -> None:
    """Create it unless it exists (a restarted operator, a rescheduled run). Raises
    :class:`radps_operator.kube.KubeApiError` when the operator may not."""
    policy = run_network_policy(namespace, name, uid)
    path = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
    if await kube.create(path, policy):
        log.info("created NetworkPolicy %s/%s", namespace, policy["metadata"]["name"])
