"""The flow run's task runner starts its Dask cluster in the background (while the input
opens): the stage then uses that same cluster, and a flow run that ends before any stage
used it still closes it. Real LocalClusters."""

from __future__ import annotations

import threading

import pytest

from radps_flows.cluster import DaskClusterConfig, local_task_runner
from radps_flows.core.executors import DaskExecutor

pytestmark = pytest.mark.integration


def _start_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "radps-dask-cluster-start"]


def test_the_cluster_started_in_the_background_is_the_one_used():
    runner = local_task_runner(DaskClusterConfig(workers=1))
    with runner:
        runner.start_in_background()
        client = runner.client  # waits for the background start instead of starting another
        assert runner.client is client
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.submit(sum, [1, 2]).result() == 3

        def periodic_ms(dask_worker) -> dict[str, float]:
            callbacks = dask_worker.periodic_callbacks
            return {name: callbacks[name].callback_time for name in ("profile", "tick")}

        # Dask's periodic work sized for tasks of seconds (cluster.DASK_SETTINGS)
        assert list(client.run(periodic_ms).values()) == [{"profile": 100, "tick": 200}]
        assert DaskExecutor(client).workers_in_this_process()  # plotting warms up at gridding
    assert client.status == "closed"
    assert not _start_threads()


def test_a_flow_run_ending_during_the_start_still_closes_the_cluster():
    runner = local_task_runner(DaskClusterConfig(workers=1))
    with runner:
        runner.start_in_background()
    assert not _start_threads()
    assert runner._client is not None and runner._client.status == "closed"
