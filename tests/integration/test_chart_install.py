"""What `helm install` and `helm upgrade` do on a real API server (the control plane alone:
nothing needs to run): the warning NOTES.txt gives when runs would share the control plane's
namespace, and the generated Prefect credential, copied into the run namespaces and kept
across upgrades (its lookup needs a cluster: `helm template` cannot show it)."""

from __future__ import annotations

import base64
import uuid

import pytest

from tests.k8s import REPO, KubeCluster

pytestmark = pytest.mark.integration

CHART = str(REPO / "charts" / "radps")
WARNING = "WARNING: PipelineRuns in radps run next to the control plane"


def notes(cluster: KubeCluster, *settings: str) -> str:
    args = ["install", "t", CHART, "-n", "radps", "--dry-run=client"]
    for setting in settings:
        args += ["--set", setting]
    output = cluster.helm(*args, timeout=120).stdout
    return output[output.index("NOTES:") :]


def test_runs_beside_the_control_plane_are_warned_about(kube_cluster: KubeCluster):
    assert WARNING in notes(kube_cluster)  # the default: the release namespace
    assert WARNING in notes(kube_cluster, "operator.watchNamespaces={radps,astro}")
    assert WARNING in notes(kube_cluster, "operator.watchNamespaces={*}")
    separate = notes(kube_cluster, "operator.watchNamespaces={astro-runs}")
    assert WARNING not in separate
    assert "The operator watches: astro-runs" in separate


def auth_strings(cluster: KubeCluster, release: str, *namespaces: str) -> list[str]:
    found = []
    for namespace in namespaces:
        encoded = cluster.kubectl(
            "get", "secret", f"{release}-radps-prefect-auth", "-n", namespace,
            "-o", "jsonpath={.data.auth-string}",
        ).stdout  # fmt: skip
        found.append(base64.b64decode(encoded).decode())
    return found


def test_the_generated_prefect_credential_survives_an_upgrade(
    kube_cluster: KubeCluster, kube_namespace: str
):
    control, release = kube_namespace, f"c{uuid.uuid4().hex[:6]}"
    runs = f"{control}-runs"
    kube_cluster.kubectl("create", "namespace", runs)
    install = ["-n", control, "--skip-crds", "--set", f"operator.watchNamespaces={{{runs}}}"]
    try:
        kube_cluster.helm("install", release, CHART, *install, timeout=300)
        first = auth_strings(kube_cluster, release, control, runs)
        assert first[0] == first[1] and first[0].startswith("radps:"), first
        kube_cluster.helm(
            "upgrade", release, CHART, *install, "--set", "operator.resyncSeconds=7", timeout=300
        )
        assert auth_strings(kube_cluster, release, control, runs) == first
    finally:
        kube_cluster.helm("uninstall", release, "-n", control, "--no-hooks", timeout=300)
        kube_cluster.kubectl("delete", "namespace", runs, "--wait=false")
