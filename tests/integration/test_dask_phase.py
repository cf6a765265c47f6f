"""radps_operator.dask_phase against a real API server: a DaskCluster left Pending while its
scheduler Service exists (the dask-kubernetes race) becomes Running; without the Service it
stays Pending. The timer runs in kopf, as in the dask-operator pod."""

from __future__ import annotations

import os

import pytest

from tests.integration.operator_helpers import install_dask_crds
from tests.k8s import wait_until

pytest_plugins = ["tests.k8s"]
pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "kubernetes.dask.org", "v1", "daskclusters"


def test_pending_cluster_with_a_scheduler_service_becomes_running(
    kube_cluster, kube_api, kube_namespace
):
    import kopf
    from kopf.testing import KopfRunner
    from kubernetes import client

    from radps_operator.dask_phase import CHECK_SECONDS, settle_pending_phase

    install_dask_crds(kube_cluster)
    custom, core = client.CustomObjectsApi(kube_api), client.CoreV1Api(kube_api)
    for name in ("raced", "starting"):
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DaskCluster",
            "metadata": {"name": name},
            "spec": {"worker": {"replicas": 1}, "scheduler": {}},
        }
        custom.create_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, body)
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, PLURAL, name, {"status": {"phase": "Pending"}}
        )
    core.create_namespaced_service(
        kube_namespace,
        {
            "metadata": {"name": "raced-scheduler"},
            "spec": {"ports": [{"port": 8786}], "selector": {"app": "none"}},
        },
    )

    def phase(name: str) -> str:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, kube_namespace, PLURAL, name)
        return (obj.get("status") or {}).get("phase")

    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kube_cluster.kubeconfig)
    try:
        # its own registry: kopf's default one may hold prefect_kubernetes' handlers
        # (docs/architecture.md)
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)
        kopf.timer("daskcluster.kubernetes.dask.org", interval=CHECK_SECONDS, registry=registry)(
            settle_pending_phase
        )
        args = ["run", "--standalone", "--namespace", kube_namespace]
        with KopfRunner(args, registry=registry, timeout=60) as runner:
            wait_until(lambda: phase("raced") == "Running", timeout=30, what="Running")
            assert phase("starting") == "Pending"
    finally:
        if saved is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved
    assert runner.exception is None, runner.output[-3000:]
