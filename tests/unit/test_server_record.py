"""The record a `radps server` leaves in its home names it by PID and start time: a server
killed outright leaves its record behind, and the system may give its PID to another
process; `radps run` must not take that one for the server, nor `radps server stop` signal it.
Real processes stand in for the server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from radps_operator.local.server import (
    RECORD_FILE,
    find_running_server,
    process_started,
    stop_running_server,
)


@pytest.fixture
def bystander():
    """A process of this user that is not a radps server."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def _record(home: Path, pid: int, started: float | None) -> None:
    record = {"pid": pid, "api_url": "http://127.0.0.1:9/api", "ui_url": "", "background": True}
    if started is not None:
        record["started"] = started
    home.mkdir(exist_ok=True)
    (home / RECORD_FILE).write_text(json.dumps(record))


def test_a_stale_record_whose_pid_another_process_has_is_not_a_server(tmp_path, bystander):
    started = process_started(bystander.pid)
    assert started == pytest.approx(psutil.Process(bystander.pid).create_time())
    _record(tmp_path, bystander.pid, started - 3600.0)  # its server started an hour earlier
    assert find_running_server(tmp_path) is None
    assert stop_running_server(tmp_path, timeout=5) is None
    assert bystander.poll() is None  # never signalled


def test_the_process_a_record_names_is_stopped(tmp_path, bystander):
    """The same record with the process's own start time: it is the one stopped."""
    _record(tmp_path, bystander.pid, process_started(bystander.pid))
    assert stop_running_server(tmp_path, timeout=10) == bystander.pid
    assert bystander.wait(timeout=10) == -15  # SIGTERM


def test_a_record_of_a_process_that_ended_or_without_a_start_time_names_nothing(
    tmp_path, bystander
):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_started(ended.pid)
    ended.wait()
    assert process_started(ended.pid) is None
    _record(tmp_path, ended.pid, started)
    assert find_running_server(tmp_path) is None
    assert stop_running_server(tmp_path, timeout=5) is None
    _record(tmp_path, bystander.pid, None)
    assert stop_running_server(tmp_path, timeout=5) is None
    assert bystander.poll() is None
