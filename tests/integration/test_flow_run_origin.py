"""radps_flows.origin, the flow-run pod's command, on a real API server: the flow run goes on
only when a PipelineRun of the namespace records it as its own, and a flow run nobody's
PipelineRun records (one created or retargeted by someone holding the Prefect credential) is
refused with a message, without running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.integration.operator_helpers import install_crd, pipelinerun
from tests.k8s import KubeCluster

pytestmark = pytest.mark.integration


def origin(cluster: KubeCluster, namespace: str, flow_run_id: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "radps_flows.origin", "--namespace", namespace,
         "--timeout", "3", "--", sys.executable, "-c", "print('the flow run ran')"],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
             "PREFECT__FLOW_RUN_ID": flow_run_id},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_only_a_flow_run_its_namespace_asked_for_runs(
    kube_cluster: KubeCluster, kube_namespace: str
):
    install_crd(kube_cluster)
    ours, forged = str(uuid.uuid4()), str(uuid.uuid4())
    run = pipelinerun("asked", pipeline="synthesize", parameters={"output": "/data/x.ps.zarr"})
    kube_cluster.kubectl("create", "-n", kube_namespace, "-f", "-", input=json.dumps(run))
    kube_cluster.kubectl(
        "patch", "pipelinerun", "asked", "-n", kube_namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": {"prefect": {"flowRunId": ours}}}),
    )  # fmt: skip

    allowed = origin(kube_cluster, kube_namespace, ours)
    assert allowed.returncode == 0, allowed.stderr
    assert f"is PipelineRun {kube_namespace}/asked's" in allowed.stdout
    assert "the flow run ran" in allowed.stdout

    refused = origin(kube_cluster, kube_namespace, forged)
    assert refused.returncode == 3
    assert "the flow run ran" not in refused.stdout
    assert f"flow run {forged} is not the flow run of any PipelineRun in namespace" in (
        refused.stderr
    )
