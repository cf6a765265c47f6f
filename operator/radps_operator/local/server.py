"""A Prefect server on loopback, either the persistent one of `radps server` or one started
for a single `radps run` and stopped after it.

The server runs in its own session (process group) so a Ctrl-C in the terminal reaches
`radps run` first, which then cancels the flow run while the server can still record it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from radps_flows import contract
from radps_operator.local.home import prefect_base_env

DEFAULT_PORT = 4200
START_TIMEOUT_SECONDS = 120.0
RECORD_FILE = "server.json"


class ServerError(RuntimeError):
    pass


@dataclass
class LocalServer:
    api_url: str
    ui_url: str
    process: subprocess.Popen[bytes] | None
    """None when attached to a server this process did not start."""
    log_path: Path | None = None

    def flow_run_link(self, flow_run_id: object) -> str:
        return contract.flow_run_url(self.ui_url, flow_run_id)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout)
            self.process = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_server(
    home: Path,
    port: int | None = None,
    ui: bool = False,
    database: Path | None = None,
    log_path: Path | None = None,
) -> LocalServer:
    """Start `prefect server start` on 127.0.0.1 and wait until it answers."""
    port = port or free_port()
    log_path = log_path or home / "logs" / f"prefect-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **prefect_base_env(home, database)}
    env["PREFECT_UI_ENABLED"] = "true" if ui else "false"
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    env.pop("PREFECT_API_URL", None)
    command = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LocalServer(
        api_url=f"http://127.0.0.1:{port}/api",
        ui_url=f"http://127.0.0.1:{port}",
        process=process,
        log_path=log_path,
    )
    try:
        wait_healthy(server)
    except BaseException:
        server.stop()
        raise
    return server


def wait_healthy(server: LocalServer, timeout: float = START_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise ServerError(
                f"the Prefect server exited with code {server.process.returncode} while "
                f"starting; last lines of {server.log_path}:\n{_tail(server.log_path)}"
            )
        if is_healthy(server.api_url):
            return
        time.sleep(0.25)
    raise ServerError(
        f"the Prefect server did not answer at {server.api_url} within {timeout:.0f} s; "
        f"see {server.log_path}"
    )


def stop_process_group(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left after `timeout`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def write_record(home: Path, server: LocalServer) -> Path:
    """Tell later `radps run`s where the persistent server is."""
    path = home / RECORD_FILE
    pid = server.process.pid if server.process else os.getpid()
    path.write_text(json.dumps({"pid": pid, "api_url": server.api_url, "ui_url": server.ui_url}))
    return path


def find_running_server(home: Path) -> LocalServer | None:
    """The persistent `radps server`, when its record is fresh and it answers."""
    path = home / RECORD_FILE
    try:
        record = json.loads(path.read_text())
        os.kill(int(record["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not is_healthy(record["api_url"]):
        return None
    return LocalServer(api_url=record["api_url"], ui_url=record["ui_url"], process=None)


def remove_record(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (home / RECORD_FILE).unlink()


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
