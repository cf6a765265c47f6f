"""The flow-run pods' service account in each namespace a cluster-wide operator serves.

A namespaced install creates that account (and its Role) in every watched namespace up front.
Watching all namespaces, the chart cannot know them, so the operator makes the account on a
namespace's first run: a ServiceAccount and a RoleBinding to the chart's flow-run ClusterRole
(what a flow pod needs: create its DaskCluster, find its scheduler), and, with Prefect auth on,
a copy of the Secret holding the Prefect credential (flow pods read it from their own
namespace). All are labelled with that ClusterRole's name: the chart's uninstall hook removes
exactly this release's, and the chart's admission policy lets the operator delete nothing else.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from radps_operator.kube import Kube

log = logging.getLogger(__name__)

OWNER_LABEL = "radps.io/flow-cluster-role"
"""On every object made here: the ClusterRole it grants (one per Helm release)."""


def owned_by(cluster_role: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": "radps",
        "app.kubernetes.io/component": "flow-run",
        "app.kubernetes.io/managed-by": "radps-operator",
        OWNER_LABEL: cluster_role,
    }


def identity_objects(
    namespace: str,
    service_account: str,
    cluster_role: str,
    annotations: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ServiceAccount (with ``annotations``) and the RoleBinding that give it
    ``cluster_role`` in ``namespace``."""
    meta = {"name": service_account, "namespace": namespace, "labels": owned_by(cluster_role)}
    account_meta = {**meta, "annotations": dict(annotations)} if annotations else meta
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": account_meta}
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta,
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role,
        },
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }
    return account, binding


@dataclass(frozen=True)
class AuthSecret:
    """The Secret flow pods read the Prefect credential from (the work pool's template names
    it): its name, its key, and the credential the operator itself was given."""

    name: str
    key: str
    auth_string: str


def auth_secret_object(namespace: str, secret: AuthSecret, cluster_role: str) -> dict[str, Any]:
    labels = owned_by(cluster_role)
    encoded = base64.b64encode(secret.auth_string.encode()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": secret.name, "namespace": namespace, "labels": labels},
        "data": {secret.key: encoded},
    }


class FlowIdentities:
    """Makes sure each namespace has the flow-run service account (and the Prefect credential's
    Secret), once per namespace per operator process. An existing account or binding is left as
    it is; an existing credential Secret of this release is brought up to date."""

    def __init__(
        self,
        kube: Kube,
        service_account: str,
        cluster_role: str,
        auth_secret: AuthSecret | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        self.kube = kube
        self.service_account = service_account
        self.cluster_role = cluster_role
        self.auth_secret = auth_secret
        self.annotations = dict(annotations or {})
        self._ready: set[str] = set()

    async def ensure(self, namespace: str) -> None:
        """Raises :class:`radps_operator.kube.KubeApiError` when the operator may not create
        them."""
        if namespace in self._ready:
            return
        account, binding = identity_objects(
            namespace, self.service_account, self.cluster_role, self.annotations
        )
        core = f"/api/v1/namespaces/{namespace}"
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
        for path, body in ((f"{core}/serviceaccounts", account), (f"{rbac}/rolebindings", binding)):
            if await self.kube.create(path, body):  # False: already there
                log.info("created %s %s/%s", body["kind"], namespace, self.service_account)
        if self.auth_secret is not None:
            secret = auth_secret_object(namespace, self.auth_secret, self.cluster_role)
            if await self.kube.create(f"{core}/secrets", secret):
                log.info("created Secret %s/%s", namespace, self.auth_secret.name)
            else:  # the credential may have changed since (a new existingSecret)
                await self.kube.merge_patch(f"{core}/secrets/{self.auth_secret.name}", secret)
        self._ready.add(namespace)


def delete_identities(core: Any, rbac: Any, cluster_role: str) -> list[str]:
    """Delete every account, binding and credential Secret made for ``cluster_role``
    (synchronous ``kubernetes`` clients, as in the uninstall hook); returns what was deleted."""
    selector = f"{OWNER_LABEL}={cluster_role}"
    deleted = []
    for lister, deleter, kind in (
        (
            rbac.list_role_binding_for_all_namespaces,
            rbac.delete_namespaced_role_binding,
            "RoleBinding",
        ),
        (
            core.list_service_account_for_all_namespaces,
            core.delete_namespaced_service_account,
            "ServiceAccount",
        ),
        (core.list_secret_for_all_namespaces, core.delete_namespaced_secret, "Secret"),
    ):
        for item in lister(label_selector=selector).items:
            deleter(item.metadata.name, item.metadata.namespace)
            deleted.append(f"{kind} {item.metadata.namespace}/{item.metadata.name}")
    return deleted
