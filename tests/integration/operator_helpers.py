"""The radps operator under test: in-process (`kopf.testing.KopfRunner`) or as a real
`radps operator` subprocess (to be SIGKILLed), against a real API server and Prefect server."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.k8s import KubeCluster, wait_until

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "manifests" / "crd" / "pipelineruns.radps.io.yaml"
SCHEDULE_CRD_FILE = REPO / "manifests" / "crd" / "pipelineschedules.radps.io.yaml"
GROUP, VERSION, PLURAL = "radps.io", "v1alpha1", "pipelineruns"


def install_crd(cluster: KubeCluster) -> None:
    """The PipelineRun and PipelineSchedule CRDs."""
    for crd in (CRD_FILE, SCHEDULE_CRD_FILE):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "crd/pipelineruns.radps.io",
        "crd/pipelineschedules.radps.io",
        "--timeout=60s",
    )


def install_dask_crds(cluster: KubeCluster) -> None:
    """The dask-kubernetes CRDs as the chart ships them (`radps crd --dask`)."""
    crds = subprocess.run(
        [str(Path(sys.executable).parent / "radps"), "crd", "--dask"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crds)
    cluster.kubectl("wait", "--for=condition=Established", "crd/daskclusters.kubernetes.dask.org")


def operator_env(cluster: KubeCluster, api_url: str, pool: str, **extra: str) -> dict[str, str]:
    return {
        "KUBECONFIG": str(cluster.kubeconfig),
        "RADPS_PREFECT_API_URL": api_url,
        "RADPS_WORK_POOL": pool,
        "RADPS_RESYNC_SECONDS": "1",
        "RADPS_METRICS_PORT": "0",
        "RADPS_HEALTH_PORT": "0",
        "RADPS_LOG_FORMAT": "text",
        **extra,
    }


@contextlib.contextmanager
def kopf_operator(namespace: str, env: dict[str, str]) -> Iterator[Any]:
    """The operator in this process, watching one namespace."""
    from kopf.testing import KopfRunner

    from radps_operator.handlers import registry

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with KopfRunner(
            ["run", "--standalone", "--namespace", namespace], registry=registry, timeout=60
        ) as runner:
            yield runner
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert runner.exception is None, runner.output[-4000:]


def start_operator_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 (the child holds it)
    process = subprocess.Popen(
        [sys.executable, "-m", "radps_operator", "operator"],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    out.close()
    return process


def pipelinerun(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": spec,
    }


class Runs:
    """PipelineRuns (or PipelineSchedules: ``kind``, ``plural``) in one namespace through
    the real API server."""

    def __init__(
        self, kube_api: Any, namespace: str, kind: str = "PipelineRun", plural: str = PLURAL
    ):
        from kubernetes import client

        self.custom = client.CustomObjectsApi(kube_api)
        self.core = client.CoreV1Api(kube_api)
        self.namespace = namespace
        self.kind = kind
        self.plural = plural

    def create(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {**pipelinerun(name, **spec), "kind": self.kind}
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plural, body
        )

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plural, name
        )

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def patch_spec(self, name: str, **spec: Any) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plural, name, {"spec": spec}
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plural, name
        )

    def names(self) -> list[str]:
        found = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plural
        )
        return [item["metadata"]["name"] for item in found["items"]]

    def delete_all(self, timeout: float = 60) -> None:
        """Delete every run while the operator still runs (its finalizer must see them)."""
        for name in self.names():
            self.delete(name)
        wait_until(lambda: not self.names(), timeout=timeout, what="every PipelineRun deleted")

    def exists(self, name: str) -> bool:
        from kubernetes.client.rest import ApiException

        try:
            self.get(name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def wait_phase(self, name: str, *phases: str, timeout: float = 120) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") in phases else None

        return wait_until(reached, timeout=timeout, what=f"{name} in phase {phases}")

    def events(self, name: str) -> list[tuple[str, str, str]]:
        found = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        )
        return [(e.type, e.reason, e.message) for e in found.items]


def condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), None)
