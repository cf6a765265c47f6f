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
