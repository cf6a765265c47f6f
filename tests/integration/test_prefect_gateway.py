"""The operator's Prefect gateway against a real Prefect server and a real process worker."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest

from radps_operator import api, reconcile
from radps_operator.prefect_gateway import PrefectBusy, PrefectGateway, PrefectUnavailable
from radps_operator.settings import OperatorSettings
from tests.conftest import running_radps_server
from tests.integration.prefect_helpers import (  # noqa: F401
    TINY_SYNTH,
    create_process_pool,
    process_worker,
)

pytestmark = pytest.mark.integration


async def _patiently(call):
    """As the operator does: a busy Prefect (SQLite's 503 "database is locked" on a loaded
    machine) is asked again, for up to a minute."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await call()
        except PrefectBusy:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


def _requests(settings, tmp_path, name="gw", **spec_fields):
    from radps_flows.catalog import get_pipeline

    spec = api.PipelineRunSpec.model_validate(
        {
            "pipeline": "synthesize",
            "parameters": {"output": str(tmp_path / f"{name}.ps.zarr"), **TINY_SYNTH},
            "dask": {"workers": 1},
            **spec_fields,
        }
    )
    pipeline = get_pipeline("synthesize")
    dep = reconcile.desired_deployment(
        spec, settings, pipeline.entrypoint, pipeline.flow_name, pipeline.parameter_schema
    )
    uid = str(uuid.uuid4())
    return dep, reconcile.desired_flow_run("ns", name, uid, spec, settings)


def test_deploy_create_idempotently_follow_events_and_read_outputs(
    radps_server,
    process_worker,  # noqa: F811
    tmp_path,
):
    settings = OperatorSettings(prefect_api_url=radps_server.api_url, work_pool=process_worker.pool)
    dep, req = _requests(settings, tmp_path)

    async def scenario():
        seen: list[str] = []
        async with PrefectGateway(radps_server.api_url) as gw:
            follower = asyncio.create_task(
                gw.follow_flow_run_events(lambda run_id, state: seen.append(run_id))
            )
            ids = await asyncio.gather(
                _patiently(lambda: gw.ensure_deployment(dep)),
                _patiently(lambda: gw.ensure_deployment(dep)),
            )
            assert ids[0] == ids[1]
            first = await _patiently(lambda: gw.create_flow_run(ids[0], req, dep.work_pool))
            again = await _patiently(lambda: gw.create_flow_run(ids[0], req, dep.work_pool))
            assert first.id == again.id and first.name == "gw"
            by_key = await _patiently(lambda: gw.read_flow_run_by_key(req.idempotency_key))
            assert by_key.id == first.id
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                (run,) = await _patiently(lambda: gw.read_flow_runs([first.id]))
                if run.terminal:
                    break
                await asyncio.sleep(0.5)
            outputs = await _patiently(lambda: gw.read_outputs(first.id))
            await asyncio.sleep(0.5)
            follower.cancel()
            return run, outputs, seen

    run, outputs, seen = asyncio.run(scenario())
    assert run.state_type == "COMPLETED", run
    assert run.labels["radps.io/progress-completed"] == "1"
    assert [o["name"] for o in outputs] == ["visibilities", "truth"]
    assert run.id in seen, "no flow-run event arrived through the event stream"


def test_spec_retries_make_prefect_run_a_failing_flow_again(
    radps_server,
    process_worker,  # noqa: F811
    tmp_path,
):
    from prefect.client.orchestration import PrefectClient

    settings = OperatorSettings(prefect_api_url=radps_server.api_url, work_pool=process_worker.pool)
    (tmp_path / "a-file").write_text("not a folder")
    dep, req = _requests(settings, tmp_path / "a-file", name="gw-retry", retries=1)

    async def scenario():
        async with PrefectGateway(radps_server.api_url) as gw:
            deployment_id = await _patiently(lambda: gw.ensure_deployment(dep))
            run = await _patiently(lambda: gw.create_flow_run(deployment_id, req, dep.work_pool))
            deadline = time.monotonic() + 180
            while not run.terminal and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                (run,) = await _patiently(lambda: gw.read_flow_runs([run.id]))  # noqa: B023
        async with PrefectClient(radps_server.api_url) as client:
            return run, await client.read_flow_run(uuid.UUID(run.id))

    run, flow_run = asyncio.run(scenario())
    assert run.state_type == "FAILED", run
    assert flow_run.empirical_policy.retries == 1
    assert flow_run.run_count == 2, "Prefect did not retry the failed run once"


def test_schema_is_enforced_and_cancel_of_unstarted_run(radps_server, tmp_path):
    """The deployment checks parameters against the pipeline's schema for runs made outside
    the operator (the UI, a plain client); the operator's own creates skip that check, as it
    has just validated them against the model the schema came from."""
    from prefect.client.orchestration import PrefectClient

    create_process_pool(radps_server.api_url, "no-worker-pool")
    settings = OperatorSettings(prefect_api_url=radps_server.api_url, work_pool="no-worker-pool")
    dep, req = _requests(settings, tmp_path, name="gw-cancel")

    async def scenario():
        async with PrefectGateway(radps_server.api_url) as gw:
            dep_id = await _patiently(lambda: gw.ensure_deployment(dep))
            run = await _patiently(lambda: gw.create_flow_run(dep_id, req, dep.work_pool))
            await _patiently(lambda: gw.cancel_flow_run(run.id, "cancelled by test"))
            (run,) = await _patiently(lambda: gw.read_flow_runs([run.id]))
            async with PrefectClient(radps_server.api_url) as client:
                with pytest.raises(Exception, match="Validation failed"):
                    await client.create_flow_run_from_deployment(dep_id, parameters={})
            return run

    run = asyncio.run(scenario())
    assert run.state_type == "CANCELLED"


def test_unreachable_prefect_is_reported_as_such():
    async def scenario():
        async with PrefectGateway("http://127.0.0.1:9/api") as gw:
            assert not await gw.healthy()
            with pytest.raises(PrefectUnavailable):
                await gw.read_flow_runs([str(uuid.uuid4())])

    asyncio.run(scenario())


def test_a_server_as_the_chart_runs_it_serves_the_right_credential_and_refuses_a_wrong_one(
    tmp_path,
):
    """The gateway speaks Prefect's auth and CSRF protection itself (basic auth and a CSRF
    token on requests, a token on the event stream's websocket), both of which the chart turns
    on: every call the operator makes, with the credential and without."""
    auth = f"radps:{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_API_AUTH_STRING": auth,
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
    }
    with running_radps_server(tmp_path / "home", env) as server:
        create_process_pool(server.api_url, "auth-pool", auth_string=auth)
        settings = OperatorSettings(prefect_api_url=server.api_url, work_pool="auth-pool")
        dep, req = _requests(settings, tmp_path, name="gw-auth")

        async def with_credential():
            cancelled: list[str] = []
            async with PrefectGateway(server.api_url, auth) as gw:
                follower = asyncio.create_task(
                    gw.follow_flow_run_events(
                        lambda run_id, state: state == "Cancelled" and cancelled.append(run_id)
                    )
                )
                dep_id = await _patiently(lambda: gw.ensure_deployment(dep))
                # the server deletes expired tokens: one it no longer knows is fetched again
                gw._csrf.token = "a-token-the-server-dropped"
                run = await _patiently(lambda: gw.create_flow_run(dep_id, req, dep.work_pool))
                assert gw._csrf.token != "a-token-the-server-dropped"
                await _patiently(lambda: gw.cancel_flow_run(run.id, "cancelled by test"))
                deadline = time.monotonic() + 30
                while run.id not in cancelled and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                follower.cancel()
                (run,) = await _patiently(lambda: gw.read_flow_runs([run.id]))
                return run, cancelled

        async def with_a_wrong_one(run_id):
            connections: list[bool] = []
            async with PrefectGateway(server.api_url, "radps:wrong") as gw:
                assert await gw.healthy()  # /health answers anyone (Kubernetes probes)
                with pytest.raises(PrefectUnavailable, match="401"):
                    await gw.read_flow_runs([run_id])
                follower = asyncio.create_task(
                    gw.follow_flow_run_events(lambda *_: None, connections.append)
                )
                await asyncio.sleep(3)
                follower.cancel()
            return connections

        run, cancelled = asyncio.run(with_credential())
        assert run.state_type == "CANCELLED" and run.state_message == "cancelled by test"
        assert run.id in cancelled, "the Cancelled event did not come through the event stream"
        connections = asyncio.run(with_a_wrong_one(run.id))
        assert connections and True not in connections, connections
