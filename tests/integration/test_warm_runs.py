"""The background `radps server` that `radps run` starts and reuses, and the warm process that
runs are forked from (radps_operator.local.warm): real servers, real runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from radps_operator.local.server import RECORD_FILE, is_healthy, stop_running_server
from tests.conftest import RADPS, RadpsServer
from tests.integration.test_local_run import (
    ended,
    flow_run_ids,
    long_synth,
    manifest,
    prefect_flow_run,
    radps_run,
)

pytestmark = pytest.mark.integration


def tiny_synth(folder: Path, name: str) -> Path:
    parameters = {"output": str(folder / f"{name}.ps.zarr"), "n_antennas": 4, "n_times": 2}
    return manifest(folder, name, "synthesize", {**parameters, "n_channels": 2})


def record(home: Path) -> dict:
    return json.loads((home / RECORD_FILE).read_text())


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def test_runs_start_one_background_server_and_reuse_it(tmp_path: Path):
    """Two `radps run`s at once with no server start one background server between them (no
    'database is locked'); a later run reuses it; it stops by itself once idle, taking its
    Prefect server, record and socket with it."""
    home = tmp_path / "home"
    env = {**os.environ, "RADPS_HOME": str(home), "RADPS_SERVER_IDLE_SECONDS": "20"}
    try:
        first, second = tiny_synth(tmp_path, "first"), tiny_synth(tmp_path, "second")
        running = [
            subprocess.Popen(
                [RADPS, "run", str(path)],
                env={**env, "COLUMNS": "200"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for path in (first, second)
        ]
        outputs = [p.communicate(timeout=300)[0] for p in running]
        assert [p.returncode for p in running] == [0, 0], outputs
        assert sum("started a background radps server" in o for o in outputs) == 1, outputs
        assert not any("locked" in o or "this process" in o for o in outputs), outputs
        server = record(home)
        assert server["background"] is True
        status = subprocess.run(
            [RADPS, "server", "status"], env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0 and "background" in status.stdout, status.stdout
        second = subprocess.run(
            [RADPS, "server", "--port", "0"], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 0 and "already running" in second.stdout, second.stdout
        assert record(home)["pid"] == server["pid"] and Path(server["runner_socket"]).exists()

        code, output = radps_run(env, tiny_synth(tmp_path, "third"))
        assert code == 0, output
        assert "started a background" not in output and "this process" not in output, output
        assert record(home)["pid"] == server["pid"]
        supervisor = psutil.Process(server["pid"])
        prefect = [p for p in supervisor.children() if "prefect" in " ".join(p.cmdline())]
        assert len(prefect) == 1, [p.cmdline() for p in supervisor.children()]

        wait_until(lambda: ended(supervisor), 120, "the idle server did not stop")
        assert "the radps server stops: idle for 20 s" in (home / "logs/server.log").read_text()
        assert not (home / RECORD_FILE).exists()
        assert not Path(server["runner_socket"]).exists()
        assert not is_healthy(server["api_url"])
        psutil.wait_procs(prefect, timeout=30)
        assert all(ended(p) for p in prefect)
    finally:
        stop_running_server(home)


def test_a_killed_radps_run_cancels_its_flow_run(tmp_path: Path):
    """`radps run` killed outright (no chance to pass anything on): the background server sees
    its client gone and interrupts the run, which records Cancelled and ends; `radps server
    stop` then stops the server and everything it started."""
    home = tmp_path / "home"
    env = {**os.environ, "RADPS_HOME": str(home), "RADPS_SERVER_IDLE_SECONDS": "300"}
    try:
        long = long_synth(tmp_path)
        log = tmp_path / "run.out"
        with open(log, "w") as out:
            client = subprocess.Popen(
                [RADPS, "run", str(long)], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(
            lambda: list(tmp_path.glob(".long.ps.zarr.staging-*/long.ps.zarr")),
            180,
            f"the run never started writing: {log.read_text()}",
        )
        supervisor = psutil.Process(record(home)["pid"])
        fork = [p for p in supervisor.children() if "prefect" not in " ".join(p.cmdline())]
        assert len(fork) == 1, [p.cmdline() for p in supervisor.children()]
        client.send_signal(signal.SIGKILL)
        client.wait(30)
        psutil.wait_procs(fork, timeout=60)
        assert ended(fork[0]), "the run outlived its radps run"
        assert not (tmp_path / "long.ps.zarr").exists()
        (flow_run_id,) = flow_run_ids(log.read_text())
        server = RadpsServer(home=home, api_url=record(home)["api_url"], process=None)  # type: ignore[arg-type]
        flow_run, _ = prefect_flow_run(server, flow_run_id)
        assert flow_run.state.is_cancelled(), flow_run.state

        stopped = subprocess.run(
            [RADPS, "server", "stop"], env=env, capture_output=True, text=True, timeout=180
        )
        assert stopped.returncode == 0 and f"PID {supervisor.pid}" in stopped.stdout
        assert ended(supervisor) and not (home / RECORD_FILE).exists()
    finally:
        stop_running_server(home)


def test_other_import_settings_run_in_their_own_process(radps_server: RadpsServer, tmp_path: Path):
    """A run whose environment would have imported differently (here a Dask setting) is not
    given a fork of the server's imports: it runs in its own process, says why, and
    completes on the same server."""
    env = radps_server.env(DASK_DISTRIBUTED__ADMIN__TICK__LIMIT="7s")
    code, output = radps_run(env, tiny_synth(tmp_path, "other"))
    assert code == 0, output
    assert "running in this process" in output
    assert "other settings (DASK_DISTRIBUTED__ADMIN__TICK__LIMIT)" in " ".join(output.split())


def test_a_running_server_rejects_an_invalid_run_as_radps_run_does(
    radps_server: RadpsServer, tmp_path: Path
):
    """With a server running, `radps run` leaves validation to the server's fork: every error
    of the manifest is still reported with its field, the exit code is 2, no flow run is
    created, and the fork never ran in its own process's place."""
    bad = manifest(
        tmp_path,
        "bad",
        "imaging",
        {"input": str(tmp_path / "absent.ms"), "output": str(tmp_path / "out"), "imsize": 7},
    )
    code, output = radps_run(radps_server.env(), bad, timeout=120)
    assert code == 2, output
    assert "spec.parameters.imsize" in output and "7" in output, output
    assert "this process" not in output and not flow_run_ids(output), output
    assert not (tmp_path / "out").exists()
