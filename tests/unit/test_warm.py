"""The warm runner's protocol (radps_operator.local.warm) with real processes, a real Unix
socket and real forks, but a child that runs a small function instead of a pipeline: output on
the client's own stdout, its folder and environment, exit codes, refusals, Ctrl-C passed on,
a killed client's run interrupted, and the idle stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radps_operator.local import warm

ROOT = Path(__file__).resolve().parents[2]

SERVER = """
import os, signal, sys
from pathlib import Path
from radps_operator.local import warm
# Ctrl-C stops it, as in a terminal, also where this test runs in the background of a shell
# without job control (which starts its commands with SIGINT ignored, inherited here).
signal.signal(signal.SIGINT, signal.default_int_handler)
from tests.unit.test_warm import child
runner = warm.WarmRunner(Path(sys.argv[1]), warm.import_settings(os.environ), child)
print(runner.listen(), flush=True)
try:
    print(runner.serve(alive=lambda: True, idle_seconds=float(sys.argv[2])), flush=True)
finally:
    runner.close()
"""

CLIENT = """
import sys
from pathlib import Path
from radps_operator.local import warm
outcome = warm.run_warm(sys.argv[1], [{"source": f, "document": {}} for f in sys.argv[2:]])
if isinstance(outcome, warm.Refused):
    print("refused:", outcome.reason, flush=True)
    sys.exit(99)
sys.exit(outcome)
"""


def child(request: warm.Request) -> int:
    """What the forked child runs here: report where it is, then do what the 'file' says."""
    action = request.manifests[0]["source"]
    try:
        greeting = os.environ.get("GREETING")
        sources = [m["source"] for m in request.manifests]
        print(f"child {os.getpid()} in {os.getcwd()} with {sources} GREETING={greeting}")
        sys.stdout.flush()
        if action == "wait":
            time.sleep(60)
    except KeyboardInterrupt:
        Path("interrupted").write_text("yes")
        return 130
    return int(action) if action != "wait" else 0


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path):
    """A warm runner serving in its own process; it stops after `request.param` (default 60)
    seconds without a run."""
    idle = getattr(request, "param", 60)
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path / "home"), str(idle)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    (tmp_path / "home").mkdir()
    socket_file = process.stdout.readline().strip()
    assert socket_file.endswith("runner.sock")
    yield process, socket_file
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    process.wait(30)


def client(socket_file: str, *files: str, cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, socket_file, *files],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_fork_runs_on_the_clients_terminal_folder_and_environment(server, tmp_path: Path):
    process, socket_file = server
    work = tmp_path / "work"
    work.mkdir()
    run = client(socket_file, "3", cwd=work, GREETING="hello")
    output, _ = run.communicate(timeout=30)
    assert run.returncode == 3, output
    assert f"in {work} with ['3'] GREETING=hello" in output
    forked = int(output.split()[1])
    assert forked not in (run.pid, process.pid)


def test_other_import_settings_are_refused_by_name(server, tmp_path: Path):
    _, socket_file = server
    run = client(socket_file, "0", cwd=tmp_path, PREFECT_SOMETHING_ELSE="1")
    output, _ = run.communicate(timeout=30)
    assert run.returncode == 99, output
    assert "other settings (PREFECT_SOMETHING_ELSE)" in output


def test_ctrl_c_reaches_the_fork(server, tmp_path: Path):
    _, socket_file = server
    run = client(socket_file, "wait", cwd=tmp_path)
    assert "child" in run.stdout.readline()
    run.send_signal(signal.SIGINT)
    assert run.wait(30) == 130
    assert (tmp_path / "interrupted").read_text() == "yes"


@pytest.mark.parametrize("server", [5], indirect=True)
def test_a_killed_client_interrupts_its_fork_and_the_idle_server_stops(server, tmp_path: Path):
    process, socket_file = server
    run = client(socket_file, "wait", cwd=tmp_path)
    assert "child" in run.stdout.readline()
    run.kill()
    run.wait(30)
    deadline = time.monotonic() + 30
    while not (tmp_path / "interrupted").exists():
        assert time.monotonic() < deadline, "the fork was not interrupted"
        time.sleep(0.1)
    assert process.stdout.readline().strip() == "idle for 5 s"  # then it stops by itself
    assert process.wait(30) == 0
    assert not Path(socket_file).exists()


def test_import_settings_cover_prefect_dask_and_radps_code():
    settings = warm.import_settings(
        {"PREFECT_A": "1", "DASK_B": "2", "RADPS_HOME": "/x", "TERM": "y"}
    )
    assert {"PREFECT_A", "DASK_B", "python", "radps code"} <= set(settings)
    assert "RADPS_HOME" not in settings and "TERM" not in settings
    assert warm.differences(settings, {**settings, "DASK_B": "3"}) == ["DASK_B"]


def test_a_long_home_gets_a_short_socket_path(tmp_path: Path):
    long_home = tmp_path / ("h" * 120)
    path = warm.socket_path(long_home)
    assert len(str(path)) <= warm.UNIX_PATH_MAX and path.parent.is_dir()
    path.parent.rmdir()


def test_a_run_in_its_own_process_keeps_the_server_from_idling(tmp_path: Path):
    """`radps run` in its own process (-v, other settings) on a background server holds the
    users' lock, which the server checks before it stops for idleness."""
    from radps_operator.local import server

    assert not server.in_use(tmp_path)
    with server.using(tmp_path):
        assert server.in_use(tmp_path)
    assert not server.in_use(tmp_path)


def test_one_radps_server_per_home(tmp_path: Path):
    """A second `radps server` of a home, started before the first has written its record,
    does not get the life lock (and says so); it is free again once the first has gone."""
    from radps_operator.local import server

    first = server.hold_life_lock(tmp_path)
    assert first is not None
    assert server.hold_life_lock(tmp_path) is None
    os.close(first)
    again = server.hold_life_lock(tmp_path)
    assert again is not None
    os.close(again)
